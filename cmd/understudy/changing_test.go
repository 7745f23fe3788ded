package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// rewriter rewrites a file, block after block, without a pause until it is
// stopped: a file that changes during every read of it.
type rewriter struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

func startRewriter(t *testing.T, p string) *rewriter {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	w := &rewriter{stop: make(chan struct{})}
	w.wg.Go(func() {
		defer f.Close()
		block := make([]byte, 4096)
		for off := int64(0); ; off = (off + int64(len(block))) % st.Size() {
			select {
			case <-w.stop:
				return
			default:
			}
			rand.Read(block)
			if _, err := f.WriteAt(block, off); err != nil {
				t.Error(err)
				return
			}
		}
	})
	t.Cleanup(w.halt)
	return w
}

func (w *rewriter) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
}

type snapshotWarnings struct {
	ID       string `json:"id"`
	Warnings []struct {
		Path  string `json:"path"`
		Error string `json:"error"`
	} `json:"warnings"`
}

// changedWarning returns the error of the one warning, which must name p.
func changedWarning(t *testing.T, s snapshotWarnings, p string) string {
	t.Helper()
	if len(s.Warnings) != 1 || s.Warnings[0].Path != p {
		t.Fatalf("warnings %+v, want one for %s", s.Warnings, p)
	}
	return s.Warnings[0].Error
}

// A file rewritten without pause during the snapshot: exit 3, the warning on
// stderr, in the snapshot's --json output and in snapshots --json, and never
// a torn file: left out while no earlier snapshot has it, then the earlier
// snapshot's version. Once calm, it is read and stored whole.
func TestSnapshotOfChangingFileExit3(t *testing.T) {
	base := t.TempDir()
	repo, src := filepath.Join(base, "repo"), filepath.Join(base, "src")
	writeFiles(t, src, map[string]string{"calm": "calm\n"})
	busy := filepath.Join(src, "busy")
	data := make([]byte, 8<<20)
	rand.Read(data)
	if err := os.WriteFile(busy, data, 0o644); err != nil {
		t.Fatal(err)
	}
	runOK(t, "-r", repo, "init")
	if r := run(t, nil, "-r", repo, "snapshot", "--read-attempts", "0", src); r.code != exitUsage {
		t.Fatalf("--read-attempts 0: exit %d, want %d", r.code, exitUsage)
	}

	w := startRewriter(t, busy)
	r := run(t, nil, "-r", repo, "--json", "snapshot", "--read-attempts", "2", src)
	w.halt()
	if r.code != exitPartial {
		t.Fatalf("exit %d, want %d\n%s%s", r.code, exitPartial, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "warning: "+busy+": changed while being read (2 attempts)") {
		t.Fatalf("stderr does not name the file:\n%s", r.stderr)
	}
	var snap snapshotWarnings
	decodeJSON(t, r.stdout, &snap)
	if e := changedWarning(t, snap, busy); !strings.Contains(e, "changed while being read (2 attempts)") || !strings.Contains(e, "left out") {
		t.Fatalf("warning %q", e)
	}
	var listed []snapshotWarnings
	decodeJSON(t, runOK(t, "-r", repo, "snapshots", "--json"), &listed)
	if len(listed) != 1 || listed[0].ID != snap.ID {
		t.Fatalf("snapshots: %+v", listed)
	}
	changedWarning(t, listed[0], busy)
	if got := runOK(t, "-r", repo, "cat", "latest", filepath.Join(src, "calm")); got != "calm\n" {
		t.Fatalf("calm: %q", got)
	}
	if r := run(t, nil, "-r", repo, "cat", "latest", busy); r.code == 0 {
		t.Fatal("the changing file is in the snapshot, with no earlier version to hold")
	}

	// Calm: read and stored whole.
	runOK(t, "-r", repo, "snapshot", src)
	calm, err := os.ReadFile(busy)
	if err != nil {
		t.Fatal(err)
	}
	if got := runOK(t, "-r", repo, "cat", "latest", busy); !bytes.Equal([]byte(got), calm) {
		t.Fatal("the calm file's content differs")
	}

	// Changing again (default attempts): the calm version, exactly.
	w = startRewriter(t, busy)
	r = run(t, nil, "-r", repo, "--json", "snapshot", src)
	w.halt()
	if r.code != exitPartial {
		t.Fatalf("exit %d, want %d\n%s%s", r.code, exitPartial, r.stdout, r.stderr)
	}
	decodeJSON(t, r.stdout, &snap)
	if e := changedWarning(t, snap, busy); !strings.Contains(e, "changed while being read (3 attempts)") || !strings.Contains(e, "previous snapshot") {
		t.Fatalf("warning %q", e)
	}
	if got := runOK(t, "-r", repo, "cat", "latest", busy); !bytes.Equal([]byte(got), calm) {
		t.Fatal("the snapshot does not hold the previous snapshot's version")
	}
	runOK(t, "-r", repo, "check", "--read-data")
}
