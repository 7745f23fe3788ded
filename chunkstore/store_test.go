package chunkstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/understudy/understudy/index"
)

// testRepo creates a repository and opens it exclusively; at cleanup the
// index passes bbolt's own check.
func testRepo(t testing.TB) *Repo {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := Init(dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir, OpenOptions{Mode: Exclusive, What: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.idx.Check(); err != nil {
			t.Errorf("index check: %v", err)
		}
		r.Close()
	})
	return r
}

func randomBlob(rng *rand.Rand, n int, compressible bool) []byte {
	b := make([]byte, n)
	for i := range b {
		if compressible {
			b[i] = "abcdefgh"[rng.IntN(8)]
		} else {
			b[i] = byte(rng.Uint32())
		}
	}
	return b
}

func TestSaveLoad(t *testing.T) {
	r := testRepo(t)
	rng := rand.New(rand.NewPCG(1, 2))
	up := r.NewUploader()
	var blobs [][]byte
	for i := range 50 {
		b := randomBlob(rng, 1000+rng.IntN(200000), i%2 == 0)
		blobs = append(blobs, b)
		added, err := up.Save(context.Background(), index.DataBlob, index.Hash(b), b)
		if err != nil || !added {
			t.Fatalf("save %d: added=%v err=%v", i, added, err)
		}
	}
	// A second save of the same content is a no-op.
	if added, err := up.Save(context.Background(), index.DataBlob, index.Hash(blobs[0]), blobs[0]); err != nil || added {
		t.Fatalf("duplicate: added=%v err=%v", added, err)
	}
	rec := []byte(`{"snapshot":1}`)
	snapID, err := up.Flush(rec)
	if err != nil {
		t.Fatal(err)
	}
	up.Close()
	for i, b := range blobs {
		got, err := r.LoadBlob(index.Hash(b), nil)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("blob %d: %v", i, err)
		}
	}
	stored, ok, err := r.idx.SnapshotRecord(snapID)
	if err != nil || !ok || !bytes.Equal(stored, rec) {
		t.Fatalf("snapshot record: ok=%v err=%v", ok, err)
	}
	var problems []Problem
	if err := r.Check(context.Background(), CheckOptions{ReadData: true}, func(p Problem) { problems = append(problems, p) }); err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("fresh repository has problems: %v", problems)
	}
}

// TestManyPacks drives pack sealing while saving concurrently, and checks
// that a blob is only reported ready once it is in a pack.
func TestManyPacks(t *testing.T) {
	r := testRepo(t)
	up := r.NewUploader()
	defer up.Close()
	ctx := context.Background()
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range 40 {
				// Half the blobs are shared between workers to race claims.
				seed := uint64(i)
				if i%2 == 1 {
					seed = uint64(w*1000 + i)
				}
				b := randomBlob(rand.New(rand.NewPCG(seed, 9)), 400<<10+rng.IntN(1000), false)
				if _, err := up.Save(ctx, index.DataBlob, index.Hash(b), b); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := up.Flush(nil); err != nil {
		t.Fatal(err)
	}
	if up.PacksSealed.Load() < 3 {
		t.Fatalf("only %d packs sealed", up.PacksSealed.Load())
	}
	var problems []Problem
	if err := r.Check(ctx, CheckOptions{ReadData: true}, func(p Problem) { problems = append(problems, p) }); err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
}

func TestCheckFindsFlippedByte(t *testing.T) {
	r := testRepo(t)
	up := r.NewUploader()
	b := randomBlob(rand.New(rand.NewPCG(3, 4)), 50000, true)
	id := index.Hash(b)
	if _, err := up.Save(context.Background(), index.DataBlob, id, b); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Flush(nil); err != nil {
		t.Fatal(err)
	}
	up.Close()
	loc, _, _ := r.idx.Lookup(id)
	name := r.PackPath(loc.Pack)
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	data[loc.Offset+loc.Length/2] ^= 0x40
	os.Chmod(name, 0o600)
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r.packs.close()
	var problems []Problem
	if err := r.Check(context.Background(), CheckOptions{ReadData: true}, func(p Problem) { problems = append(problems, p) }); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range problems {
		if p.Blob == id && p.Pack == loc.Pack {
			found = true
		}
	}
	if !found {
		t.Fatalf("flipped byte not attributed to blob %s: %v", id.Short(), problems)
	}
	if _, err := r.LoadBlob(id, nil); err == nil {
		t.Fatal("corrupt blob loaded without error")
	}
}

func TestInitRefusesNonEmpty(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x"), nil, 0o600)
	if _, err := Init(dir, InitOptions{}); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("got %v", err)
	}
}

func TestLockNamesHolder(t *testing.T) {
	r := testRepo(t)
	_, err := Open(r.Dir(), OpenOptions{Mode: Exclusive, What: "second"})
	var le *LockedError
	if !errors.As(err, &le) {
		t.Fatalf("got %v", err)
	}
	if want := fmt.Sprintf("pid %d (test since", os.Getpid()); !bytes.Contains([]byte(le.Error()), []byte(want)) {
		t.Fatalf("message %q does not name the holder (%q)", le.Error(), want)
	}
}

func TestReadTrailerRejects(t *testing.T) {
	entries := []PackEntry{{ID: index.Hash([]byte("x")), Type: index.DataBlob, Compression: index.Raw, Length: 1, RawLength: 1}}
	good := append(packHeader(), 'x')
	good = appendTrailer(good, entries)
	if _, err := ReadTrailer(bytes.NewReader(good), int64(len(good))); err != nil {
		t.Fatalf("good pack: %v", err)
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 1
		if i == packHeaderSize { // the blob's own byte: the trailer cannot tell
			continue
		}
		if _, err := ReadTrailer(bytes.NewReader(bad), int64(len(bad))); err == nil {
			t.Errorf("flipped byte %d accepted", i)
		}
	}
}

func FuzzReadTrailer(f *testing.F) {
	entries := []PackEntry{
		{ID: index.Hash([]byte("x")), Type: index.DataBlob, Compression: index.Raw, Length: 1, RawLength: 1},
		{ID: index.Hash([]byte("y")), Type: index.TreeBlob, Compression: index.Zstd, Length: 2, RawLength: 9},
	}
	good := append(packHeader(), 'x', 1, 2)
	f.Add(appendTrailer(good, entries))
	f.Add(appendTrailer(packHeader(), nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		es, err := ReadTrailer(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		end := int64(packHeaderSize)
		for _, e := range es {
			if int64(e.Offset) != end || e.RawLength > MaxRaw(e.Type) {
				t.Fatalf("accepted bad entry %+v", e)
			}
			end += int64(e.Length)
		}
	})
}
