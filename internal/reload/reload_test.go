package reload

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/config"
	"github.com/pgsidecar/pgsidecar/internal/localpg/pgtest"
)

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newReloader(t *testing.T, conf string) (*Reloader, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "pgsidecar.conf")
	write(t, path, conf)
	src := config.Sources{Args: map[string]string{"config": path, "upstream": "postgres://u@h/db"}, Getenv: func(string) string { return "" }}
	cur, err := config.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	return New(src, cur, nil), path
}

func TestReloadAppliesAndRejects(t *testing.T) {
	r, path := newReloader(t, "pool-size = 4\n")
	var got []int
	r.Register(Component{Name: "pool", Prepare: func(prev, next config.Loaded) (func(), error) {
		return func() { got = append(got, next.PoolSize) }, nil
	}})

	write(t, path, "pool-size = 2\nlisten = 127.0.0.1:7777\n")
	res := r.Reload("test")
	if res.Err != nil || len(res.Applied) != 1 || res.Applied[0].Name != "pool-size" ||
		len(res.NeedRestart) != 1 || res.NeedRestart[0].Name != "listen" {
		t.Fatalf("reload: %+v", res)
	}
	if !strings.Contains(res.String(), "applied: pool-size 4 -> 2; needs a restart, not applied: listen 127.0.0.1:6432 -> 127.0.0.1:7777") {
		t.Errorf("answer: %s", res)
	}
	if cur := r.Current(); cur.PoolSize != 2 || cur.Listen != "127.0.0.1:6432" {
		t.Errorf("in force: pool-size %d listen %s", cur.PoolSize, cur.Listen)
	}

	// Invalid: rejected as a whole, every problem reported, nothing applied.
	write(t, path, "pool-size = 9\nmax-client-conn = 0\nbogus = 1\n")
	res = r.Reload("test")
	if res.Err == nil || !strings.Contains(res.Err.Error(), "bogus") || !strings.Contains(res.Err.Error(), "--max-client-conn") {
		t.Fatalf("invalid reload: %+v", res)
	}
	if r.Current().PoolSize != 2 || len(got) != 1 {
		t.Errorf("rejected configuration applied: pool-size %d, applies %v", r.Current().PoolSize, got)
	}
	st := r.Stats()
	if st.Successes != 1 || st.Failures != 1 || st.LastOK {
		t.Errorf("stats %+v", st)
	}

	// A component refusing stops every component.
	r.Register(Component{Name: "tls", Prepare: func(prev, next config.Loaded) (func(), error) {
		if next.PoolSize == 3 {
			return nil, errors.New("certificate does not load")
		}
		return nil, nil
	}})
	write(t, path, "pool-size = 3\n")
	res = r.Reload("test")
	if res.Err == nil || !strings.Contains(res.Err.Error(), "tls: certificate does not load") || len(got) != 1 || r.Current().PoolSize != 2 {
		t.Fatalf("component refusal: %+v, applies %v", res, got)
	}
	write(t, path, "pool-size = 5\n")
	if res = r.Reload("test"); res.Err != nil || len(got) != 2 || got[1] != 5 || !r.Stats().LastOK {
		t.Fatalf("after refusal: %+v %v", res, got)
	}
	if res = r.Reload("test"); res.String() != "configuration reloaded: no changes" {
		t.Errorf("no-op reload: %s", res)
	}
}

// Kubernetes updates a mounted ConfigMap by writing a new timestamped
// directory and swapping the ..data symlink: the watcher must see it.
func TestWatchSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	mount := filepath.Join(dir, "mount")
	if err := os.Mkdir(mount, 0o755); err != nil {
		t.Fatal(err)
	}
	n := 0
	gen := func(_ int, content string) {
		n++
		d := filepath.Join(mount, fmt.Sprintf("..2026_%d", n))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(d, "pgsidecar.conf"), content)
		tmp := filepath.Join(mount, "..data_tmp")
		if err := os.Symlink(filepath.Base(d), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(mount, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	gen(0, "pool-size = 4\n")
	if err := os.Symlink("..data/pgsidecar.conf", filepath.Join(mount, "pgsidecar.conf")); err != nil {
		t.Fatal(err)
	}
	src := config.Sources{Args: map[string]string{"config": filepath.Join(mount, "pgsidecar.conf"), "upstream": "postgres://u@h/db"},
		Getenv: func(string) string { return "" }}
	cur, err := config.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	r := New(src, cur, nil)
	var mu sync.Mutex
	var sizes []int
	r.Register(Component{Name: "pool", Prepare: func(prev, next config.Loaded) (func(), error) {
		return func() { mu.Lock(); sizes = append(sizes, next.PoolSize); mu.Unlock() }, nil
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Watch(ctx, WatchOptions{Debounce: 20 * time.Millisecond, Poll: time.Hour}); close(done) }()
	defer func() { cancel(); <-done }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		pgtest.Eventually(t, 5*time.Second, what, func() error {
			if !cond() {
				return fmt.Errorf("reloads %d", r.Stats().Successes)
			}
			return nil
		})
	}
	// The watch is set up asynchronously: keep swapping until it is seen.
	waitFor("first reload", func() bool {
		if r.Stats().Successes > 0 {
			return true
		}
		gen(int(time.Now().UnixNano()%20)+1, "pool-size = 7\n")
		time.Sleep(50 * time.Millisecond)
		return r.Stats().Successes > 0
	})
	waitFor("pool-size 7", func() bool { return r.Current().PoolSize == 7 })

	// An unrelated file in the directory: events, but no reload.
	before := r.Stats().Successes
	write(t, filepath.Join(mount, "unrelated"), "x")
	gen(22, "pool-size = 3\n")
	waitFor("pool-size 3", func() bool { return r.Current().PoolSize == 3 })
	if got := r.Stats().Successes; got != before+1 {
		t.Errorf("%d reloads for one change, want 1", got-before)
	}
	mu.Lock()
	defer mu.Unlock()
	if sizes[len(sizes)-1] != 3 {
		t.Errorf("applied sizes %v", sizes)
	}
}

// Without inotify events the poll still finds a change.
func TestWatchPoll(t *testing.T) {
	r, path := newReloader(t, "pool-size = 4\n")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Watch(ctx, WatchOptions{Debounce: time.Hour, Poll: 20 * time.Millisecond}); close(done) }()
	defer func() { cancel(); <-done }()
	write(t, path, "pool-size = 6\n")
	pgtest.EventuallyTrue(t, 5*time.Second, "the poll reloads", func() bool { return r.Current().PoolSize == 6 })
}
