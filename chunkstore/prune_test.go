package chunkstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/understudy/understudy/index"
)

// The tests' own tree format, since chunkstore knows none: a tree is "T"
// followed by 33-byte references (type, ID); a snapshot record is "S", an
// 8-byte serial, then references.
func toyLinks(t index.BlobType, raw []byte, fn func(index.ID, index.BlobType)) error {
	switch {
	case t == index.SnapshotBlob && len(raw) >= 9 && raw[0] == 'S':
		raw = raw[9:]
	case t == index.TreeBlob && len(raw) >= 1 && raw[0] == 'T':
		raw = raw[1:]
	default:
		return fmt.Errorf("not a toy %s", t)
	}
	if len(raw)%33 != 0 {
		return errors.New("truncated reference")
	}
	for ; len(raw) > 0; raw = raw[33:] {
		fn(index.ID(raw[1:33]), index.BlobType(raw[0]))
	}
	return nil
}

func toyRef(buf []byte, t index.BlobType, id index.ID) []byte {
	return append(append(buf, byte(t)), id[:]...)
}

// toyRepo builds snapshots of data blobs and remembers what each reaches.
type toyRepo struct {
	t      *testing.T
	r      *Repo
	blobs  map[index.ID][]byte // every data blob made
	serial uint64
}

// newToyRepo creates a repository and opens it exclusively; at cleanup the
// index, as last opened, passes bbolt's own check.
func newToyRepo(t *testing.T) *toyRepo {
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	tr := &toyRepo{t: t, blobs: make(map[index.ID][]byte)}
	tr.open(dir)
	t.Cleanup(func() {
		if err := tr.r.idx.Check(); err != nil {
			t.Errorf("index check: %v", err)
		}
		tr.r.Close()
	})
	return tr
}

func (tr *toyRepo) open(dir string) {
	tr.t.Helper()
	r, err := Open(dir, OpenOptions{Mode: Exclusive, What: "test"})
	if err != nil {
		tr.t.Fatal(err)
	}
	tr.r = r
}

// blob returns data blob n: 200 to 400 KiB that do not compress.
func (tr *toyRepo) blob(n int) index.ID {
	rng := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), 77})
	b := make([]byte, 200<<10+rng.Uint64()%(200<<10))
	rng.Read(b)
	id := index.Hash(b)
	tr.blobs[id] = b
	return id
}

// snapshot saves a snapshot whose root names one subtree per group of data
// blobs, and returns its ID. dup, if given, is first saved again as a copy
// into this snapshot's first data pack (a blob in two packs).
func (tr *toyRepo) snapshot(groups [][]index.ID, dup ...index.ID) index.ID {
	tr.t.Helper()
	ctx := context.Background()
	up := tr.r.NewUploader()
	defer up.Close()
	for _, id := range dup {
		loc, ok, err := tr.r.idx.Lookup(id)
		if err != nil || !ok {
			tr.t.Fatalf("dup %s: %v %v", id.Short(), ok, err)
		}
		sb, err := tr.r.ReadStored(id, loc, nil)
		if err != nil {
			tr.t.Fatal(err)
		}
		if err := up.saveCopy(ctx, sb); err != nil {
			tr.t.Fatal(err)
		}
	}
	root := []byte("T")
	for _, g := range groups {
		sub := []byte("T")
		for _, id := range g {
			if _, err := up.Save(ctx, index.DataBlob, id, tr.blobs[id]); err != nil {
				tr.t.Fatal(err)
			}
			sub = toyRef(sub, index.DataBlob, id)
		}
		if _, err := up.Save(ctx, index.TreeBlob, index.Hash(sub), sub); err != nil {
			tr.t.Fatal(err)
		}
		root = toyRef(root, index.TreeBlob, index.Hash(sub))
	}
	if _, err := up.Save(ctx, index.TreeBlob, index.Hash(root), root); err != nil {
		tr.t.Fatal(err)
	}
	tr.serial++
	rec := toyRef(binary.BigEndian.AppendUint64([]byte("S"), tr.serial), index.TreeBlob, index.Hash(root))
	id, err := up.Flush(rec)
	if err != nil {
		tr.t.Fatal(err)
	}
	return id
}

