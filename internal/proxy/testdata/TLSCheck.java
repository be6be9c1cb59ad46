// TLSCheck connects through the proxy with JDBC (pgjdbc) over client TLS and
// prints one line per case: "jdbc CASE ok TLSv1.3" (the query answered and
// the driver's socket is an SSLSocket, with its protocol), "jdbc CASE
// plaintext", or "jdbc CASE error <SQLSTATE> <message>". Run by
// tls_drivers_test.go as a single source file:
//
//	java -cp /usr/share/java/postgresql.jar TLSCheck.java HOST PORT CERT_PORT DB DIR OTHER_CA
//
// PORT is a proxy that requires TLS, CERT_PORT one that also requires a
// client certificate signed by the test CA. DIR holds ca.crt, client.crt and
// client.pk8 (the client key as PKCS#8 DER: pgjdbc reads no PEM key);
// OTHER_CA is a CA file that did not sign the proxy's certificate.
import java.lang.reflect.Field;
import java.net.Socket;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import javax.net.ssl.SSLSocket;

import org.postgresql.core.BaseConnection;
import org.postgresql.core.PGStream;
import org.postgresql.core.QueryExecutorBase;

public class TLSCheck {
    static String host, db, dir, otherCA;

    public static void main(String[] a) {
        host = a[0];
        db = a[3];
        dir = a[4];
        otherCA = a[5];
        System.out.println("# pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_VERSION + ", java " + System.getProperty("java.version"));
        String ca = dir + "/ca.crt";
        run("require", a[1], props("require", null, false));
        run("verify-full", a[1], props("verify-full", ca, false));
        run("badca", a[1], props("verify-full", otherCA, false));
        run("disable", a[1], props("disable", null, false));
        run("cert", a[2], props("verify-full", ca, true));
        run("nocert", a[2], props("verify-full", ca, false));
    }

    // props are the connection properties of sslmode, with sslrootcert when
    // rootCert is set and the client certificate when cert is set.
    static Properties props(String sslmode, String rootCert, boolean cert) {
        Properties p = new Properties();
        p.setProperty("user", "postgres");
        p.setProperty("sslmode", sslmode);
        p.setProperty("ssl", sslmode.equals("disable") ? "false" : "true");
        p.setProperty("gssEncMode", "disable");
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "30");
        if (rootCert != null) {
            p.setProperty("sslrootcert", rootCert);
        }
        if (cert) {
            p.setProperty("sslcert", dir + "/client.crt");
            p.setProperty("sslkey", dir + "/client.pk8");
        }
        return p;
    }

    // run connects to port with p, runs a query and prints the case's line.
    static void run(String name, String port, Properties p) {
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + db;
        String res;
        try (Connection c = DriverManager.getConnection(url, p);
             Statement s = c.createStatement();
             ResultSet r = s.executeQuery("select 6*7")) {
            r.next();
            int v = r.getInt(1);
            String proto = tlsProtocol(c);
            res = v != 42 ? "bad-answer " + v : proto == null ? "plaintext" : "ok " + proto;
        } catch (SQLException e) {
            res = "error " + e.getSQLState() + " " + messages(e);
        } catch (Exception e) {
            res = "error none " + messages(e);
        }
        System.out.println("jdbc " + name + " " + res);
    }

    // tlsProtocol is the TLS version of the connection's socket, or null when
    // it is not a TLS socket. pgjdbc exposes no such property: this reads its
    // PGStream (QueryExecutorBase.pgStream) by reflection.
    static String tlsProtocol(Connection c) throws Exception {
        Object qe = c.unwrap(BaseConnection.class).getQueryExecutor();
        Field f = QueryExecutorBase.class.getDeclaredField("pgStream");
        f.setAccessible(true);
        Socket s = ((PGStream) f.get(qe)).getSocket();
        return s instanceof SSLSocket ? ((SSLSocket) s).getSession().getProtocol() : null;
    }

    // messages is e's message and its causes' on one line: pgjdbc wraps the
    // TLS error that tells what failed ("The connection attempt failed.").
    static String messages(Throwable e) {
        StringBuilder b = new StringBuilder(String.valueOf(e.getMessage()));
        int n = 0;
        for (Throwable c = e.getCause(); c != null && c != e && n < 5; c = c.getCause(), n++) {
            b.append(" <- ").append(c);
        }
        return b.toString().replaceAll("\\s+", " ").trim();
    }
}
