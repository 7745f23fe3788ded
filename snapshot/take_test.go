package snapshot

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

func newRepo(t *testing.T, dir string) *chunkstore.Repo {
	t.Helper()
	if _, err := chunkstore.Init(dir, chunkstore.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

type warning struct{ path, err string }

func takeWith(t *testing.T, r *chunkstore.Repo, opts Options, paths ...string) (*Result, []warning) {
	t.Helper()
	if opts.Selection == nil {
		sel, err := selection.New(paths, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		opts.Selection = sel
	}
	var warns []warning
	opts.Set, opts.Host = "test", "test"
	opts.Warn = func(p string, err error) { warns = append(warns, warning{p, err.Error()}) }
	res, err := Take(context.Background(), r, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res, warns
}

// content reads a file's content back from a snapshot.
func content(t *testing.T, r *chunkstore.Repo, root index.ID, p string) []byte {
	t.Helper()
	n, _, err := Resolve(r, root, p)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, e := range n.Content {
		if e.Blob.IsZero() {
			out = append(out, make([]byte, e.Length)...)
			continue
		}
		b, err := r.LoadBlob(e.Blob, nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// A file that changes between lstat and read is read again: the snapshot
// holds the new content and no warning is given.
func TestFileChangedBeforeReadIsReread(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(src, 0o755)
	f := filepath.Join(src, "grows")
	os.WriteFile(f, []byte("old"), 0o644)
	r := newRepo(t, filepath.Join(base, "repo"))

	changed := false
	res, warns := takeWith(t, r, Options{opened: func(p string) {
		if p == f && !changed {
			changed = true
			if err := os.WriteFile(f, []byte("new and longer"), 0o644); err != nil {
				t.Error(err)
			}
		}
	}}, src)
	if len(warns) != 0 {
		t.Fatalf("warnings: %v", warns)
	}
	if got := content(t, r, res.Record.Root, f); string(got) != "new and longer" {
		t.Fatalf("snapshot holds %q", got)
	}
}

// A file that vanishes between readdir and lstat is a warning naming it; the
// snapshot is still written with everything else.
func TestVanishedFileIsWarning(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(src, 0o755)
	a, b := filepath.Join(src, "a"), filepath.Join(src, "b")
	os.WriteFile(a, []byte("a"), 0o644)
	os.WriteFile(b, []byte("b"), 0o644)
	r := newRepo(t, filepath.Join(base, "repo"))

	res, warns := takeWith(t, r, Options{opened: func(p string) {
		if p == a {
			os.Remove(b)
		}
	}}, src)
	if len(warns) != 1 || warns[0].path != b {
		t.Fatalf("warnings %v, want one naming %s", warns, b)
	}
	if len(res.Record.Warnings) != 1 || res.Record.Warnings[0].Path != b {
		t.Fatalf("record warnings: %v", res.Record.Warnings)
	}
	if got := content(t, r, res.Record.Root, a); string(got) != "a" {
		t.Fatalf("a: %q", got)
	}
	if _, _, err := Resolve(r, res.Record.Root, b); err == nil {
		t.Fatal("vanished file is in the snapshot")
	}
}

// A listed path that does not exist is a warning, not an error.
func TestMissingListedPath(t *testing.T) {
	base := t.TempDir()
	r := newRepo(t, filepath.Join(base, "repo"))
	missing := filepath.Join(base, "nope")
	_, warns := takeWith(t, r, Options{}, missing)
	if len(warns) != 1 || warns[0].path != missing || !strings.Contains(warns[0].err, "does not exist") {
		t.Fatalf("warnings: %v", warns)
	}
}

// The repository's own directory is never taken, even under a listed path.
func TestRepositoryNotTaken(t *testing.T) {
	base := t.TempDir()
	os.WriteFile(filepath.Join(base, "file"), []byte("x"), 0o644)
	r := newRepo(t, filepath.Join(base, "repo"))
	res, warns := takeWith(t, r, Options{}, base)
	if len(warns) != 0 {
		t.Fatal(warns)
	}
	_, tr, err := Resolve(r, res.Record.Root, base)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range tr.Nodes {
		names = append(names, n.Name)
	}
	if strings.Join(names, ",") != "file" {
		t.Fatalf("directory holds %v, want only file", names)
	}
}

// Content is cut into chunks within the configured bounds, holes are kept as
// holes, identical content is stored once, and the bytes come back exactly.
func TestChunkingAndHoles(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(src, 0o755)
	// 5 MiB of incompressible-ish but deterministic data.
	data := make([]byte, 5<<20)
	x := uint64(88172645463325252)
	for i := range data {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		data[i] = byte(x)
	}
	os.WriteFile(filepath.Join(src, "big"), data, 0o644)
	os.WriteFile(filepath.Join(src, "copy"), data, 0o644)
	sparse, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	sparse.WriteAt([]byte("head"), 0)
	sparse.WriteAt([]byte("tail"), 64<<20)
	sparse.Close()
	r := newRepo(t, filepath.Join(base, "repo"))

	res, warns := takeWith(t, r, Options{}, src)
	if len(warns) != 0 {
		t.Fatal(warns)
	}
	cfg := r.Config()
	n, _, err := Resolve(r, res.Record.Root, filepath.Join(src, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Content) < 5<<20/int(cfg.ChunkMax) || len(n.Content) > 5<<20/int(cfg.ChunkMin) {
		t.Errorf("%d chunks for 5 MiB with bounds %d..%d", len(n.Content), cfg.ChunkMin, cfg.ChunkMax)
	}
	for i, e := range n.Content[:len(n.Content)-1] {
		if e.Length < uint64(cfg.ChunkMin) || e.Length > uint64(cfg.ChunkMax) {
			t.Errorf("chunk %d is %d bytes", i, e.Length)
		}
	}
	if got := content(t, r, res.Record.Root, filepath.Join(src, "big")); !bytes.Equal(got, data) {
		t.Error("big file content differs")
	}
	// The copy is stored once: the data blobs added are those of one file.
	if raw := res.Record.Stats.RawAdded; raw > int64(len(data))+1<<20 {
		t.Errorf("%d raw bytes added for two identical 5 MiB files", raw)
	}

	sn, _, err := Resolve(r, res.Record.Root, filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	var holes, dataLen uint64
	for _, e := range sn.Content {
		if e.Blob.IsZero() {
			holes += e.Length
		} else {
			dataLen += e.Length
		}
	}
	if holes+dataLen != 64<<20+4 || holes < 60<<20 {
		t.Errorf("sparse file: %d bytes of holes, %d of data: %+v", holes, dataLen, sn.Content)
	}
	got := content(t, r, res.Record.Root, filepath.Join(src, "sparse"))
	if string(got[:4]) != "head" || string(got[len(got)-4:]) != "tail" || bytes.Count(got[4:len(got)-4], []byte{0}) != len(got)-8 {
		t.Error("sparse file content differs")
	}
}

// A second snapshot of an unchanged tree has the same root tree and adds no
// data; the tree blobs are found in the repository.
func TestUnchangedTreeSameRoot(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "d"), 0o755)
	os.WriteFile(filepath.Join(src, "d", "f"), []byte("content"), 0o644)
	r := newRepo(t, filepath.Join(t.TempDir(), "repo"))
	a, _ := takeWith(t, r, Options{Root: src}, "/")
	b, _ := takeWith(t, r, Options{Root: src}, "/")
	if !bytes.Equal(a.Record.RootDir, b.Record.RootDir) {
		t.Fatal("the metadata of / changed")
	}
	if a.Record.Root != b.Record.Root {
		t.Fatalf("root tree %s then %s", a.Record.Root.Short(), b.Record.Root.Short())
	}
	if b.Record.Stats.BlobsAdded != 0 { // the record's own blob is not counted
		t.Fatalf("second snapshot added %d blobs", b.Record.Stats.BlobsAdded)
	}
	if a.ID == b.ID {
		t.Fatal("two snapshots at different times have one ID")
	}
	var changes []Change
	if err := Diff(context.Background(), r, a.Record.Root, b.Record.Root, func(c Change) error {
		changes = append(changes, c)
		return nil
	}); err != nil || len(changes) != 0 {
		t.Fatalf("diff of identical snapshots: %v %v", changes, err)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	parent := index.Hash([]byte("parent"))
	root := index.Hash([]byte("root"))
	rootDir, err := EncodeRootDir(tree.Node{Type: tree.Dir, Mode: 0o755, Subtree: root, Xattrs: []tree.Xattr{{Name: "security.selinux", Value: []byte("system_u:object_r:root_t:s0\x00")}}})
	if err != nil {
		t.Fatal(err)
	}
	rec := &Record{Version: RecordVersion, Root: root, RootDir: rootDir, Set: "os", Host: "h",
		Paths: []string{"/", "/etc/ssh"}, Excludes: []string{"/etc/"}, OneFileSystem: true,
		Tags: []string{"t"}, Parent: &parent, Stats: Stats{Files: 3},
		Warnings: []Warning{{Path: "/x", Error: "gone"}}}
	data, err := rec.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeRecord(data); err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := got.Encode()
	if !bytes.Equal(data, again) {
		t.Fatalf("record changed in a round trip:\n%s\n%s", data, again)
	}
	if n, err := got.RootNode(); err != nil || n.Mode != 0o755 || len(n.Xattrs) != 1 {
		t.Fatalf("root node %+v, %v", n, err)
	}
	otherDir, _ := EncodeRootDir(tree.Node{Type: tree.Dir, Subtree: parent})
	for _, bad := range []string{`{}`, `{"version":2,"root":"` + rec.Root.String() + `","paths":["/"]}`,
		`{"version":1,"paths":["/"]}`, `{"version":1,"root":"` + rec.Root.String() + `"}`, `[`,
		`{"version":1,"root":"` + root.String() + `","paths":["/"]}`, // no root_dir
		`{"version":1,"root":"` + root.String() + `","paths":["/"],"root_dir":"` + base64.StdEncoding.EncodeToString(otherDir) + `"}`,
	} {
		if _, err := DecodeRecord([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	root := index.Hash([]byte("root"))
	rootDir, _ := EncodeRootDir(tree.Node{Type: tree.Dir, Mode: 0o755, Subtree: root})
	rec := &Record{Version: RecordVersion, Root: root, RootDir: rootDir, Set: "os", Paths: []string{"/"}}
	data, _ := rec.Encode()
	f.Add(data)
	f.Add([]byte(`{"version":1,"root":"zz","paths":["/"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRecord(data)
		if err != nil {
			return
		}
		if r.Root.IsZero() || len(r.Paths) == 0 || r.Version != RecordVersion {
			t.Fatalf("accepted an invalid record: %+v", r)
		}
		// A decoded record's selection is either valid or a clean error.
		r.Selection()
		if _, err := r.Encode(); err != nil {
			t.Fatal(err)
		}
	})
}
