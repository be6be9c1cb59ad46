// Prepared is the JDBC workload of TestPreparedJDBC (prepared_jvm_node_test.go): several
// clients, each on its own connection, run named server-side prepared statements
// (prepareThreshold=1: S_1, S_2, ... from the first execution) in hundreds of separate
// transactions, with rollbacks, an expected error, statements closed and prepared again
// and a batch. It checks every value it reads back and prints one line
//
//	SUMMARY {"driver":"jdbc","errors":N,"clients":[{...}, ...]}
//
// that the Go test compares with the same schedule (prepSchedule there), and an
// "ERROR ..." line on stderr for each of the first unexpected errors. Exit status: 0 when
// no unexpected error happened, 1 otherwise, 2 on bad arguments.
//
// Run with Java 11+ as a single source file:
//
//	java -cp /usr/share/java/postgresql.jar Prepared.java url=jdbc:postgresql://h:p/db?prepareThreshold=1 clients=4 txns=300 [app=NAME] [direct=true]
//
// direct=true (the connection goes straight to PostgreSQL) also checks, through
// pg_prepared_statements, that the driver really uses named statements, that closing
// a statement without the statement cache makes the driver Close it on the server, and
// that the cache re-uses it otherwise.
//
// The database must have the tables
//
//	items(client int, seq int, val bigint, note text, PRIMARY KEY (client, seq))
//	batch(client int, seq int, PRIMARY KEY (client, seq))

import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.sql.Array;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeSet;
import java.util.UUID;

public class Prepared {
    static final String ECHO = "SELECT ?::int4 AS a, ?::text AS b, ?::int8 * 2 AS c";
    static final String INSERT = "INSERT INTO items (client, seq, val, note) VALUES (?, ?, ?, ?)";
    static final String TYPES = "SELECT count(*)::int4 AS n, coalesce(sum(val), 0)::int8 AS s, ?::numeric(12,3) AS num,"
            + " ?::float8 AS f, ?::bool AS b, ?::bytea AS by, ?::timestamptz AS ts, ?::uuid AS u,"
            + " ARRAY[?::int4, ?::int4] AS arr FROM items WHERE client = ?";
    static final String BATCH = "INSERT INTO batch (client, seq) VALUES (?, ?)";

    /** Unexpected errors printed per client; a client gives up after maxErrors. */
    static final int printErrors = 5, maxErrors = 20;

    static String url, app;
    static int clients, txns;
    static boolean direct;

    public static void main(String[] args) throws Exception {
        Map<String, String> kv = new HashMap<>();
        for (String a : args) {
            int eq = a.indexOf('=');
            if (eq <= 0) {
                usage("bad argument " + a);
            }
            kv.put(a.substring(0, eq), a.substring(eq + 1));
        }
        url = kv.get("url");
        app = kv.getOrDefault("app", "");
        direct = Boolean.parseBoolean(kv.getOrDefault("direct", "false"));
        try {
            clients = Integer.parseInt(kv.getOrDefault("clients", "4"));
            txns = Integer.parseInt(kv.getOrDefault("txns", "300"));
        } catch (NumberFormatException e) {
            usage(e.toString());
        }
        if (url == null || clients < 1 || txns < 1) {
            usage("need url=, clients>0, txns>0");
        }

        List<Client> cs = new ArrayList<>();
        List<Thread> ts = new ArrayList<>();
        for (int c = 0; c < clients; c++) {
            Client cl = new Client(c);
            cs.add(cl);
            Thread t = new Thread(cl, "client-" + c);
            ts.add(t);
            t.start();
        }
        long errors = 0;
        StringBuilder sb = new StringBuilder();
        sb.append("{\"driver\":\"jdbc\",\"clients\":[");
        for (int c = 0; c < clients; c++) {
            ts.get(c).join();
            Client cl = cs.get(c);
            errors += cl.errors;
            if (c > 0) {
                sb.append(',');
            }
            sb.append(cl.json());
        }
        sb.append("],\"errors\":").append(errors).append('}');
        System.out.println("SUMMARY " + sb);
        System.out.flush();
        System.exit(errors == 0 ? 0 : 1);
    }

