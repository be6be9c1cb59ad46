package reload

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatchOptions tune [Reloader.Watch].
type WatchOptions struct {
	// Debounce is how long the watcher waits after a change before it reloads,
	// so that the several events of one update (Kubernetes writes a new
	// directory, swaps a symlink, removes the old one) make one reload.
	// Default 200ms.
	Debounce time.Duration
	// Poll is the interval of a content check that runs even when inotify
	// works, for changes it cannot see (a file system without inotify, a
	// watch limit reached). Default 10s.
	Poll time.Duration
}

// Watch reloads whenever the content of a file of the configuration in force
// (see [Reloader.Files]) changes, until ctx is done. It watches the
// directories of those files, not the files: Kubernetes updates a mounted
// ConfigMap or Secret by atomically swapping the directory's "..data" symlink,
// which a watch on the file itself never sees. An event only leads to a reload
// when a file's content differs from what the last reload saw, so events of
// unrelated files in the same directories cost one read of each file.
func (r *Reloader) Watch(ctx context.Context, opt WatchOptions) {
	if opt.Debounce <= 0 {
		opt.Debounce = 200 * time.Millisecond
	}
	if opt.Poll <= 0 {
		opt.Poll = 10 * time.Second
	}
	paths := r.Files()
	if len(paths) == 0 {
		return
	}
	w, err := fsnotify.NewWatcher()
	var events chan fsnotify.Event
	var errs chan error
	if err != nil {
		r.log.Warn("cannot watch configuration files, checking them every poll interval instead", "error", err, "poll", opt.Poll)
	} else {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	watched := map[string]bool{}
	watchDirs := func() {
		if w == nil {
			return
		}
		want := map[string]bool{}
		for _, p := range paths {
			want[filepath.Dir(p)] = true
		}
		for d := range watched {
			if !want[d] {
				_ = w.Remove(d)
				delete(watched, d)
			}
		}
		for d := range want {
			if watched[d] {
				continue
			}
			if err := w.Add(d); err != nil {
				r.log.Warn("cannot watch a configuration directory, checking it every poll interval instead", "dir", d, "error", err, "poll", opt.Poll)
				continue
			}
			watched[d] = true
		}
	}
	watchDirs()

	poll := time.NewTicker(opt.Poll)
	defer poll.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	check := func() {
		if !r.filesChanged() {
			return
		}
		r.Reload("file")
		// The configuration file may name other files now.
		paths = r.Files()
		watchDirs()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			debounce.Reset(opt.Debounce)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			r.log.Warn("configuration file watch error", "error", err)
		case <-debounce.C:
			check()
		case <-poll.C:
			check()
		}
	}
}

// checksums returns a digest of each file's content (through symlinks), or of
// nothing for a file that cannot be read, so a file that disappears or comes
// back counts as a change.
func checksums(paths []string) [][32]byte {
	out := make([][32]byte, len(paths))
	for i, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		h := sha256.New()
		_, _ = io.Copy(h, io.LimitReader(f, 2<<20))
		f.Close()
		copy(out[i][:], h.Sum(nil))
	}
	return out
}