func (tr *toyRepo) forget(ids ...index.ID) {
	tr.t.Helper()
	if n, err := tr.r.idx.RemoveSnapshotRecords(ids); err != nil || n != len(ids) {
		tr.t.Fatalf("removed %d records: %v", n, err)
	}
}

// reopen closes and opens the repository again, as the next process would.
func (tr *toyRepo) reopen() {
	tr.t.Helper()
	tr.r.Close()
	tr.open(tr.r.Dir())
}

// check runs check --read-data and fails on any problem, or on one that is
// not harmless when harmless is true.
func (tr *toyRepo) check(harmless bool) {
	tr.t.Helper()
	err := tr.r.Check(context.Background(), CheckOptions{ReadData: true}, func(p Problem) {
		if !harmless || !p.Harmless {
			tr.t.Errorf("check: %v (harmless %v)", p, p.Harmless)
		}
	})
	if err != nil {
		tr.t.Fatal(err)
	}
}

// verify loads every blob that the snapshots in the index reach and
// compares data blobs with what was saved.
func (tr *toyRepo) verify() {
	tr.t.Helper()
	var trees []index.ID
	n := 0
	visit := func(id index.ID, t index.BlobType) {
		if t == index.TreeBlob {
			trees = append(trees, id)
			return
		}
		got, err := tr.r.LoadBlob(id, nil)
		if err != nil || !bytes.Equal(got, tr.blobs[id]) {
			tr.t.Fatalf("data blob %s: %v", id.Short(), err)
		}
		n++
	}
	err := tr.r.idx.ForEachSnapshot(func(id index.ID, rec []byte) error {
		if _, err := tr.r.LoadBlob(id, nil); err != nil {
			return err
		}
		return toyLinks(index.SnapshotBlob, rec, visit)
	})
	if err != nil {
		tr.t.Fatal(err)
	}
	for len(trees) > 0 {
		id := trees[len(trees)-1]
		trees = trees[:len(trees)-1]
		data, err := tr.r.LoadBlob(id, nil)
		if err != nil {
			tr.t.Fatalf("tree %s: %v", id.Short(), err)
		}
		if err := toyLinks(index.TreeBlob, data, visit); err != nil {
			tr.t.Fatal(err)
		}
	}
	if n == 0 {
		tr.t.Fatal("no data blob reached")
	}
}

func (tr *toyRepo) prune(opts PruneOptions) PruneStats {
	tr.t.Helper()
	opts.Links = toyLinks
	st, err := tr.r.Prune(context.Background(), opts)
	if err != nil {
		tr.t.Fatalf("prune: %v", err)
	}
	return st
}

