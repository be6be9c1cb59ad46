package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxFileSize bounds the configuration, upstream and password files [Load]
// reads: they hold a few settings or one URL, and a mounted file of gigabytes
// must not become a heap of gigabytes.
const maxFileSize = 1 << 20

// ParseFile applies the settings of a configuration file's text to cfg: one
// setting per line, "name = value", where name is a flag name without dashes
// (e.g. "pool-size = 20") and value is what the flag takes, optionally in
// double quotes (Go syntax, for a value with leading or trailing spaces or an
// empty one). Blank lines and lines whose first non-blank character is '#' are
// ignored. Settings a file cannot hold (--config itself), unknown names (with
// the closest known one as a suggestion), a name given twice and invalid values
// are errors; ParseFile returns every problem joined, each starting with
// "line N:", and applies the valid settings even when others are invalid.
func ParseFile(data []byte, cfg *Config) error {
	_, err := parseFile(data, cfg)
	return err
}

// parseFile is ParseFile that also returns the names it set.
func parseFile(data []byte, cfg *Config) (set map[string]bool, err error) {
	set = make(map[string]bool)
	if !utf8.Valid(data) {
		return set, errors.New("not UTF-8 text")
	}
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	var errs []error
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || line[0] == '#' {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || name == "" {
			errs = append(errs, fmt.Errorf("line %d: want name = value, e.g. pool-size = 20", n))
			continue
		}
		if strings.HasPrefix(name, "-") {
			errs = append(errs, fmt.Errorf("line %d: %q: write names without dashes, e.g. %s = ...", n, name, strings.TrimLeft(name, "-")))
			continue
		}
		s := lookupSpec(name)
		if s == nil {
			if best := closest(name, fileNames()); best != "" {
				errs = append(errs, fmt.Errorf("line %d: %s: unknown setting; did you mean %s?", n, name, best))
			} else {
				errs = append(errs, fmt.Errorf("line %d: %s: unknown setting", n, name))
			}
			continue
		}
		if s.notInFile {
			errs = append(errs, fmt.Errorf("line %d: %s: cannot be set in a configuration file", n, name))
			continue
		}
		if set[name] {
			errs = append(errs, fmt.Errorf("line %d: %s: set twice", n, name))
			continue
		}
		set[name] = true
		if strings.HasPrefix(value, `"`) {
			uq, err := strconv.Unquote(value)
			if err != nil {
				errs = append(errs, fmt.Errorf("line %d: %s: bad quoted value", n, name))
				continue
			}
			value = uq
		}
		if err := s.value(cfg).Set(value); err != nil {
			if s.secret {
				errs = append(errs, fmt.Errorf("line %d: %s: invalid value: %w", n, name, err))
			} else {
				errs = append(errs, fmt.Errorf("line %d: %s: invalid value %q: %w", n, name, value, err))
			}
		}
	}
	return set, errors.Join(errs...)
}

// lookupSpec returns the table entry of the flag named name, or nil.
func lookupSpec(name string) *spec {
	for i := range specs {
		if specs[i].name == name {
			return &specs[i]
		}
	}
	return nil
}

// fileNames are the names a configuration file may set.
func fileNames() []string {
	var names []string
	for _, s := range specs {
		if !s.notInFile {
			names = append(names, s.name)
		}
	}
	return names
}

// CommandLine returns the table flags set on fs's command line (after
// [ParseArgs]), by name, each as its flag.Value prints it, which Set accepts
// back. It is the Args of [Sources].
func CommandLine(fs *flag.FlagSet) map[string]string {
	args := make(map[string]string)
	fs.Visit(func(f *flag.Flag) {
		if lookupSpec(f.Name) != nil {
			args[f.Name] = f.Value.String()
		}
	})
	return args
}

// Sources are the inputs [Load] builds a configuration from. The command line
// and the environment do not change while the proxy runs; the files they name
// do, and a reload is Load again with the same Sources.
type Sources struct {
	// Args are the flags given on the command line ([CommandLine]).
	Args map[string]string
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// ReadFile reads a file; nil means os.ReadFile.
	ReadFile func(string) ([]byte, error)
}

