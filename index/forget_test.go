package index

import (
	"errors"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func addTestSnapshots(t *testing.T, db *DB, names ...string) []ID {
	t.Helper()
	var snaps []Snapshot
	var ids []ID
	for _, n := range names {
		rec := []byte(`{"name":"` + n + `"}`)
		snaps = append(snaps, Snapshot{ID: Hash(rec), Record: rec})
		ids = append(ids, Hash(rec))
	}
	if err := db.AddSnapshots(snaps); err != nil {
		t.Fatal(err)
	}
	return ids
}

func indexedSnapshots(t *testing.T, db *DB) map[ID]bool {
	t.Helper()
	have := map[ID]bool{}
	if err := db.ForEachSnapshot(func(id ID, _ []byte) error { have[id] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	return have
}

func TestForgetSnapshots(t *testing.T) {
	db := openTestDB(t)
	pack := Hash([]byte("tree pack"))
	ids := addTestSnapshots(t, db, "a", "b", "c")
	// The records are blobs of a pack too; forgetting leaves those alone.
	var blobs []Blob
	for i, id := range ids {
		blobs = append(blobs, Blob{ID: id, Location: Location{Pack: pack, Offset: uint32(8 + 20*i), Length: 20, RawLength: 20, Type: SnapshotBlob}})
	}
	if err := db.AddPack(Pack{ID: pack, Type: TreeBlob, Size: 100, Count: 3}, blobs, nil); err != nil {
		t.Fatal(err)
	}

	if err := db.ForgetSnapshots([]ID{ids[0], ids[1], ids[0]}); err != nil {
		t.Fatal(err)
	}
	if have := indexedSnapshots(t, db); len(have) != 1 || !have[ids[2]] {
		t.Fatalf("after forgetting a and b: %v", have)
	}
	for _, id := range ids {
		if ok, err := db.Has(id); err != nil || !ok {
			t.Errorf("blob of snapshot %s: indexed %v, %v; forget must leave blobs to prune", id.Short(), ok, err)
		}
	}
	if err := db.ForgetSnapshots(nil); err != nil {
		t.Fatalf("forgetting nothing: %v", err)
	}

	// A stale list: nothing is forgotten, not even the snapshots that exist.
	err := db.ForgetSnapshots([]ID{ids[2], ids[0]})
	if !errors.Is(err, ErrUnknownSnapshot) {
		t.Fatalf("forgetting a snapshot already gone: %v, want ErrUnknownSnapshot", err)
	}
	if have := indexedSnapshots(t, db); !have[ids[2]] {
		t.Fatal("a failed forget removed a snapshot")
	}
}

func TestForgetSnapshotsRefusesWhatAStandbyUses(t *testing.T) {
	db := openTestDB(t)
	ids := addTestSnapshots(t, db, "old", "applied", "applying", "other set")
	err := db.UpdateStandby("os", func(st *StandbyState) error {
		st.Targets = map[string]*TargetState{
			"/":      {Applied: ids[1], Applying: []ID{ids[2]}},
			"/empty": {},
			"/nil":   nil,
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.UpdateStandby("accounts", func(st *StandbyState) error {
		st.Targets = map[string]*TargetState{"/": {Applied: ids[3]}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[1:] {
		err := db.ForgetSnapshots([]ID{ids[0], id})
		if !errors.Is(err, ErrSnapshotInUse) {
			t.Errorf("forgetting %s: %v, want ErrSnapshotInUse", id.Short(), err)
		}
	}
	if have := indexedSnapshots(t, db); len(have) != 4 {
		t.Fatalf("refused forgets removed snapshots: %d left", len(have))
	}
	if err := db.ForgetSnapshots([]ID{ids[0]}); err != nil {
		t.Fatal(err)
	}

	// Once the standby moves on, the snapshot may go.
	if err := db.UpdateStandby("os", func(st *StandbyState) error {
		st.Targets["/"] = &TargetState{Applied: ids[2]}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.ForgetSnapshots([]ID{ids[1]}); err != nil {
		t.Fatal(err)
	}
	if have := indexedSnapshots(t, db); len(have) != 2 || !have[ids[2]] || !have[ids[3]] {
		t.Fatalf("left: %v", have)
	}
}

// A standby state that does not decode refuses every forget: what it
// protects cannot be known.
func TestForgetSnapshotsDamagedStandbyState(t *testing.T) {
	db := openTestDB(t)
	ids := addTestSnapshots(t, db, "a")
	if err := db.UpdateStandby("os", func(*StandbyState) error { return nil }); err != nil {
		t.Fatal(err)
	}
	err := db.Bolt().Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketStandby).Put([]byte("os"), []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.ForgetSnapshots(ids); err == nil {
		t.Fatal("forget went ahead with a standby state it cannot read")
	}
	if have := indexedSnapshots(t, db); !have[ids[0]] {
		t.Fatal("the snapshot was forgotten")
	}
}
