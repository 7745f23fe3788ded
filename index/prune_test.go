package index

import (
	"errors"
	"fmt"
	"testing"
)

// testPack indexes a pack of n blobs named prefix-0 … prefix-(n-1).
func testPack(t *testing.T, db *DB, prefix string, n int) (Pack, []Blob) {
	t.Helper()
	p := Pack{ID: Hash([]byte("pack " + prefix)), Type: DataBlob, Size: uint64(24 + 52*n), Count: uint32(n)}
	var blobs []Blob
	for i := range n {
		blobs = append(blobs, Blob{ID: Hash(fmt.Appendf(nil, "%s-%d", prefix, i)),
			Location: Location{Pack: p.ID, Offset: uint32(8 + 10*i), Length: 10, RawLength: 10, Type: DataBlob}})
	}
	if err := db.AddPack(p, blobs, nil); err != nil {
		t.Fatal(err)
	}
	return p, blobs
}

func TestDropPacks(t *testing.T) {
	db := openTemp(t)
	old, oldBlobs := testPack(t, db, "old", 4)
	kept, keptBlobs := testPack(t, db, "kept", 2)
	// The new pack holds copies of old-0 and old-1; AddPack leaves them
	// indexed in the old pack.
	newPack := Pack{ID: Hash([]byte("pack new")), Type: DataBlob, Size: 44, Count: 2}
	var copies []Blob
	for i, b := range oldBlobs[:2] {
		copies = append(copies, Blob{ID: b.ID, Location: Location{Pack: newPack.ID, Offset: uint32(8 + 10*i), Length: 10, RawLength: 10, Type: DataBlob}})
	}
	if err := db.AddPack(newPack, copies, nil); err != nil {
		t.Fatal(err)
	}
	if loc, _, _ := db.Lookup(oldBlobs[0].ID); loc.Pack != old.ID {
		t.Fatalf("AddPack moved an indexed blob to %s", loc.Pack.Short())
	}

	// Plans that do not match the index change nothing.
	bad := []struct {
		name          string
		drop, removed []ID
		moved         []Blob
	}{
		{"a blob of a kept pack removed", []ID{old.ID}, []ID{keptBlobs[0].ID}, nil},
		{"a blob moved into a dropped pack", []ID{old.ID, newPack.ID}, nil, copies[:1]},
		{"a blob moved into an unknown pack", []ID{old.ID}, nil, []Blob{{ID: oldBlobs[0].ID, Location: Location{Pack: Hash([]byte("nowhere")), Length: 1, RawLength: 1, Type: DataBlob}}}},
		{"an unindexed blob removed", []ID{old.ID}, []ID{Hash([]byte("absent"))}, nil},
		{"a blob both moved and removed", []ID{old.ID}, []ID{oldBlobs[0].ID}, copies[:1]},
	}
	for _, c := range bad {
		if _, err := db.DropPacks(c.drop, c.removed, c.moved); !errors.Is(err, ErrDropPlan) {
			t.Errorf("%s: %v, want ErrDropPlan", c.name, err)
		}
		if _, ok, _ := db.PackInfo(old.ID); !ok {
			t.Fatalf("%s: the old pack was dropped by a failed plan", c.name)
		}
		if loc, _, _ := db.Lookup(oldBlobs[0].ID); loc.Pack != old.ID {
			t.Fatalf("%s: a blob moved by a failed plan", c.name)
		}
	}

	st, err := db.DropPacks([]ID{old.ID}, []ID{oldBlobs[2].ID, oldBlobs[3].ID}, copies)
	if err != nil || st != (DropStats{Packs: 1, Removed: 2, Moved: 2}) {
		t.Fatalf("drop: %+v %v", st, err)
	}
	if _, ok, _ := db.PackInfo(old.ID); ok {
		t.Fatal("the old pack is still indexed")
	}
	for i, b := range copies {
		if loc, ok, _ := db.Lookup(b.ID); !ok || loc != b.Location {
			t.Fatalf("copy %d: %+v %v", i, loc, ok)
		}
	}
	for _, b := range oldBlobs[2:] {
		if ok, _ := db.Has(b.ID); ok {
			t.Fatalf("removed blob %s is indexed", b.ID.Short())
		}
	}
	for _, b := range keptBlobs {
		if loc, ok, _ := db.Lookup(b.ID); !ok || loc.Pack != kept.ID {
			t.Fatalf("kept blob %s: %+v %v", b.ID.Short(), loc, ok)
		}
	}
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveSnapshotRecords(t *testing.T) {
	db := openTemp(t)
	a, b := Snapshot{ID: Hash([]byte("a")), Record: []byte("a")}, Snapshot{ID: Hash([]byte("b")), Record: []byte("b")}
	if err := db.AddSnapshots([]Snapshot{a, b}); err != nil {
		t.Fatal(err)
	}
	n, err := db.RemoveSnapshotRecords([]ID{a.ID, Hash([]byte("absent"))})
	if err != nil || n != 1 {
		t.Fatalf("removed %d, %v", n, err)
	}
	if _, ok, _ := db.SnapshotRecord(a.ID); ok {
		t.Fatal("a is still there")
	}
	if _, ok, _ := db.SnapshotRecord(b.ID); !ok {
		t.Fatal("b is gone")
	}
}
