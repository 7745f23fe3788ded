package restore_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/testtree"
)

func openRepo(t *testing.T) *chunkstore.Repo {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := chunkstore.Init(dir, chunkstore.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Index().Check(); err != nil {
			t.Errorf("index: %v", err)
		}
		r.Close()
	})
	return r
}

// take snapshots paths (absolute, under root "/") and fails on warnings.
func take(t *testing.T, r *chunkstore.Repo, excludes []string, paths ...string) *snapshot.Result {
	t.Helper()
	return takeAt(t, r, "/", excludes, paths...)
}

// takeAt is take with the directory root standing for "/".
func takeAt(t *testing.T, r *chunkstore.Repo, root string, excludes []string, paths ...string) *snapshot.Result {
	t.Helper()
	sel, err := selection.New(paths, excludes, false)
	if err != nil {
		t.Fatal(err)
	}
	res, err := snapshot.Take(context.Background(), r, snapshot.Options{Root: root, Selection: sel, Set: "test", Host: "test",
		Warn: func(p string, err error) { t.Errorf("warning: %s: %v", p, err) }})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// subtreeID returns the tree ID of the directory at path p of a snapshot.
func subtreeID(t *testing.T, r *chunkstore.Repo, root index.ID, p string) index.ID {
	t.Helper()
	n, _, err := snapshot.Resolve(r, root, p)
	if err != nil {
		t.Fatal(err)
	}
	return n.Subtree
}

func TestRoundTripEveryFileType(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	src := filepath.Join(base, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	testtree.Every(t, src)
	r := openRepo(t)
	s1 := take(t, r, nil, src)

	target := filepath.Join(base, "target")
	t.Cleanup(func() { testtree.ClearFlags(t, target) })
	st, err := restore.Run(context.Background(), r, s1.Record, restore.Options{Target: target,
		Warn: func(p string, err error) { t.Errorf("restore warning: %s: %v", p, err) }})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files == 0 || st.Links == 0 {
		t.Fatalf("restore stats look wrong: %+v", st)
	}
	restored := filepath.Join(target, src)
	testtree.Compare(t, src, restored)

	// Snapshot the restored copy: the directory's tree ID is the same, and
	// no data blob is new.
	dataBefore := countBlobs(t, r, index.DataBlob)
	s2 := take(t, r, nil, restored)
	if a, b := subtreeID(t, r, s1.Record.Root, src), subtreeID(t, r, s2.Record.Root, restored); a != b {
		t.Fatalf("tree ID of the restored directory differs: %s vs %s", a.Short(), b.Short())
	}
	if n := countBlobs(t, r, index.DataBlob) - dataBefore; n != 0 {
		t.Errorf("snapshot of the restored copy added %d data blobs; its content was all known", n)
	}
}

func countBlobs(t *testing.T, r *chunkstore.Repo, typ index.BlobType) int {
	t.Helper()
	n := 0
	if err := r.Index().ForEachBlob(func(b index.Blob) error {
		if b.Type == typ {
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRestoreOverExistingWithDelete(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	src := filepath.Join(base, "src")
	testtree.Build(t, base, testtree.Dir{"src": testtree.Dir{
		"keep":     testtree.File{Content: []byte("keep")},
		"excluded": testtree.Dir{"x": testtree.File{Content: []byte("x")}},
		"sub":      testtree.Dir{"a": testtree.File{Content: []byte("a")}},
	}})
	r := openRepo(t)
	s := take(t, r, []string{"/excluded/", "excluded/"}, src)

	target := filepath.Join(base, "target")
	tsrc := filepath.Join(target, src)
	if err := os.MkdirAll(filepath.Dir(tsrc), 0o755); err != nil {
		t.Fatal(err)
	}
	testtree.Build(t, filepath.Dir(tsrc), testtree.Dir{"src": testtree.Dir{
		"keep":     testtree.File{Content: []byte("old content")},
		"extra":    testtree.File{Content: []byte("extra")},
		"excluded": testtree.Dir{"local": testtree.File{Content: []byte("local")}},
		"sub":      testtree.Symlink{Target: "/"}, // must be replaced, not followed
	}})
	if _, err := restore.Run(context.Background(), r, s.Record, restore.Options{Target: target, Delete: true}); err != nil {
		t.Fatal(err)
	}
	mustContent(t, filepath.Join(tsrc, "keep"), "keep")
	mustContent(t, filepath.Join(tsrc, "sub", "a"), "a")
	mustContent(t, filepath.Join(tsrc, "excluded", "local"), "local") // excluded: untouched
	if _, err := os.Lstat(filepath.Join(tsrc, "extra")); !os.IsNotExist(err) {
		t.Fatalf("extra file not deleted: %v", err)
	}
	if _, err := os.Lstat("/a"); err == nil {
		t.Fatal("a file was written through the symlink to /")
	}
}

func mustContent(t *testing.T, name, want string) {
	t.Helper()
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s: got %q, want %q", name, got, want)
	}
}

// A 100 GiB file holding 1 MiB of data is read as holes and written back as
// holes: the restored file has the same size, the same data and allocates
// about as little as the original. (How long it takes is measured in
// bench/RESULTS.md, not here.)
func TestHugeSparseFile(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.Mkdir(src, 0o755)
	name := filepath.Join(src, "sparse")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	const size, at = 100 << 30, 37 << 30
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>11)
	}
	if _, err := f.WriteAt(data, at); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Skipf("the filesystem of %s cannot hold a 100 GiB sparse file: %v", base, err)
	}
	f.Close()

	r := openRepo(t)
	s := take(t, r, nil, src)
	if s.Record.Stats.BytesRead > 2<<20 {
		t.Errorf("read %d bytes of a file with 1 MiB of data", s.Record.Stats.BytesRead)
	}
	target := filepath.Join(base, "target")
	if _, err := restore.Run(context.Background(), r, s.Record, restore.Options{Target: target}); err != nil {
		t.Fatal(err)
	}
	out, err := os.Open(filepath.Join(target, name))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var st, orig unix.Stat_t
	unix.Fstat(int(out.Fd()), &st)
	unix.Stat(name, &orig)
	if st.Size != size {
		t.Fatalf("restored size %d, want %d", st.Size, size)
	}
	if st.Blocks > orig.Blocks+2048 { // 512-byte blocks: at most 1 MiB more than the original
		t.Errorf("restored file allocates %d blocks, the original %d", st.Blocks, orig.Blocks)
	}
	got := make([]byte, len(data)+8192)
	if _, err := out.ReadAt(got, at-4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[4096:4096+len(data)], data) || bytes.Count(got[:4096], []byte{0}) != 4096 ||
		bytes.Count(got[4096+len(data):], []byte{0}) != 4096 {
		t.Error("restored data differs around the data region")
	}
	if off, err := unix.Seek(int(out.Fd()), 0, unix.SEEK_DATA); err != nil || off < at-1<<20 {
		t.Errorf("first data at %d (%v), want near %d", off, err, at)
	}
}

// A snapshot of a whole root ("/" listed, as the seed's set does) restored
// into an empty directory: the directory takes the metadata of "/" too, and
// snapshotting the copy as a root gives the same root tree and root entry.
func TestRoundTripWholeRoot(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	src := filepath.Join(base, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	testtree.Every(t, src)
	os.Chmod(src, 0o751)
	os.Lchown(src, 12, 34)
	os.Chtimes(src, time.Unix(0, 0), time.Unix(1234567890, 123456789))
	r := openRepo(t)
	s1 := takeAt(t, r, src, nil, "/")
	target := filepath.Join(base, "target")
	t.Cleanup(func() { testtree.ClearFlags(t, target) })
	if _, err := restore.Run(context.Background(), r, s1.Record, restore.Options{Target: target,
		Warn: func(p string, err error) { t.Errorf("restore warning: %s: %v", p, err) }}); err != nil {
		t.Fatal(err)
	}
	testtree.Compare(t, src, target)
	s2 := takeAt(t, r, target, nil, "/")
	if s1.Record.Root != s2.Record.Root || !bytes.Equal(s1.Record.RootDir, s2.Record.RootDir) {
		t.Fatalf("root differs after the round trip: %s vs %s", s1.Record.Root.Short(), s2.Record.Root.Short())
	}
}
