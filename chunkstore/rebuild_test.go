package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy/understudy/index"
)

// snapshotIndex returns every blob location and snapshot record of an index.
func snapshotIndex(t *testing.T, idx *index.DB) (map[index.ID]index.Location, map[index.ID][]byte) {
	t.Helper()
	blobs := make(map[index.ID]index.Location)
	if err := idx.ForEachBlob(func(b index.Blob) error { blobs[b.ID] = b.Location; return nil }); err != nil {
		t.Fatal(err)
	}
	snaps := make(map[index.ID][]byte)
	if err := idx.ForEachSnapshot(func(id index.ID, rec []byte) error { snaps[id] = bytes.Clone(rec); return nil }); err != nil {
		t.Fatal(err)
	}
	return blobs, snaps
}

// The index is rebuilt from the packs alone, identical to the one written
// along with them; a pack that does not hash to its name is left out, and so
// is a snapshot that keep rejects.
func TestRebuildIndexFromPacks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir, OpenOptions{Mode: Exclusive})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	ctx := context.Background()
	up := r.NewUploader()
	for i := range 120 {
		b := randomBlob(rng, 100<<10+rng.IntN(200<<10), i%3 == 0)
		if _, err := up.Save(ctx, index.DataBlob, index.Hash(b), b); err != nil {
			t.Fatal(err)
		}
	}
	tree := []byte("a tree blob")
	if _, err := up.Save(ctx, index.TreeBlob, index.Hash(tree), tree); err != nil {
		t.Fatal(err)
	}
	snapID, err := up.Flush([]byte(`{"a":"record"}`))
	if err != nil {
		t.Fatal(err)
	}
	up.Close()
	if up.PacksSealed.Load() < 3 {
		t.Fatalf("only %d packs", up.PacksSealed.Load())
	}
	wantBlobs, wantSnaps := snapshotIndex(t, r.idx)

	// Destroy the index, then rebuild it with the index never opened.
	r.Close()
	if err := os.WriteFile(filepath.Join(dir, "index.db"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, OpenOptions{Mode: Exclusive}); err == nil {
		t.Fatal("a garbage index opened")
	}
	r2, err := Open(dir, OpenOptions{Mode: Exclusive, NoIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	var kept []index.ID
	keepAll := func(_ *index.DB, load func(index.ID) ([]byte, error), id index.ID, rec []byte) error {
		if got, err := load(index.Hash(tree)); err != nil || !bytes.Equal(got, tree) {
			t.Errorf("load through the new index: %q %v", got, err)
		}
		kept = append(kept, id)
		return nil
	}
	var problems []Problem
	st, err := r2.RebuildIndex(ctx, keepAll, func(p Problem) { problems = append(problems, p) })
	// The one problem: the garbage index's standby state is lost.
	if err != nil || len(problems) != 1 || !strings.Contains(problems[0].Error(), "promote those sets again") {
		t.Fatalf("rebuild: %v %v", err, problems)
	}
	gotBlobs, gotSnaps := snapshotIndex(t, r2.Index())
	if len(gotBlobs) != len(wantBlobs) || st.Blobs != len(wantBlobs) || len(kept) != 1 || kept[0] != snapID {
		t.Fatalf("rebuilt %d blobs (stats %+v), want %d; kept %v", len(gotBlobs), st, len(wantBlobs), kept)
	}
	for id, loc := range wantBlobs {
		if gotBlobs[id] != loc {
			t.Fatalf("blob %s: %+v, want %+v", id.Short(), gotBlobs[id], loc)
		}
	}
	if !bytes.Equal(gotSnaps[snapID], wantSnaps[snapID]) || len(gotSnaps) != 1 {
		t.Fatalf("snapshots: %v", gotSnaps)
	}
	var checkProblems []Problem
	if err := r2.Check(ctx, CheckOptions{ReadData: true}, func(p Problem) { checkProblems = append(checkProblems, p) }); err != nil || len(checkProblems) > 0 {
		t.Fatalf("check after rebuild: %v %v", err, checkProblems)
	}
	if _, err := os.Stat(filepath.Join(dir, "index.db.old")); err != nil {
		t.Errorf("old index not kept: %v", err)
	}

	// Corrupt one data pack and reject the snapshot: both are reported and
	// left out, everything else is indexed.
	var victim index.ID
	for _, loc := range wantBlobs {
		if loc.Type == index.DataBlob {
			victim = loc.Pack
			break
		}
	}
	name := r2.PackPath(victim)
	data, _ := os.ReadFile(name)
	data[len(data)/3] ^= 1
	os.WriteFile(name, data, 0o600)
	problems = nil
	reject := func(*index.DB, func(index.ID) ([]byte, error), index.ID, []byte) error {
		return errors.New("not closed")
	}
	st, err = r2.RebuildIndex(ctx, reject, func(p Problem) { problems = append(problems, p) })
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped != 2 || len(problems) != 2 || problems[0].Pack != victim || problems[1].Blob != snapID {
		t.Fatalf("stats %+v, problems %v", st, problems)
	}
	gotBlobs, gotSnaps = snapshotIndex(t, r2.Index())
	for id, loc := range wantBlobs {
		if _, ok := gotBlobs[id]; ok == (loc.Pack == victim) {
			t.Fatalf("blob %s of pack %s indexed=%v", id.Short(), loc.Pack.Short(), ok)
		}
	}
	if len(gotSnaps) != 0 {
		t.Fatal("a rejected snapshot was indexed")
	}
}

// TestRebuildKeepsStandbyState: the promotions and last runs recorded in the
// index, which no pack holds, survive a rebuild from the packs.
func TestRebuildKeepsStandbyState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir, OpenOptions{Mode: Exclusive})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	at := time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC)
	if err := r.Index().UpdateStandby("os", func(st *index.StandbyState) error { st.Promoted = at; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := r.Index().UpdatePrimary("accounts", func(st *index.PrimaryState) error { st.LastRun = at; return nil }); err != nil {
		t.Fatal(err)
	}
	var problems []Problem
	if _, err := r.RebuildIndex(context.Background(), func(*index.DB, func(index.ID) ([]byte, error), index.ID, []byte) error { return nil },
		func(p Problem) { problems = append(problems, p) }); err != nil || len(problems) > 0 {
		t.Fatalf("rebuild: %v %v", err, problems)
	}
	st, err := r.Index().Standby("os")
	if err != nil || !st.Promoted.Equal(at) {
		t.Fatalf("after the rebuild: %+v %v, want promoted at %v", st, err, at)
	}
	if pst, err := r.Index().Primary("accounts"); err != nil || !pst.LastRun.Equal(at) {
		t.Fatalf("after the rebuild, the primary state: %+v %v, want last run at %v", pst, err, at)
	}
}
