package localpg

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestVersionedBinDirsNewestFirst(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"9.6", "15", "10", "16beta1", "README", "9.10"} {
		if err := os.MkdirAll(filepath.Join(root, v, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got := versionedBinDirs(root)
	var want []string
	for _, v := range []string{"15", "10", "9.10", "9.6"} {
		want = append(want, filepath.Join(root, v, "bin"))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("versionedBinDirs = %q, want %q", got, want)
	}
	if dirs := versionedBinDirs(filepath.Join(root, "missing")); dirs != nil {
		t.Fatalf("missing root: got %q", dirs)
	}
}

func TestMergeSettingsOverridesDefaults(t *testing.T) {
	m, err := mergeSettings(map[string]string{"Fsync": "on", "work_mem": "8MB"})
	if err != nil {
		t.Fatal(err)
	}
	if m["fsync"] != "on" || m["work_mem"] != "8MB" || m["max_connections"] != "300" {
		t.Fatalf("merged settings = %v", m)
	}
	if defaultSettings["fsync"] != "off" {
		t.Fatal("mergeSettings modified the defaults")
	}
}
