package pgtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// queryTimeout bounds a connect or a query of the helpers below: a server or a
// proxy that does not answer fails the test instead of hanging it.
const queryTimeout = 10 * time.Second

// TryConnect opens a pgx connection to url within 10 seconds, with query exec
// mode mode (0 keeps the URL's default_query_exec_mode, else pgx's default) and
// params added to the startup parameters (application_name, options, ...). The connection
// is closed at cleanup; the error is the caller's to judge.
func TryConnect(t testing.TB, url string, mode pgx.QueryExecMode, params map[string]string) (*pgx.Conn, error) {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatalf("connection string %q: %v", url, err)
	}
	if mode != 0 {
		cfg.DefaultQueryExecMode = mode
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c, nil
}

// Connect is TryConnect failing the test when the connection cannot be made.
func Connect(t testing.TB, url string, mode pgx.QueryExecMode, params map[string]string) *pgx.Conn {
	t.Helper()
	c, err := TryConnect(t, url, mode, params)
	if err != nil {
		t.Fatalf("connect to %s (%v): %v", url, params, err)
	}
	return c
}

// SQLState returns the SQLSTATE of the PostgreSQL error in err's chain, or ""
// if it carries none.
func SQLState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// Int runs sql, a query of one integer, with args on c within 10 seconds.
func Int(c *pgx.Conn, sql string, args ...any) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	var n int
	err := c.QueryRow(ctx, sql, args...).Scan(&n)
	return n, err
}

// MustInt is Int failing the test on an error.
func MustInt(t testing.TB, c *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	n, err := Int(c, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// SelectInt runs SELECT $1::int with v on c within 10 seconds and checks that
// the answer is v: a client that still works.
func SelectInt(c *pgx.Conn, v int) error {
	got, err := Int(c, "SELECT $1::int", v)
	if err != nil {
		return err
	}
	if got != v {
		return fmt.Errorf("SELECT %d returned %d", v, got)
	}
	return nil
}
