package proxy_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/auth"
)

// JDBC and node-postgres log in with SCRAM and md5; a wrong password gets
// 28P01 with PostgreSQL's message.
func TestClientAuthJDBCNode(t *testing.T) {
	java := needJava(t)
	node, nodeDir := needNode(t)
	db := newDatabase(t)
	for _, m := range []auth.Method{auth.SCRAMSHA256, auth.MD5} {
		t.Run(m.String(), func(t *testing.T) {
			tp := authProxy(t, db, m, map[string]auth.Secret{"postgres": auth.PlainSecret("postgres", "jvm-node-pw")})
			host, port, _ := strings.Cut(tp.addr, ":")
			args := []string{host, port, db, "postgres", "jvm-node-pw"}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			src, err := filepath.Abs(filepath.Join("testdata", "AuthCheck.java"))
			if err != nil {
				t.Fatal(err)
			}
			for _, cmd := range []*exec.Cmd{
				exec.CommandContext(ctx, java, append([]string{"-cp", jdbcJar, src}, args...)...),
				exec.CommandContext(ctx, node, append([]string{filepath.Join(nodeDir, "auth.js")}, args...)...),
			} {
				cmd.WaitDelay = 5 * time.Second
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("%s: %v\n%s", cmd.Path, err, out)
				}
				got := map[string]string{}
				for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
					if f := strings.SplitN(l, " ", 3); len(f) == 3 {
						got[f[0]+" "+f[1]] = f[2]
					}
				}
				driver := "jdbc"
				if cmd.Path == node {
					driver = "node"
				}
				if r := got[driver+" good"]; r != "ok" {
					t.Errorf("%s, right password: %q\n%s", driver, r, out)
				}
				if r := got[driver+" bad"]; !strings.HasPrefix(r, "error 28P01 ") ||
					!strings.Contains(r, `password authentication failed for user "postgres"`) {
					t.Errorf("%s, wrong password: %q, want 28P01 password authentication failed\n%s", driver, r, out)
				}
			}
		})
	}
}
