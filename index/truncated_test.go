package index

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTruncatedIndexIsAnError: an index.db cut short, at any of several
// lengths, is refused by Open, read-write and read-only, with an error that
// says so and names repair index, where bbolt alone would map the short
// file and die of SIGBUS reading a page past its end. Its full length opens.
func TestTruncatedIndexIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Enough blobs for a tree of many pages.
	for p := range 20 {
		pack := Hash([]byte(fmt.Sprint("pack", p)))
		var blobs []Blob
		for i := range 500 {
			blobs = append(blobs, Blob{ID: Hash([]byte(fmt.Sprint(p, i))), Location: Location{Pack: pack, Offset: uint32(i), Length: 1, RawLength: 1, Type: DataBlob}})
		}
		if err := db.AddPack(Pack{ID: pack, Type: DataBlob, Count: 500}, blobs, nil); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	pages, pageSize, ok := metaExtent(f)
	f.Close()
	need := int(pages * pageSize)
	t.Logf("index of %d bytes, %d pages of %d in use", len(whole), pages, pageSize)
	if !ok || pages < 8 || need > len(whole) {
		t.Fatalf("meta pages read as %d pages of %d (valid %v) in a file of %d bytes", pages, pageSize, ok, len(whole))
	}
	for _, n := range []int{need / 3, need / 2, need - int(pageSize), 3 * int(pageSize)} {
		if err := os.WriteFile(path, whole[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		for _, ro := range []bool{false, true} {
			db, err := Open(path, Options{ReadOnly: ro})
			if err == nil {
				db.Close()
				t.Fatalf("cut to %d bytes, read-only %v: opened", n, ro)
			}
			if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "repair index") {
				t.Fatalf("cut to %d bytes: %v", n, err)
			}
		}
	}
	if err := os.WriteFile(path, whole[:need], 0o600); err != nil { // no more is needed
		t.Fatal(err)
	}
	db, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("the whole file: %v", err)
	}
	defer db.Close()
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}