    static void usage(String why) {
        System.err.println("Prepared.java: " + why);
        System.err.println("usage: Prepared.java url=JDBC_URL clients=N txns=N [app=NAME] [direct=true]");
        System.exit(2);
    }

    /** Thrown when a value read back is not the one expected. */
    static class Mismatch extends Exception {
        Mismatch(String msg) {
            super(msg);
        }
    }

    static class Client implements Runnable {
        final int c;
        /** Even clients run without the driver's statement cache: close means Close. */
        final boolean noCache;
        Connection conn;
        PreparedStatement echo, insert, types, batch;

        // What the summary reports.
        long echoOk, echoSum, typesOk, rows, batchRows, expectedErrors, rollbacks, reprepares, errors, done;
        long statementChecks;
        final TreeSet<String> names = new TreeSet<>(); // direct only: server-side statement names seen
        String statementsSeen = ""; // direct only: last pg_prepared_statements reading

        // The client's committed rows of items: count and sum(val).
        long committedN, committedS;

        Client(int c) {
            this.c = c;
            this.noCache = c % 2 == 0;
        }

        public void run() {
            try {
                Properties p = new Properties();
                p.setProperty("user", "postgres");
                if (!app.isEmpty()) {
                    p.setProperty("ApplicationName", app);
                }
                if (noCache) {
                    p.setProperty("preparedStatementCacheQueries", "0");
                }
                conn = DriverManager.getConnection(url, p);
                prepareAll();
            } catch (Exception e) {
                fail(-1, -1, e);
                errors = maxErrors;
                return;
            }
            for (int i = 0; i < txns && errors < maxErrors; i++) {
                int r = (i + 7 * c) % 10;
                try {
                    txn(i, r);
                    done++;
                } catch (Exception e) {
                    fail(i, r, e);
                    try {
                        if (!conn.getAutoCommit()) {
                            conn.rollback();
                            conn.setAutoCommit(true);
                        }
                    } catch (SQLException e2) {
                        fail(i, r, e2);
                    }
                }
                if (i % 50 == 49 && errors < maxErrors) {
                    try {
                        if (direct) {
                            checkServerStatements(i);
                        }
                        closeAll();
                        prepareAll();
                        reprepares++;
                    } catch (Exception e) {
                        fail(i, r, e);
                    }
                }
            }
            try {
                conn.close();
            } catch (SQLException e) {
                fail(txns, -1, e);
            }
        }

        void fail(int i, int r, Exception e) {
            errors++;
            if (errors <= printErrors) {
                String state = e instanceof SQLException ? ((SQLException) e).getSQLState() : "-";
                System.err.printf("ERROR client=%d txn=%d r=%d sqlstate=%s: %s%n", c, i, r, state, e);
                if (e instanceof BatchUpdateException && ((BatchUpdateException) e).getNextException() != null) {
                    System.err.printf("ERROR client=%d txn=%d   next: %s%n", c, i, ((BatchUpdateException) e).getNextException());
                }
            }
        }

        void prepareAll() throws SQLException {
            echo = conn.prepareStatement(ECHO);
            insert = conn.prepareStatement(INSERT);
            types = conn.prepareStatement(TYPES);
            batch = conn.prepareStatement(BATCH);
        }

        void closeAll() throws SQLException {
            echo.close();
            insert.close();
            types.close();
            batch.close();
        }

        long val(int seq) {
            return seq * 7L + c;
        }

