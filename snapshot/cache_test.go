package snapshot

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/testtree"
	"github.com/understudy/understudy/snapshot/tree"
)

// later is a clock an hour ahead: entries made by the test are then older
// than the racy window, as a host's files are.
func later() time.Time { return time.Now().Add(time.Hour) }

// opens records the files a snapshot opens for reading.
type opens struct {
	mu    sync.Mutex
	paths []string
}

func (o *opens) hook(p string) {
	o.mu.Lock()
	o.paths = append(o.paths, p)
	o.mu.Unlock()
}

// take snapshots paths; with opts.Root unset, of the test's source tree.
func (o *opens) take(t *testing.T, r *chunkstore.Repo, opts Options, paths ...string) *Result {
	t.Helper()
	o.paths = nil
	opts.opened = o.hook
	if opts.now == nil {
		opts.now = later
	}
	res, warns := takeWith(t, r, opts, paths...)
	if len(warns) != 0 {
		t.Fatalf("warnings: %v", warns)
	}
	slices.Sort(o.paths)
	return res
}

// cacheTree builds testtree.Every in root/src, where root is a directory
// of the test's own: snapshots are taken with Options.Root = root, so that
// no ancestor changes under other tests (as /tmp does). src is the path in
// the snapshot, "/src".
func cacheTree(t *testing.T) (root, src string, r *chunkstore.Repo) {
	t.Helper()
	testtree.NeedRoot(t)
	root = t.TempDir()
	dir := filepath.Join(root, "src")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	testtree.Every(t, dir)
	t.Cleanup(func() { testtree.ClearFlags(t, dir) })
	return root, "/src", newRepo(t, filepath.Join(t.TempDir(), "repo"))
}

// A second snapshot of an unchanged tree opens no file, reads no byte and
// gives the same root tree; every file and directory counts as unmodified.
func TestUnchangedTreeOpensNoFile(t *testing.T) {
	root, src, r := cacheTree(t)
	var o opens
	first := o.take(t, r, Options{Root: root}, src)
	if len(o.paths) == 0 {
		t.Fatal("the first snapshot opened nothing")
	}
	if s := first.Record.Stats; s.FilesNew != s.Files || s.FilesUnmodified != 0 {
		t.Fatalf("first snapshot stats: %+v", s)
	}
	second := o.take(t, r, Options{Root: root}, src)
	if len(o.paths) != 0 {
		t.Fatalf("unchanged tree: opened %q", o.paths)
	}
	if first.Record.Root != second.Record.Root {
		t.Fatalf("root tree %s, then %s", first.Record.Root.Short(), second.Record.Root.Short())
	}
	s := second.Record.Stats
	if s.BytesRead != 0 || s.BlobsAdded != 0 || s.FilesUnmodified != s.Files || s.FilesNew+s.FilesChanged != 0 ||
		s.DirsUnmodified != s.Dirs || s.DirsNew+s.DirsChanged != 0 {
		t.Fatalf("second snapshot stats: %+v", s)
	}
}

// Changing one file's content re-reads that file only; the snapshot holds
// the new content and is the snapshot a full read gives.
func TestContentChangeRereadsOnlyThatFile(t *testing.T) {
	root, src, r := cacheTree(t)
	var o opens
	o.take(t, r, Options{Root: root}, src)
	f := filepath.Join(src, "files/small")
	if err := os.WriteFile(root+f, []byte("HELLO, understudy\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res := o.take(t, r, Options{Root: root}, src)
	if !slices.Equal(o.paths, []string{f}) {
		t.Fatalf("opened %q, want only %s", o.paths, f)
	}
	if got := content(t, r, res.Record.Root, f); string(got) != "HELLO, understudy\n" {
		t.Fatalf("snapshot holds %q", got)
	}
	if s := res.Record.Stats; s.FilesChanged != 1 || s.FilesNew != 0 || s.BytesRead != 18 {
		t.Fatalf("stats: %+v", s)
	}
	full := o.take(t, r, Options{Root: root, ForceRead: true}, src)
	if full.Record.Root != res.Record.Root {
		t.Fatal("the cached snapshot differs from a full read")
	}
}

// chmod moves only the ctime: the metadata is read again and the new mode
// is in the snapshot. The content is read again too, unless trust_mtime.
func TestChmodRereadsMetadata(t *testing.T) {
	for _, trust := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "trust_mtime"}[trust], func(t *testing.T) {
			root, src, r := cacheTree(t)
			var o opens
			o.take(t, r, Options{Root: root, TrustMtime: trust}, src)
			f := filepath.Join(src, "files/text-3m")
			if err := os.Chmod(root+f, 0o600); err != nil {
				t.Fatal(err)
			}
			res := o.take(t, r, Options{Root: root, TrustMtime: trust}, src)
			if !slices.Equal(o.paths, []string{f}) {
				t.Fatalf("opened %q, want only %s", o.paths, f)
			}
			n, _, err := Resolve(r, res.Record.Root, f)
			if err != nil {
				t.Fatal(err)
			}
			if n.Mode != 0o600 {
				t.Fatalf("mode %o in the snapshot", n.Mode)
			}
			wantRead := int64(3 << 20)
			if trust {
				wantRead = 0
			}
			if s := res.Record.Stats; s.BytesRead != wantRead || s.FilesChanged != 1 {
				t.Fatalf("stats: %+v", s)
			}
		})
	}
}