// packBytes returns the total size of the pack files and their number.
func packBytes(t *testing.T, dir string) (int64, int) {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "packs", "[0-9a-f][0-9a-f]", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, name := range names {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	return total, len(names)
}

// garbageRepo makes four snapshots: x (blobs of its own), a, b sharing a's
// first 60 blobs, c sharing some of a's and b's; then forgets x and a, and
// leaves an unindexed pack file behind.
func garbageRepo(t *testing.T) (tr *toyRepo, forgotten []index.ID, only []index.ID) {
	tr = newToyRepo(t)
	var a, b, c, x []index.ID
	for i := range 60 {
		x = append(x, tr.blob(1000+i))
	}
	for i := range 120 {
		a = append(a, tr.blob(i))
	}
	for i := range 40 {
		b = append(b, tr.blob(200+i))
	}
	for i := range 20 {
		c = append(c, tr.blob(300+i))
	}
	for i := 60; i < 120; i += 4 {
		c = append(c, a[i])
	}
	c = append(c, b[:30]...)
	sx := tr.snapshot([][]index.ID{x[:30], x[30:]})
	sa := tr.snapshot([][]index.ID{a[:60], a[60:]})
	tr.snapshot([][]index.ID{a[:60], b})
	tr.snapshot([][]index.ID{c})
	tr.forget(sx, sa)
	for i := 60; i < 120; i++ {
		if i%4 != 0 {
			only = append(only, a[i])
		}
	}
	only = append(only, x...)
	// A pack sealed by a writer killed before its index transaction.
	junk := []byte("a pack nobody indexed")
	name := packPath(tr.r.Dir(), index.Hash(junk))
	os.MkdirAll(filepath.Dir(name), 0o700)
	if err := os.WriteFile(name, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	return tr, []index.ID{sx, sa}, only
}

// TestPrune: after two of four snapshots are forgotten, prune deletes the
// packs only they used, repacks those mostly theirs, removes the
// unindexed file; check --read-data finds nothing, every blob the others
// reach loads, the bytes it reports freed are the bytes gone, and a rebuilt
// index does not bring the forgotten snapshots back.
func TestPrune(t *testing.T) {
	tr, forgotten, only := garbageRepo(t)
	tr.check(true)
	before, packsBefore := packBytes(t, tr.r.Dir())

	dry := tr.prune(PruneOptions{MaxUnused: DefaultMaxUnused, DryRun: true})
	if b, n := packBytes(t, tr.r.Dir()); b != before || n != packsBefore {
		t.Fatalf("dry run changed the packs: %d bytes in %d, was %d in %d", b, n, before, packsBefore)
	}
	st := tr.prune(PruneOptions{MaxUnused: DefaultMaxUnused})
	t.Logf("dry run %+v\nprune   %+v", dry, st)
	after, packsAfter := packBytes(t, tr.r.Dir())
	if st.Snapshots != 2 || st.PacksDeleted < 3 || st.PacksRepacked < 2 || st.PacksUnindexed != 1 || st.PacksWritten < 1 ||
		st.BlobsRemoved < len(only) || st.BytesFreed <= 0 {
		t.Fatalf("stats %+v", st)
	}
	if before-after != st.BytesFreed || packsBefore-packsAfter != st.PacksDeleted+st.PacksRepacked+st.PacksUnindexed-st.PacksWritten {
		t.Fatalf("pack files went from %d bytes in %d to %d in %d; prune says %+v", before, packsBefore, after, packsAfter, st)
	}
	if d := dry; d.PacksDeleted != st.PacksDeleted || d.PacksRepacked != st.PacksRepacked || d.BlobsRemoved != st.BlobsRemoved ||
		d.BlobsRepacked != st.BlobsRepacked || d.BytesRepacked != st.BytesRepacked || d.BytesFreed < st.BytesFreed {
		t.Errorf("the dry run planned %+v", d)
	}
	tr.check(false)
	tr.verify()
	for _, id := range append(only, forgotten...) {
		if ok, _ := tr.r.idx.Has(id); ok {
			t.Errorf("blob %s of forgotten snapshots only is still indexed", id.Short())
		}
	}

	// Nothing left to do.
	if again := tr.prune(PruneOptions{MaxUnused: DefaultMaxUnused}); again.PacksDeleted+again.PacksRepacked+again.PacksUnindexed != 0 || again.BytesFreed != 0 {
		t.Fatalf("second prune: %+v", again)
	}

	// The forgotten records are in no pack any more.
	var snaps []index.ID
	_, err := tr.r.RebuildIndex(context.Background(), func(_ *index.DB, _ func(index.ID) ([]byte, error), id index.ID, _ []byte) error {
		snaps = append(snaps, id)
		return nil
	}, func(p Problem) { t.Errorf("rebuild: %v", p) })
	if err != nil || len(snaps) != 2 {
		t.Fatalf("rebuilt index has snapshots %v: %v", snaps, err)
	}
	tr.verify()
}

// TestPruneStopped stops a prune at each point between its steps, as a
// crash would: the repository passes check (leftover files are harmless
// notes), every snapshot still reads, and the next prune finishes the job.
func TestPruneStopped(t *testing.T) {
	for _, at := range []string{"unindexed", "deleted-committed", "deleted", "written", "repacked-committed"} {
		t.Run(at, func(t *testing.T) {
			tr, _, _ := garbageRepo(t)
			if _, err := tr.r.Prune(context.Background(), PruneOptions{MaxUnused: DefaultMaxUnused, Links: toyLinks, stopAt: at}); !errors.Is(err, errStopped) {
				t.Fatalf("prune stopped at %s: %v", at, err)
			}
			tr.reopen()
			tr.check(true)
			tr.verify()
			st := tr.prune(PruneOptions{MaxUnused: DefaultMaxUnused})
			t.Logf("then %+v", st)
			tr.check(false)
			tr.verify()
			if again := tr.prune(PruneOptions{MaxUnused: DefaultMaxUnused}); again.PacksDeleted+again.PacksRepacked+again.PacksUnindexed != 0 {
				t.Fatalf("a third prune still finds work: %+v", again)
			}
		})
	}
}

// TestPruneDuplicates: a blob stored in two packs. Indexed in a pack that
// is repacked, it moves to the new pack even though a kept pack holds a
// copy; indexed in a kept pack, it stays there when the pack holding its
// other copy is deleted.
func TestPruneDuplicates(t *testing.T) {
	tr := newToyRepo(t)
	var d, e, f, g []index.ID
	for i := range 45 {
		d = append(d, tr.blob(i))
		f = append(f, tr.blob(100+i))
	}
	for i := range 30 {
		e = append(e, tr.blob(200+i))
	}
	for i := range 4 {
		g = append(g, tr.blob(300+i))
	}
	s1 := tr.snapshot([][]index.ID{d})                              // pack O: d
	tr.snapshot([][]index.ID{append([]index.ID{d[0]}, e...)}, d[0]) // pack K: copy of d[0], e
	tr.snapshot([][]index.ID{f})                                    // pack P: f
	s4 := tr.snapshot([][]index.ID{g}, f[0])                        // pack Q: copy of f[0], g
	locD, _, _ := tr.r.idx.Lookup(d[0])
	locF, _, _ := tr.r.idx.Lookup(f[0])
	tr.forget(s1, s4)

	st := tr.prune(PruneOptions{MaxUnused: DefaultMaxUnused})
	t.Logf("%+v", st)
	tr.check(false)
	tr.verify()
	if loc, _, _ := tr.r.idx.Lookup(d[0]); loc.Pack == locD.Pack {
		t.Errorf("d[0] still in its old pack")
	} else if info, ok, _ := tr.r.idx.PackInfo(loc.Pack); !ok || info.Count != 1 {
		t.Errorf("d[0] moved to pack %s (%+v), not the one new pack of its own", loc.Pack.Short(), info)
	}
	if loc, _, _ := tr.r.idx.Lookup(f[0]); loc != locF {
		t.Errorf("f[0] moved from its kept pack to %+v", loc)
	}
	for _, id := range append(g, d[1:]...) {
		if ok, _ := tr.r.idx.Has(id); ok {
			t.Errorf("unused blob %s still indexed", id.Short())
		}
	}
}

// TestPruneRefuses: a snapshot that reaches a blob the index lacks, or a
// record that does not decode, stops prune before anything changes.
func TestPruneRefuses(t *testing.T) {
	tr, _, _ := garbageRepo(t)
	before, n := packBytes(t, tr.r.Dir())

	lost := sha256.Sum256([]byte("never stored"))
	tr.snapshot([][]index.ID{{tr.blob(500)}})
	up := tr.r.NewUploader()
	sub := toyRef([]byte("T"), index.DataBlob, lost)
	up.Save(context.Background(), index.TreeBlob, index.Hash(sub), sub)
	_, err := up.Flush(toyRef(binary.BigEndian.AppendUint64([]byte("S"), 99), index.TreeBlob, index.Hash(sub)))
	up.Close()
	if err != nil {
		t.Fatal(err)
	}
	before2, n2 := packBytes(t, tr.r.Dir())
	if _, err := tr.r.Prune(context.Background(), PruneOptions{MaxUnused: DefaultMaxUnused, Links: toyLinks}); !errors.Is(err, ErrPruneRefused) {
		t.Fatalf("prune with a lost blob: %v", err)
	}
	badLinks := func(t index.BlobType, raw []byte, fn func(index.ID, index.BlobType)) error {
		if t == index.SnapshotBlob && bytes.Contains(raw, lost[:]) {
			return errors.New("undecodable")
		}
		return toyLinks(t, raw, fn)
	}
	if _, err := tr.r.Prune(context.Background(), PruneOptions{MaxUnused: DefaultMaxUnused, Links: badLinks}); err == nil {
		t.Fatal("prune with an undecodable record succeeded")
	}
	if b, m := packBytes(t, tr.r.Dir()); b != before2 || m != n2 || b <= before || m <= n {
		t.Fatalf("a refused prune changed the packs: %d bytes in %d, was %d in %d", b, m, before2, n2)
	}
}
