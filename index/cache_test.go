package index

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
)

func openTestDB(t *testing.T) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "index.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Check(); err != nil {
			t.Error(err)
		}
		db.Close()
	})
	return db
}

func get(t *testing.T, c *Cache, key string) []byte {
	t.Helper()
	v, err := c.Get([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Records of an attempt are valid only once it commits: an attempt that
// crashes leaves records that no later attempt uses, even after a later
// attempt commits without rewriting them.
func TestCacheStamps(t *testing.T) {
	db := openTestDB(t)
	c1, err := db.OpenCache("os")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := c1.Previous(); ok {
		t.Fatal("a new cache has a previous snapshot")
	}
	if err := c1.Put([]CacheRecord{{Key: []byte("/a"), Value: []byte("one")}, {Key: []byte("/b"), Value: []byte("bee")}}); err != nil {
		t.Fatal(err)
	}
	if v := get(t, c1, "/a"); v != nil {
		t.Fatalf("uncommitted record visible: %q", v)
	}
	snap := Hash([]byte("snapshot 1"))
	if err := c1.Commit(snap, []byte("meta"), func([]byte) bool { return true }); err != nil {
		t.Fatal(err)
	}

	// Attempt 2 rewrites /a and crashes.
	c2, _ := db.OpenCache("os")
	if err := c2.Put([]CacheRecord{{Key: []byte("/a"), Value: []byte("torn")}}); err != nil {
		t.Fatal(err)
	}
	// Attempt 3 sees the committed state, not /a of attempt 2.
	c3, _ := db.OpenCache("os")
	if s, meta, ok := c3.Previous(); !ok || s != snap || !bytes.Equal(meta, []byte("meta")) {
		t.Fatalf("previous: %v %q %v", s, meta, ok)
	}
	if v := get(t, c3, "/a"); v != nil {
		t.Fatalf("record of a crashed attempt used: %q", v)
	}
	if v := get(t, c3, "/b"); string(v) != "bee" {
		t.Fatalf("/b: %q", v)
	}
	// Attempt 3 keeps /b only and commits: the torn /a is deleted, so it
	// cannot become valid under the new committed number.
	if err := c3.Commit(Hash([]byte("snapshot 3")), nil, func(k []byte) bool { return string(k) == "/b" }); err != nil {
		t.Fatal(err)
	}
	c4, _ := db.OpenCache("os")
	if v := get(t, c4, "/a"); v != nil {
		t.Fatalf("torn record came back: %q", v)
	}
	if v := get(t, c4, "/b"); string(v) != "bee" {
		t.Fatalf("/b: %q", v)
	}
	// Sets are separate.
	other, _ := db.OpenCache("accounts")
	if v := get(t, other, "/b"); v != nil {
		t.Fatalf("record of another set: %q", v)
	}
}

// Commit finds the records to delete in batches: more records than a batch,
// every other one kept.
func TestCacheCommitDropsAcrossBatches(t *testing.T) {
	db := openTestDB(t)
	c, _ := db.OpenCache("big")
	var recs []CacheRecord
	for i := range 10000 {
		recs = append(recs, CacheRecord{Key: fmt.Appendf(nil, "/d%05d", i), Value: []byte{byte(i)}})
	}
	if err := c.Put(recs); err != nil {
		t.Fatal(err)
	}
	even := func(k []byte) bool { return (k[len(k)-1]-'0')%2 == 0 }
	if err := c.Commit(Hash([]byte("s")), nil, even); err != nil {
		t.Fatal(err)
	}
	c2, _ := db.OpenCache("big")
	for i, r := range recs {
		v := get(t, c2, string(r.Key))
		if (v != nil) != (i%2 == 0) {
			t.Fatalf("%s: record %q after commit", r.Key, v)
		}
	}
}