// --force-read opens every file whatever the cache says, and still tells
// which files changed.
func TestForceReadOpensEveryFile(t *testing.T) {
	root, src, r := cacheTree(t)
	var o opens
	o.take(t, r, Options{Root: root}, src)
	first := slices.Clone(o.paths)
	res := o.take(t, r, Options{Root: root, ForceRead: true}, src)
	if !slices.Equal(o.paths, first) {
		t.Fatalf("force-read opened %d files, the first snapshot %d", len(o.paths), len(first))
	}
	if s := res.Record.Stats; s.FilesUnmodified != s.Files {
		t.Fatalf("stats: %+v", s)
	}
}

// A file changed within the racy window of a snapshot could change again
// within the same timestamp tick after it was read: the next snapshot reads
// it again.
func TestRacyFileIsReadAgain(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(src, 0o755)
	f := filepath.Join(src, "fresh")
	os.WriteFile(f, []byte("just written"), 0o644)
	r := newRepo(t, filepath.Join(base, "repo"))
	var o opens
	now := time.Now
	o.take(t, r, Options{now: now}, src)
	o.take(t, r, Options{now: now}, src)
	if !slices.Equal(o.paths, []string{f}) {
		t.Fatalf("opened %q, want %s again", o.paths, f)
	}
	o.take(t, r, Options{}, src) // an hour later: no longer racy, but recorded as such
	o.take(t, r, Options{}, src)
	if len(o.paths) != 0 {
		t.Fatalf("opened %q", o.paths)
	}
}

// The snapshot the cache describes must still exist: after it is gone (a
// forget), every file is read again.
func TestCacheOfMissingSnapshotIsNotUsed(t *testing.T) {
	root, src, r := cacheTree(t)
	var o opens
	first := o.take(t, r, Options{Root: root}, src)
	all := slices.Clone(o.paths)
	err := r.Index().Bolt().Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("snapshots")).Delete(first.ID[:])
	})
	if err != nil {
		t.Fatal(err)
	}
	o.take(t, r, Options{Root: root}, src)
	if !slices.Equal(o.paths, all) {
		t.Fatalf("opened %d files, want all %d", len(o.paths), len(all))
	}
}

