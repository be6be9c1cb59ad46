package proxy_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/auth"
)

// authPyScript logs in with each Python driver users run, with the right and
// a wrong password, and prints one line per attempt: driver, password kind and
// "ok" or the SQLSTATE and message of the error.
const authPyScript = `
import asyncio, sys
host, port, db, good = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def line(driver, kind, res):
    print(driver, kind, res, flush=True)
import psycopg2, sqlalchemy
for kind, pw in (("good", good), ("bad", "wrong")):
    try:
        eng = sqlalchemy.create_engine("postgresql+psycopg2://postgres:%s@%s:%d/%s?sslmode=disable" % (pw, host, port, db))
        with eng.connect() as c:
            line("sqlalchemy-psycopg2", kind, "ok" if c.execute(sqlalchemy.text("select 6*7")).scalar() == 42 else "bad-answer")
        eng.dispose()
    except sqlalchemy.exc.OperationalError as e:
        line("sqlalchemy-psycopg2", kind, "error " + str(e.orig).strip().splitlines()[-1])
import psycopg
for kind, pw in (("good", good), ("bad", "wrong")):
    try:
        with psycopg.connect(host=host, port=port, dbname=db, user="postgres", password=pw, sslmode="disable") as c:
            line("psycopg3", kind, "ok" if c.execute("select 6*7").fetchone()[0] == 42 else "bad-answer")
    except psycopg.OperationalError as e:
        line("psycopg3", kind, "error " + (e.sqlstate or "none") + " " + str(e).strip().splitlines()[-1])
import asyncpg
async def apg(kind, pw):
    try:
        c = await asyncpg.connect(host=host, port=port, database=db, user="postgres", password=pw, ssl=False)
        v = await c.fetchval("select 6*7")
        await c.close()
        line("asyncpg", kind, "ok" if v == 42 else "bad-answer")
    except asyncpg.PostgresError as e:
        line("asyncpg", kind, "error " + e.sqlstate + " " + str(e))
for kind, pw in (("good", good), ("bad", "wrong")):
    asyncio.run(apg(kind, pw))
`

// Python drivers log in with SCRAM and md5; a wrong password gets 28P01.
func TestClientAuthPython(t *testing.T) {
	needPythonImport(t, "python auth tests", "sqlalchemy, psycopg2, psycopg, asyncpg",
		"python3-sqlalchemy, python3-psycopg2, python3-psycopg, python3-asyncpg")
	db := newDatabase(t)
	for _, m := range []auth.Method{auth.SCRAMSHA256, auth.MD5} {
		t.Run(m.String(), func(t *testing.T) {
			tp := authProxy(t, db, m, map[string]auth.Secret{"postgres": auth.PlainSecret("postgres", "py-secret")})
			host, port, _ := strings.Cut(tp.addr, ":")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, pythonBin, "-c", authPyScript, host, port, db, "py-secret")
			cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PGPASSWORD=", "PGSSLMODE=disable")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("python: %v\n%s", err, out)
			}
			got := map[string]string{}
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.SplitN(l, " ", 3)
				if len(f) == 3 {
					got[f[0]+" "+f[1]] = f[2]
				}
			}
			for _, d := range []string{"sqlalchemy-psycopg2", "psycopg3", "asyncpg"} {
				if r := got[d+" good"]; r != "ok" {
					t.Errorf("%s, right password: %q", d, r)
				}
				r := got[d+" bad"]
				if !strings.Contains(r, `password authentication failed for user "postgres"`) ||
					d == "asyncpg" && !strings.HasPrefix(r, "error 28P01 ") { // libpq's connection errors carry no SQLSTATE
					t.Errorf("%s, wrong password: %q, want 28P01 password authentication failed", d, r)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}