        /** One transaction of the schedule; r selects its kind (see prepSchedule in Go). */
        void txn(int i, int r) throws Exception {
            int seq = i * 10;
            if (r <= 3) { // autocommit: two single-statement transactions
                echo(i);
                insert(seq);
                committedN++;
                committedS += val(seq);
            } else if (r <= 6) { // explicit, committed
                conn.setAutoCommit(false);
                echo(i);
                insert(seq);
                insert(seq + 1);
                types(i, committedN + 2, committedS + val(seq) + val(seq + 1));
                conn.commit();
                conn.setAutoCommit(true);
                committedN += 2;
                committedS += val(seq) + val(seq + 1);
            } else if (r == 7) { // explicit, rolled back
                conn.setAutoCommit(false);
                insert(seq);
                types(i, committedN + 1, committedS + val(seq));
                conn.rollback();
                conn.setAutoCommit(true);
                rollbacks++;
                types(i, committedN, committedS);
            } else if (r == 8) { // batch
                conn.setAutoCommit(false);
                for (int k = 0; k < 5; k++) {
                    batch.setInt(1, c);
                    batch.setInt(2, seq + k);
                    batch.addBatch();
                }
                int[] n = batch.executeBatch();
                if (n.length != 5) {
                    throw new Mismatch("executeBatch returned " + Arrays.toString(n));
                }
                for (int x : n) {
                    if (x != 1) {
                        throw new Mismatch("executeBatch returned " + Arrays.toString(n));
                    }
                }
                conn.commit();
                conn.setAutoCommit(true);
                batchRows += 5;
            } else { // r == 9: a unique violation inside a transaction, then rollback
                conn.setAutoCommit(false);
                insert(seq);
                try {
                    insert(seq);
                    throw new Mismatch("duplicate insert of seq " + seq + " succeeded");
                } catch (SQLException e) {
                    if (!"23505".equals(e.getSQLState())) {
                        throw e;
                    }
                    expectedErrors++;
                }
                conn.rollback();
                conn.setAutoCommit(true);
                rollbacks++;
            }
        }

        void echo(int i) throws Exception {
            String b = "c" + c + "-e" + i;
            long v = (c + 1) * 100000L + i;
            echo.setInt(1, i);
            echo.setString(2, b);
            echo.setLong(3, v);
            try (ResultSet rs = echo.executeQuery()) {
                if (!rs.next()) {
                    throw new Mismatch("echo " + i + ": no row");
                }
                int ga = rs.getInt("a");
                String gb = rs.getString("b");
                long gc = rs.getLong("c");
                if (ga != i || !b.equals(gb) || gc != 2 * v || rs.next()) {
                    throw new Mismatch(String.format("echo %d: got (%d, %s, %d), want (%d, %s, %d)", i, ga, gb, gc, i, b, 2 * v));
                }
                echoOk++;
                echoSum += ga + gc;
            }
        }

        void insert(int seq) throws SQLException, Mismatch {
            insert.setInt(1, c);
            insert.setInt(2, seq);
            insert.setLong(3, val(seq));
            insert.setString(4, "c" + c + "-" + seq);
            int n = insert.executeUpdate();
            if (n != 1) {
                throw new Mismatch("insert " + seq + ": " + n + " rows");
            }
            rows++;
        }