// Every kind of change, one after the other: each snapshot with the cache
// equals a snapshot that reads everything.
func TestCachedSnapshotEqualsFullRead(t *testing.T) {
	root, src, r := cacheTree(t)
	p := func(rel string) string { return filepath.Join(root, src, rel) }
	steps := []struct {
		name string
		do   func() error
	}{
		{"nothing", func() error { return nil }},
		{"append", func() error {
			f, err := os.OpenFile(p("files/small"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteString("more\n")
			return err
		}},
		{"same size, mtime set back", func() error {
			fi, err := os.Stat(p("files/empty"))
			if err != nil {
				return err
			}
			old, err := os.ReadFile(p("files/text-3m"))
			if err != nil {
				return err
			}
			st, _ := os.Stat(p("files/text-3m"))
			old[1000] ^= 0xff
			if err := os.WriteFile(p("files/text-3m"), old, 0); err != nil {
				return err
			}
			_ = fi
			return os.Chtimes(p("files/text-3m"), st.ModTime(), st.ModTime())
		}},
		{"chown", func() error { return os.Lchown(p("tree/a/b/c/leaf"), 42, 43) }},
		{"xattr", func() error { return unix.Lsetxattr(p("files/xattrs"), "user.text", []byte("changed"), 0) }},
		{"new hard link first in order", func() error { return os.Link(p("hard/one"), p("files/0-first-link")) }},
		{"remove a link", func() error { return os.Remove(p("hard/two")) }},
		{"symlink retargeted", func() error {
			if err := os.Remove(p("links/relative")); err != nil {
				return err
			}
			return os.Symlink("../files/empty", p("links/relative"))
		}},
		{"new file and directory", func() error {
			if err := os.MkdirAll(p("tree/new/dir"), 0o755); err != nil {
				return err
			}
			return os.WriteFile(p("tree/new/dir/file"), []byte("new"), 0o644)
		}},
		{"directory removed", func() error { return os.RemoveAll(p("tree/a/b")) }},
		{"rename", func() error { return os.Rename(p("tree/new"), p("tree/renamed")) }},
		{"directory mode", func() error { return os.Chmod(p("modes/sticky"), 0o777) }},
	}
	var o opens
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		cached := o.take(t, r, Options{Root: root}, src)
		full := o.take(t, r, Options{Root: root, ForceRead: true}, src)
		// src's own tree: its ancestors, /tmp among them, change under
		// other tests.
		a, _, err := Resolve(r, cached.Record.Root, src)
		if err != nil {
			t.Fatal(err)
		}
		b, _, err := Resolve(r, full.Record.Root, src)
		if err != nil {
			t.Fatal(err)
		}
		if a.Subtree != b.Subtree {
			Diff(context.Background(), r, a.Subtree, b.Subtree, func(c Change) error {
				t.Errorf("%+v", c)
				return nil
			})
			t.Fatalf("after %q: cached snapshot %s, full read %s", step.name, a.Subtree.Short(), b.Subtree.Short())
		}
	}
}

// FuzzDecodeCacheRecord: the decoder never panics or over-allocates, and
// what it accepts encodes to a record that decodes to the same.
func FuzzDecodeCacheRecord(f *testing.F) {
	n := &tree.Node{Name: "file", Type: tree.File, Mode: 0o644, Content: []tree.Extent{{Blob: index.Hash([]byte("x")), Length: 1}}}
	enc, err := tree.AppendNode(nil, n)
	if err != nil {
		f.Fatal(err)
	}
	b := newRecord(index.Hash([]byte("tree")), 1, true)
	b.add(&statKey{ino: 7, dev: 2049, size: 1, mtimeSec: 1e9, ctimeSec: 1e9, mode: unix.S_IFREG | 0o644, racy: true}, enc)
	f.Add(b.buf)
	f.Add(newRecord(index.ID{}, 0, false).buf)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord(data)
		if err != nil {
			return
		}
		out := newRecord(r.tree, len(r.entries), r.complete)
		for i := range r.entries {
			out.add(&r.entries[i].key, r.entries[i].node)
		}
		r2, err := decodeRecord(out.buf)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if r2.tree != r.tree || r2.complete != r.complete || len(r2.entries) != len(r.entries) {
			t.Fatal("re-encoded record differs")
		}
		for i := range r.entries {
			a, b := &r.entries[i], &r2.entries[i]
			if a.name != b.name || a.key != b.key || !bytes.Equal(a.node, b.node) {
				t.Fatalf("entry %d differs: %+v, %+v", i, a, b)
			}
		}
	})
}

// Unchanged directories are listed from the cache only while the selection
// is the one the cache was written with: an exclude dropped brings back
// what it excluded, though no directory changed.
func TestDroppedExcludeBringsEntriesBack(t *testing.T) {
	root, src, r := cacheTree(t)
	var o opens
	excl, err := selection.New([]string{src}, []string{"/src/files/random-3m", "/src/tree/a/b/"}, false)
	if err != nil {
		t.Fatal(err)
	}
	o.take(t, r, Options{Root: root, Selection: excl}, src)
	o.take(t, r, Options{Root: root, Selection: excl}, src)
	if len(o.paths) != 0 {
		t.Fatalf("opened %q", o.paths)
	}
	res := o.take(t, r, Options{Root: root}, src)
	for _, p := range []string{"/src/files/random-3m", "/src/tree/a/b/c/leaf"} {
		if _, _, err := Resolve(r, res.Record.Root, p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	full := o.take(t, r, Options{Root: root, ForceRead: true}, src)
	if full.Record.Root != res.Record.Root {
		t.Fatal("the snapshot after the exclude was dropped differs from a full read")
	}
}