// Origin says where a setting's value came from.
type Origin string

// Origins of a setting.
const (
	OriginDefault     Origin = "default"
	OriginFile        Origin = "config file"
	OriginEnvironment Origin = "environment"
	OriginCommandLine Origin = "command line"
)

// Loaded is a configuration built by [Load].
type Loaded struct {
	Config
	// Origin says where each setting came from, by flag name; a setting not
	// in it has its default value.
	Origin map[string]Origin
	// Shadowed lists the settings of the configuration file that the
	// environment or the command line override, so the file's value is not
	// used: "pool-size (set by the command line)".
	Shadowed []string
}

// Load builds the whole configuration from its sources, in order of
// precedence, lowest first: the defaults, the configuration file named by
// --config (from the command line or PGSIDECAR_CONFIG), the PGSIDECAR_*
// environment variables, the command line. DATABASE_URL is the upstream only
// when no other source sets one and --upstream-file is not used. Then the
// upstream is read from --upstream-file and the password from
// --upstream-password-file, and the result is validated.
//
// The error joins every problem found, one per line, each naming the flag,
// variable or file line it concerns; the returned Loaded is only meaningful
// when it is nil.
func Load(src Sources) (Loaded, error) {
	getenv, readFile := src.Getenv, src.ReadFile
	if getenv == nil {
		getenv = os.Getenv
	}
	if readFile == nil {
		readFile = os.ReadFile
	}
	l := Loaded{Config: Default(), Origin: make(map[string]Origin)}
	var errs []error

	// --config comes from the command line or the environment only.
	path, ok := src.Args[flagConfig]
	if !ok {
		path = getenv(EnvName(flagConfig))
	}
	if path != "" {
		l.ConfigFile = path
		l.Origin[flagConfig] = OriginCommandLine
		if !ok {
			l.Origin[flagConfig] = OriginEnvironment
		}
		data, err := readSmall(readFile, path)
		if err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", flagConfig, err))
		} else {
			set, err := parseFile(data, &l.Config)
			if err != nil {
				for _, e := range unjoin(err) {
					errs = append(errs, fmt.Errorf("%s: %w", path, e))
				}
			}
			for name := range set {
				l.Origin[name] = OriginFile
			}
		}
	}

	for _, s := range specs {
		if s.name == flagConfig {
			continue
		}
		val, ok := src.Args[s.name]
		origin, where := OriginCommandLine, "--"+s.name
		if !ok {
			origin, where = OriginEnvironment, EnvName(s.name)
			if val = getenv(where); val == "" {
				continue
			}
		}
		if l.Origin[s.name] == OriginFile {
			l.Shadowed = append(l.Shadowed, fmt.Sprintf("%s (set by the %s, %s)", s.name, origin, where))
		}
		l.Origin[s.name] = origin
		if err := s.value(&l.Config).Set(val); err != nil {
			errs = append(errs, invalidValue(&s, where, val, err))
		}
	}

	if l.UpstreamFile != "" {
		if o, set := l.Origin[flagUpstream]; set {
			errs = append(errs, fmt.Errorf("--%s: cannot be used with --%s (set by the %s)", flagUpstreamFile, flagUpstream, o))
		} else if data, err := readSmall(readFile, l.UpstreamFile); err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", flagUpstreamFile, err))
		} else if l.Upstream = strings.TrimSpace(string(data)); l.Upstream == "" {
			errs = append(errs, fmt.Errorf("--%s: %s is empty", flagUpstreamFile, l.UpstreamFile))
		}
	} else if _, set := l.Origin[flagUpstream]; !set {
		l.Upstream = getenv(DatabaseURLEnv)
	}
	if l.UpstreamPasswordFile != "" {
		if data, err := readSmall(readFile, l.UpstreamPasswordFile); err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", flagUpstreamPasswordFile, err))
		} else {
			l.UpstreamPassword = strings.TrimRight(string(data), "\r\n")
			l.HasUpstreamPassword = true
		}
	}
	if l.AuthFile != "" {
		if data, err := readSmall(readFile, l.AuthFile); err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", flagAuthFile, err))
		} else {
			l.AuthFileData = string(data)
		}
	}
	for _, f := range []struct {
		flag, path string
		data       *string
	}{
		{flagTLSCert, l.TLSCert, &l.TLSCertData},
		{flagTLSKey, l.TLSKey, &l.TLSKeyData},
		{flagTLSClientCA, l.TLSClientCA, &l.TLSClientCAData},
	} {
		if f.path == "" {
			continue
		}
		if data, err := readSmall(readFile, f.path); err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", f.flag, err))
		} else {
			*f.data = string(data)
		}
	}
	if err := l.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	return l, errors.Join(errs...)
}

