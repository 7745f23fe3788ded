package index

import (
	"bytes"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func openTemp(t *testing.T) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "index.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestAddPackLookup(t *testing.T) {
	db := openTemp(t)
	pack := Hash([]byte("pack"))
	var blobs []Blob
	for i := range 100 {
		id := Hash([]byte{byte(i)})
		blobs = append(blobs, Blob{ID: id, Location: Location{Pack: pack, Offset: uint32(8 + i*10), Length: 10, RawLength: 20, Type: DataBlob, Compression: Zstd}})
	}
	snap := Snapshot{ID: Hash([]byte("rec")), Record: []byte("rec")}
	if err := db.AddPack(Pack{ID: pack, Type: DataBlob, Size: 1008, Count: 100}, blobs, []Snapshot{snap}); err != nil {
		t.Fatal(err)
	}
	for _, b := range blobs {
		loc, ok, err := db.Lookup(b.ID)
		if err != nil || !ok || loc != b.Location {
			t.Fatalf("lookup %s: %+v %v %v", b.ID.Short(), loc, ok, err)
		}
	}
	if ok, _ := db.Has(Hash([]byte("absent"))); ok {
		t.Fatal("absent blob found")
	}
	p, ok, err := db.PackInfo(pack)
	if err != nil || !ok || p.Count != 100 || p.Size != 1008 || p.Type != DataBlob {
		t.Fatalf("pack info %+v %v %v", p, ok, err)
	}
	rec, ok, err := db.SnapshotRecord(snap.ID)
	if err != nil || !ok || !bytes.Equal(rec, snap.Record) {
		t.Fatalf("snapshot %q %v %v", rec, ok, err)
	}
	ids, err := db.SnapshotsWithPrefix(snap.ID.String()[:6])
	if err != nil || len(ids) != 1 || ids[0] != snap.ID {
		t.Fatalf("prefix: %v %v", ids, err)
	}
	// A blob claiming another pack is refused, and the transaction with it.
	other := Blob{ID: Hash([]byte("x")), Location: Location{Pack: Hash([]byte("elsewhere")), Length: 1, RawLength: 1, Type: DataBlob}}
	if err := db.AddPack(Pack{ID: Hash([]byte("p2")), Type: DataBlob}, []Blob{other}, nil); err == nil {
		t.Fatal("mismatched pack accepted")
	}
	if _, ok, _ := db.PackInfo(Hash([]byte("p2"))); ok {
		t.Fatal("a failed AddPack left its pack indexed")
	}
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}

// A damaged index (a value of the wrong size, a key that is no ID) gives
// errors, not panics or wrong locations.
func TestDamagedIndexIsAnError(t *testing.T) {
	db := openTemp(t)
	id := Hash([]byte("b"))
	err := db.Bolt().Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketBlobs).Put(id[:], []byte("short")); err != nil {
			return err
		}
		return tx.Bucket(bucketPacks).Put([]byte("short key"), make([]byte, packInfoSize))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.Lookup(id); err == nil {
		t.Error("short location decoded")
	}
	if err := db.ForEachPack(func(Pack) error { return nil }); err == nil {
		t.Error("short pack key accepted")
	}
	db.Close()
	// Another format version is refused at open.
	path := db.Path()
	b, _ := bolt.Open(path, 0o600, nil)
	b.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyFormat, []byte{0, 0, 0, 9}) })
	b.Close()
	if _, err := Open(path, Options{}); err == nil {
		t.Error("format 9 opened")
	}
}

func TestParseID(t *testing.T) {
	id := Hash([]byte("x"))
	got, err := ParseID(id.String())
	if err != nil || got != id {
		t.Fatal(got, err)
	}
	for _, bad := range []string{"", "zz", id.String()[:63], id.String() + "00"} {
		if _, err := ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) accepted", bad)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add(Location{Pack: Hash(nil), Offset: 8, Length: 10, RawLength: 30, Type: TreeBlob, Compression: Zstd}.marshal())
	f.Add(make([]byte, packInfoSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		if l, err := unmarshalLocation(b); err == nil {
			if !bytes.Equal(l.marshal(), b) || !l.Type.Valid() {
				t.Fatalf("location %+v does not round-trip %x", l, b)
			}
		}
		if p, err := unmarshalPack(ID{}, b); err == nil && len(b) != packInfoSize {
			t.Fatalf("pack %+v from %d bytes", p, len(b))
		}
		ParseID(string(b))
	})
}
