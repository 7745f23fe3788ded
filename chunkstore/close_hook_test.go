package chunkstore

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// TestBeforeClose: the hook runs for an exclusive holder, with the index
// open and the lock still held, once; never for a shared holder or one
// without its index; a panic in it does not keep Close from releasing the
// index and the lock.
func TestBeforeClose(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	open := func(opts OpenOptions) *Repo {
		t.Helper()
		r, err := Open(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	calls := 0
	var during []error
	hook := func(r *Repo) {
		calls++
		// The index is open and the lock still held.
		_, err := r.Index().PrimaryStates()
		during = append(during, err)
		_, err = Open(dir, OpenOptions{Mode: Shared, What: "test"})
		if err == nil {
			err = errors.New("a shared open succeeded while the hook ran")
		} else if errors.Is(err, ErrLocked) {
			err = nil
		}
		during = append(during, err)
	}
	r := open(OpenOptions{Mode: Exclusive, What: "test", BeforeClose: hook})
	if calls != 0 {
		t.Fatalf("hook called %d times before Close", calls)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Fatalf("exclusive holder: hook called %d times, want 1", calls)
	}
	if err := errors.Join(during...); err != nil {
		t.Fatalf("in the hook: %v", err)
	}

	for _, opts := range []OpenOptions{
		{Mode: Shared, What: "test", BeforeClose: hook},
		{Mode: Exclusive, What: "test", NoIndex: true, BeforeClose: hook},
	} {
		if err := open(opts).Close(); err != nil {
			t.Fatal(err)
		}
		if calls != 1 {
			t.Fatalf("mode %v, no index %v: hook called", opts.Mode, opts.NoIndex)
		}
	}

	// A panicking hook: Close still releases everything and says why.
	r = open(OpenOptions{Mode: Exclusive, What: "test", BeforeClose: func(*Repo) { panic("hook failed") }})
	err := r.Close()
	if err == nil || !strings.Contains(err.Error(), "hook failed") {
		t.Fatalf("Close after a panicking hook: %v", err)
	}
	// The lock is free (Wait 0 fails at once if not) and index.db closed
	// (bbolt's own flock would keep a second open waiting).
	r = open(OpenOptions{Mode: Exclusive, What: "test"})
	if _, err := r.Index().PrimaryStates(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}