        void types(int i, long wantN, long wantS) throws Exception {
            BigDecimal num = new BigDecimal(i + ".125").add(BigDecimal.valueOf(c * 1000L));
            double f = i + 0.5;
            boolean b = i % 2 == 0;
            byte[] by = ("c" + c + "\u0000\u00ff" + i).getBytes(StandardCharsets.ISO_8859_1);
            OffsetDateTime ts = OffsetDateTime.ofInstant(Instant.ofEpochSecond(1700000000L + i * 3600L + c, 123456000), ZoneOffset.UTC);
            UUID u = new UUID(0x5eed000000000000L + c, i);
            types.setBigDecimal(1, num);
            types.setDouble(2, f);
            types.setBoolean(3, b);
            types.setBytes(4, by);
            types.setObject(5, ts);
            types.setObject(6, u);
            types.setInt(7, c);
            types.setInt(8, i);
            types.setInt(9, c);
            try (ResultSet rs = types.executeQuery()) {
                if (!rs.next()) {
                    throw new Mismatch("types " + i + ": no row");
                }
                long n = rs.getInt("n"), s = rs.getLong("s");
                BigDecimal gnum = rs.getBigDecimal("num");
                double gf = rs.getDouble("f");
                boolean gb = rs.getBoolean("b");
                byte[] gby = rs.getBytes("by");
                OffsetDateTime gts = rs.getObject("ts", OffsetDateTime.class);
                UUID gu = rs.getObject("u", UUID.class);
                Array ga = rs.getArray("arr");
                Integer[] arr = (Integer[]) ga.getArray();
                List<String> bad = new ArrayList<>();
                if (n != wantN || s != wantS) {
                    bad.add(String.format("count/sum (%d, %d), want (%d, %d)", n, s, wantN, wantS));
                }
                if (gnum == null || gnum.compareTo(num) != 0 || gnum.scale() != 3) {
                    bad.add("numeric " + gnum + ", want " + num.setScale(3));
                }
                if (gf != f) {
                    bad.add("float8 " + gf + ", want " + f);
                }
                if (gb != b) {
                    bad.add("bool " + gb);
                }
                if (!Arrays.equals(gby, by)) {
                    bad.add("bytea " + Arrays.toString(gby) + ", want " + Arrays.toString(by));
                }
                if (gts == null || !gts.toInstant().equals(ts.toInstant())) {
                    bad.add("timestamptz " + gts + ", want " + ts);
                }
                if (!u.equals(gu)) {
                    bad.add("uuid " + gu + ", want " + u);
                }
                if (arr.length != 2 || arr[0] != c || arr[1] != i) {
                    bad.add("int4[] " + Arrays.toString(arr));
                }
                if (rs.next()) {
                    bad.add("more than one row");
                }
                if (!bad.isEmpty()) {
                    throw new Mismatch("types " + i + ": " + String.join("; ", bad));
                }
                typesOk++;
            }
        }

        /**
         * Direct connections only: among the connection's protocol-level prepared statements
         * (pgjdbc also names BEGIN, COMMIT, ROLLBACK and plain Statements' queries), each of
         * the workload's four, executed since the last re-prepare, appears exactly once.
         */
        void checkServerStatements(int i) throws SQLException, Mismatch {
            Map<String, List<String>> byText = new HashMap<>();
            for (String q : new String[] {ECHO, INSERT, TYPES, BATCH}) {
                // The driver sends the SQL with ? rewritten as $n.
                StringBuilder sb = new StringBuilder();
                int n = 0;
                for (char ch : q.toCharArray()) {
                    if (ch == '?') {
                        sb.append('$').append(++n);
                    } else {
                        sb.append(ch);
                    }
                }
                byText.put(sb.toString(), new ArrayList<>());
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT name, statement FROM pg_prepared_statements WHERE NOT from_sql ORDER BY name")) {
                while (rs.next()) {
                    String name = rs.getString(1);
                    if (!name.startsWith("S_")) {
                        throw new Mismatch("after txn " + i + ": server statement name " + name + ", want S_n");
                    }
                    List<String> names = byText.get(rs.getString(2));
                    if (names != null) {
                        names.add(name);
                    }
                }
            }
            statementChecks++;
            List<String> seen = new ArrayList<>();
            for (Map.Entry<String, List<String>> e : byText.entrySet()) {
                if (e.getValue().size() != 1) {
                    throw new Mismatch("after txn " + i + ": server statements " + e.getValue() + " for " + e.getKey() + ", want one");
                }
                seen.add(e.getValue().get(0));
            }
            Collections.sort(seen);
            statementsSeen = String.join(",", seen);
            names.addAll(seen);
        }

        String json() {
            return String.format(
                    "{\"client\":%d,\"no_cache\":%b,\"done\":%d,\"echo_ok\":%d,\"echo_sum\":%d,\"types_ok\":%d,\"rows\":%d,"
                            + "\"batch_rows\":%d,\"expected_errors\":%d,\"rollbacks\":%d,\"reprepares\":%d,\"errors\":%d,"
                            + "\"statement_checks\":%d,\"statement_names\":%d,\"last_statements\":\"%s\"}",
                    c, noCache, done, echoOk, echoSum, typesOk, rows, batchRows, expectedErrors, rollbacks, reprepares, errors,
                    statementChecks, names.size(), statementsSeen);
        }
    }
}
