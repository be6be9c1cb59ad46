package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestHelpListsEveryFlag(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, env(nil), &out, &errb); code != exitOK {
		t.Fatalf("--help exit %d, stderr %s", code, errb.String())
	}
	for _, name := range config.FlagNames() {
		if !strings.Contains(out.String(), "--"+name) || !strings.Contains(out.String(), config.EnvName(name)) {
			t.Errorf("--help does not document --%s / %s", name, config.EnvName(name))
		}
	}
	for _, want := range []string{"proxy dev", "DATABASE_URL"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help does not mention %q", want)
		}
	}
}

func TestInvalidConfigListsEveryProblem(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"--pool-size", "0", "--listen", "nohostport", "--upstream", "postgres://x:notaport/db"},
		env(map[string]string{"PGSIDECAR_QUERY_WAIT_TIMEOUT": "soon"}), &out, &errb)
	if code != exitConfig {
		t.Fatalf("exit %d, want %d", code, exitConfig)
	}
	for _, want := range []string{"--pool-size", "--listen", "--upstream", "PGSIDECAR_QUERY_WAIT_TIMEOUT"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr does not name %s:\n%s", want, errb.String())
		}
	}
}

func TestMissingUpstream(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(nil, env(nil), &out, &errb); code != exitConfig || !strings.Contains(errb.String(), "--upstream") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

func TestUnknownFlag(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--no-such-flag"}, env(nil), &out, &errb); code != exitConfig || !strings.Contains(errb.String(), "no-such-flag") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}