// readSmall reads a file of at most maxFileSize bytes.
func readSmall(readFile func(string) ([]byte, error), path string) ([]byte, error) {
	if fi, err := os.Stat(path); err == nil && fi.Size() > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %s", path, formatSize(maxFileSize))
	}
	data, err := readFile(path)
	if err != nil {
		return nil, err // *fs.PathError names the file
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %s", path, formatSize(maxFileSize))
	}
	return data, nil
}

// unjoin returns the errors joined in err, or err alone.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// Change is one setting that differs between two configurations.
type Change struct {
	// Name is the flag name, e.g. "pool-size".
	Name string
	// Old and New are the values as the flag prints them; a secret value
	// (the upstream) is shown as "(changed)".
	Old, New string
	// Restart is true when a running proxy cannot apply the change.
	Restart bool
}

// String is e.g. "pool-size: 20 -> 10" or "listen: ... (needs a restart)".
func (c Change) String() string {
	s := fmt.Sprintf("%s: %s -> %s", c.Name, c.Old, c.New)
	if c.Restart {
		s += " (needs a restart)"
	}
	return s
}

// Changes lists the settings whose values differ between old and new, in
// table order; a changed upstream password counts as a change of the
// upstream, and new content of the same --auth-file, --tls-cert, --tls-key or
// --tls-client-ca a change of it. Turning --max-prepared-statements on or off
// (to or from 0) needs a restart; changing its bound does not.
func Changes(old, new Config) []Change {
	var out []Change
	for _, s := range specs {
		o, n := s.value(&old).String(), s.value(&new).String()
		if s.name == flagUpstream && (old.HasUpstreamPassword != new.HasUpstreamPassword || old.UpstreamPassword != new.UpstreamPassword) {
			o += "\x00" // differ
		}
		fileChanged := fileData(s.name, old) != fileData(s.name, new)
		if fileChanged {
			o += "\x00" // same file, new content
		}
		if o == n {
			continue
		}
		c := Change{Name: s.name, Old: o, New: n, Restart: s.restart}
		if s.secret || s.name == flagUpstream {
			c.Old, c.New = "(old)", "(changed)"
		}
		if fileChanged && o == n+"\x00" {
			c.Old, c.New = n, n+" (content changed)"
		}
		if s.name == flagMaxPrepared && (old.MaxPreparedStatements == 0) != (new.MaxPreparedStatements == 0) {
			c.Restart = true
		}
		out = append(out, c)
	}
	return out
}

// fileData is the content of the file the flag name names, for the flags
// whose file is read with the configuration; "" for other flags.
func fileData(name string, c Config) string {
	switch name {
	case flagAuthFile:
		return c.AuthFileData
	case flagTLSCert:
		return c.TLSCertData
	case flagTLSKey:
		return c.TLSKeyData
	case flagTLSClientCA:
		return c.TLSClientCAData
	}
	return ""
}

// KeepRestartOnly returns new with every setting that needs a restart set
// back to its value in old, so that what is applied live is consistent with
// what the running proxy really does.
func KeepRestartOnly(old, new Config) Config {
	for _, c := range Changes(old, new) {
		if !c.Restart {
			continue
		}
		s := lookupSpec(c.Name)
		_ = s.value(&new).Set(s.value(&old).String())
	}
	return new
}
