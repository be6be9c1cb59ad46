package config

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// CheckEnviron reports the environment variables that look like settings but
// set none: every variable in environ (formatted "NAME=value", as
// [os.Environ] returns them) whose name starts with [EnvPrefix] and is neither
// the variable of a flag registered by [Bind] nor listed in allowed. It
// returns nil or an error joining one error per such variable, sorted by
// name, e.g. "PGSIDECAR_POOLSIZE: unknown variable; did you mean
// PGSIDECAR_POOL_SIZE (--pool-size)?"; the suggestion is made only when a
// flag's name is close enough. Values are never included.
//
// The variables Kubernetes defines in every pod of a namespace for a Service
// whose name starts with "pgsidecar" (PGSIDECAR_SERVICE_HOST,
// PGSIDECAR_METRICS_PORT_9127_TCP, ...) are not reported: they are set by the
// cluster, not by whoever configures the proxy.
func CheckEnviron(environ []string, allowed ...string) error {
	known := make(map[string]bool, len(specs)+len(allowed))
	for _, s := range specs {
		known[EnvName(s.name)] = true
	}
	for _, a := range allowed {
		known[a] = true
	}
	var unknown []string
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) || known[name] || isServiceLink(name, value) {
			continue
		}
		unknown = append(unknown, name)
	}
	slices.Sort(unknown)
	unknown = slices.Compact(unknown)

	var errs []error
	for _, name := range unknown {
		if flag := closest(strings.TrimPrefix(name, EnvPrefix), FlagNames()); flag != "" {
			errs = append(errs, fmt.Errorf("%s: unknown variable; did you mean %s (--%s)?", name, EnvName(flag), flag))
		} else {
			errs = append(errs, fmt.Errorf("%s: unknown variable", name))
		}
	}
	return errors.Join(errs...)
}

var (
	// serviceLinkName matches the names of Kubernetes' service environment
	// variables for a Service named pgsidecar or pgsidecar-*.
	serviceLinkName = regexp.MustCompile(`^PGSIDECAR(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$`)
	// serviceLinkPort matches <SERVICE>_PORT, which is only taken for a
	// service variable when its value is a URL such as tcp://10.0.0.1:9127:
	// PGSIDECAR_PORT=6432 is someone's attempt at --listen.
	serviceLinkPort = regexp.MustCompile(`^PGSIDECAR(_[A-Z0-9_]+)?_PORT$`)
)

// isServiceLink reports whether name=value is a variable Kubernetes defines
// for a Service (enableServiceLinks) rather than a setting of the proxy.
func isServiceLink(name, value string) bool {
	if serviceLinkName.MatchString(name) {
		return true
	}
	if serviceLinkPort.MatchString(name) {
		for _, proto := range []string{"tcp://", "udp://", "sctp://"} {
			if strings.HasPrefix(value, proto) {
				return true
			}
		}
	}
	return false
}
