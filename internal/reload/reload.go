package reload

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// Component is one part of the proxy that takes part in reloads.
//
// Prepare checks that the component can run with next (for instance that a
// new upstream URL parses, or that a certificate file loads) and returns the
// function that switches it over. Prepare must not change anything: a reload
// applies nothing unless every component's Prepare succeeded. apply runs with
// the Reloader's lock held, so it must not block on clients (no client I/O);
// it may be nil when the component has nothing to do.
type Component struct {
	Name    string
	Prepare func(prev, next config.Loaded) (apply func(), err error)
}

// Result is the outcome of one reload.
type Result struct {
	// Trigger says what asked for the reload: "SIGHUP", "RELOAD", "file".
	Trigger string
	// Err joins every problem of a rejected reload; nil when it was applied.
	Err error
	// Applied are the changes now in force.
	Applied []config.Change
	// NeedRestart are changes that the running proxy ignores.
	NeedRestart []config.Change
	// Shadowed are configuration-file settings that the environment or the
	// command line override.
	Shadowed []string
}

// String is the one-line answer to the console's RELOAD.
func (r Result) String() string {
	if r.Err != nil {
		return "configuration rejected, the previous one stays in force: " + strings.ReplaceAll(r.Err.Error(), "\n", "; ")
	}
	if len(r.Applied) == 0 && len(r.NeedRestart) == 0 {
		return "configuration reloaded: no changes"
	}
	var b strings.Builder
	b.WriteString("configuration reloaded")
	if len(r.Applied) > 0 {
		b.WriteString("; applied: ")
		b.WriteString(joinChanges(r.Applied))
	}
	if len(r.NeedRestart) > 0 {
		b.WriteString("; needs a restart, not applied: ")
		b.WriteString(joinChanges(r.NeedRestart))
	}
	return b.String()
}

func joinChanges(cs []config.Change) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = fmt.Sprintf("%s %s -> %s", c.Name, c.Old, c.New)
	}
	return strings.Join(s, ", ")
}

// Stats are the figures of the reloads so far, for metrics.
type Stats struct {
	Successes, Failures uint64
	// LastOK is false when the last reload was rejected.
	LastOK bool
	// LastSuccess is the time of the last applied reload, or of the start.
	LastSuccess time.Time
}

// Reloader rebuilds the configuration from its sources and applies it to the
// registered components. It serialises reloads: SIGHUP, the console and the
// file watcher may ask at the same time.
type Reloader struct {
	src config.Sources
	log *slog.Logger

	mu         sync.Mutex // serialises Reload; guards the fields below
	cur        config.Loaded
	components []Component
	stats      Stats
	// paths and sums are the files of the configuration in force and digests
	// of their contents as the last reload (or the start) read them.
	paths []string
	sums  [][32]byte
}

// New returns a Reloader whose configuration in force is cur, built by
// config.Load from src.
func New(src config.Sources, cur config.Loaded, log *slog.Logger) *Reloader {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{src: src, cur: cur, log: log, stats: Stats{LastOK: true, LastSuccess: time.Now()}}
	r.paths = files(cur.Config)
	r.sums = checksums(r.paths)
	return r
}

// filesChanged reports whether a file of the configuration in force has
// changed since the last reload read it.
func (r *Reloader) filesChanged() bool {
	r.mu.Lock()
	paths, sums := r.paths, r.sums
	r.mu.Unlock()
	return !slices.Equal(checksums(paths), sums)
}

// Register adds a component; reloads prepare and apply components in the
// order they were registered.
func (r *Reloader) Register(c Component) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.components = append(r.components, c)
}

// Current returns the configuration in force.
func (r *Reloader) Current() config.Loaded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// Stats returns the figures of the reloads so far.
func (r *Reloader) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// Files returns the files the configuration in force was read from: the
// configuration file, the upstream file, the password file, the auth file and
// the TLS files, those in use.
func (r *Reloader) Files() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return files(r.cur.Config)
}

func files(c config.Config) []string {
	var out []string
	for _, f := range []string{c.ConfigFile, c.UpstreamFile, c.UpstreamPasswordFile, c.AuthFile,
		c.TLSCert, c.TLSKey, c.TLSClientCA} {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Reload reads every source again and, if the new configuration is valid and
// every component can take it, applies it; otherwise nothing changes. Settings
// that need a restart keep their old values and are reported. The outcome is
// logged (every problem of a rejected configuration, every change of an
// applied one) and counted.
func (r *Reloader) Reload(trigger string) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := Result{Trigger: trigger}
	// Digests taken before reading: a change while Load reads is seen as a
	// change by the next check, never lost.
	sums := checksums(r.paths)
	r.sums = sums
	next, err := config.Load(r.src)
	if err == nil {
		changes := config.Changes(r.cur.Config, next.Config)
		next.Config = config.KeepRestartOnly(r.cur.Config, next.Config)
		for _, c := range changes {
			if c.Restart {
				res.NeedRestart = append(res.NeedRestart, c)
			} else {
				res.Applied = append(res.Applied, c)
			}
		}
		res.Shadowed = next.Shadowed
		var applies []func()
		var errs []error
		for _, c := range r.components {
			apply, err := c.Prepare(r.cur, next)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", c.Name, err))
			} else if apply != nil {
				applies = append(applies, apply)
			}
		}
		if err = errors.Join(errs...); err == nil {
			for _, apply := range applies {
				apply()
			}
			r.cur = next
			if p := files(next.Config); !slices.Equal(p, r.paths) {
				r.paths, r.sums = p, checksums(p)
			}
		}
	}
	if err != nil {
		res.Err = err
		res.Applied, res.NeedRestart = nil, nil
		r.stats.Failures++
		r.stats.LastOK = false
		problems := strings.Split(err.Error(), "\n")
		r.log.Error("configuration reload rejected: the previous configuration stays in force",
			"trigger", trigger, "problems", len(problems))
		for _, p := range problems {
			r.log.Error("configuration problem", "trigger", trigger, "problem", p)
		}
		return res
	}
	r.stats.Successes++
	r.stats.LastOK = true
	r.stats.LastSuccess = time.Now()
	for _, c := range res.Applied {
		r.log.Info("configuration changed", "trigger", trigger, "setting", c.Name, "old", c.Old, "new", c.New)
	}
	for _, c := range res.NeedRestart {
		r.log.Warn("configuration change needs a restart: not applied", "trigger", trigger, "setting", c.Name, "old", c.Old, "new", c.New)
	}
	for _, s := range res.Shadowed {
		r.log.Info("configuration file setting overridden", "setting", s)
	}
	r.log.Info("configuration reloaded", "trigger", trigger, "changes", len(res.Applied), "need_restart", len(res.NeedRestart))
	return res
}
