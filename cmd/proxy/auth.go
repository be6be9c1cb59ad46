package main

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/auth"
	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/pool"
	"github.com/pgsidecar/pgsidecar/internal/proxy"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// errNoCredentials is clientAuth's error when a password method has nothing
// to check passwords against.
var errNoCredentials = errors.New("no password to check clients against: give the upstream URL a password " +
	"(or --upstream-password-file) or --auth-file; --client-auth trust on a loopback --listen needs none")

// clientAuth builds how clients authenticate and which routes they may use
// from cfg and its parsed upstream: the upstream's user with its password,
// then the roles of --auth-file, then those aq finds (--auth-query; aq nil
// without it). What clients prove goes to logins. mockKey is the process's
// key for the fake exchanges of unknown roles.
func clientAuth(cfg config.Config, up *pgconn.Config, mockKey []byte, aq *authQuery, logins *serverLogins) (*proxy.ClientAuth, proxy.RoutePolicy, error) {
	method, err := auth.ParseMethod(cfg.ClientAuth)
	if err != nil {
		return nil, nil, fmt.Errorf("--client-auth: %w", err)
	}
	secrets := map[string]auth.Secret{}
	if cfg.AuthFile != "" {
		if secrets, err = auth.ParseUserlist([]byte(cfg.AuthFileData)); err != nil {
			return nil, nil, fmt.Errorf("--auth-file %s: %w", cfg.AuthFile, err)
		}
	}
	rp := &routePolicy{def: defaultRoute(up), fileUsers: map[string]bool{}}
	if aq != nil && cfg.AuthQuery != "" {
		rp.queryUser = aq.known
	} else {
		aq = nil
	}
	for u := range secrets {
		rp.fileUsers[u] = true
	}
	if up.Password != "" {
		secrets[up.User] = auth.PlainSecret(up.User, up.Password)
	}
	for _, r := range strings.Split(cfg.AllowRoutes, ",") {
		if r = strings.TrimSpace(r); r != "" {
			db, user, _ := strings.Cut(r, "/") // validated by config
			rp.allow = append(rp.allow, pool.Key{Database: db, User: user})
		}
	}
	if method != auth.Trust && len(secrets) == 0 && aq == nil {
		return nil, nil, fmt.Errorf("--client-auth %s: %w", method, errNoCredentials)
	}
	ca := &proxy.ClientAuth{Method: method, MockKey: mockKey, Lookup: func(user string) (auth.Secret, bool, error) {
		if s, ok := secrets[user]; ok {
			return s, true, nil
		}
		if aq == nil {
			return auth.Secret{}, false, nil
		}
		return aq.lookup(user)
	}}
	if logins != nil {
		ca.Proved = logins.put
	}
	return ca, rp, nil
}

// routePolicy is the proxy.RoutePolicy of the configuration: the upstream's
// own route, the --auth-file roles on the upstream's database, and the
// --allow-routes patterns.
type routePolicy struct {
	def       pool.Key
	fileUsers map[string]bool
	queryUser func(string) bool // a role --auth-query found; nil without it
	allow     []pool.Key        // patterns: path.Match syntax, "*" any name
}

// Allow implements proxy.RoutePolicy.
func (p *routePolicy) Allow(database, user string) (code, msg string) {
	ownUser := user == p.def.User || p.fileUsers[user] || p.queryUser != nil && p.queryUser(user)
	if ownUser && database == p.def.Database {
		return "", ""
	}
	knownUser := ownUser
	for _, k := range p.allow {
		um := match(k.User, user)
		if um && match(k.Database, database) {
			return "", ""
		}
		knownUser = knownUser || um
	}
	if knownUser {
		return wire.CodeInvalidCatalogName, fmt.Sprintf("pgsidecar: database %q is not served to user %q here (see --allow-routes)", database, user)
	}
	return wire.CodeInvalidAuthorization, fmt.Sprintf("pgsidecar: user %q may not connect here (see --allow-routes)", user)
}

// match reports whether name matches pattern ("*" for any name; other
// path.Match wildcards work too).
func match(pattern, name string) bool {
	if pattern == "*" {
		return true
	}
	ok, err := path.Match(pattern, name)
	return err == nil && ok
}
