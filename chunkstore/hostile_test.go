package chunkstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/understudy/understudy/index"
)

// allocated returns the bytes the heap gave out while f ran.
func allocated(f func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// zstdBomb returns a zstd frame of RLE blocks that decodes to total zero
// bytes: 4 bytes per 128 KiB, so 1 GiB takes 32 KiB. fcs is the content
// size the frame header declares, -1 for none. windowLog is the window the
// frame asks for (17: 128 KiB, the block size).
func zstdBomb(total, fcs int64, windowLog int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd} // magic
	wd := byte(windowLog-10) << 3       // exponent, mantissa 0
	if fcs < 0 {
		b = append(b, 0x00, wd)
	} else {
		b = append(b, 0xc0, wd) // an 8-byte content size
		b = binary.LittleEndian.AppendUint64(b, uint64(fcs))
	}
	const block = 128 << 10
	for left := total; left > 0; {
		n := min(left, block)
		left -= n
		hdr := uint32(n)<<3 | 1<<1 // RLE block of n bytes
		if left == 0 {
			hdr |= 1 // last block
		}
		b = append(b, byte(hdr), byte(hdr>>8), byte(hdr>>16), 0)
	}
	return b
}

// decodedSize streams frame through a decoder without limits and counts
// what it gives, in small buffers: the proof that a bomb is one.
func decodedSize(t *testing.T, frame []byte) int64 {
	t.Helper()
	d, err := zstd.NewReader(bytes.NewReader(frame), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	n, err := io.Copy(io.Discard, d)
	if err != nil {
		t.Fatalf("the bomb does not decode: %v", err)
	}
	return n
}

// sparsePack is a pack file of any size, zero but for its first and last
// bytes, read through ReaderAt without being in memory.
type sparsePack struct {
	size       int64
	head, tail []byte
}

func (p *sparsePack) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 || off >= p.size {
		return 0, io.EOF
	}
	n := len(b)
	if int64(n) > p.size-off {
		n = int(p.size - off)
	}
	clear(b[:n])
	if off < int64(len(p.head)) {
		copy(b[:n], p.head[off:])
	}
	tailAt := p.size - int64(len(p.tail))
	for i := range n {
		if at := off + int64(i); at >= tailAt {
			b[i] = p.tail[at-tailAt]
		}
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// footer returns a pack footer declaring count entries with the given CRC.
func footer(count, crc uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, count)
	b = binary.BigEndian.AppendUint32(b, crc)
	return append(append(b, packFooterMagic...), packVersion)
}

// TestReadTrailerHugeDeclarations: a pack whose size, entry count or entry
// lengths are far beyond what it holds is refused as corrupt before the
// reader allocates for what it declares.
func TestReadTrailerHugeDeclarations(t *testing.T) {
	blob := []byte("blob")
	one := PackEntry{ID: index.Hash(blob), Type: index.DataBlob, Compression: index.Raw, Length: 4, RawLength: 4}
	withEntries := func(entries ...PackEntry) []byte {
		return appendTrailer(append(packHeader(), blob...), entries)
	}
	small := func(b []byte) *sparsePack { return &sparsePack{size: int64(len(b)), head: b} }
	huge := one
	huge.Length, huge.RawLength = 1<<32-1, 1<<32-1
	bomb := PackEntry{ID: one.ID, Type: index.DataBlob, Compression: index.Zstd, Length: 4, RawLength: 1<<32 - 1}
	past := PackEntry{ID: one.ID, Type: index.DataBlob, Compression: index.Zstd, Length: MaxDataBlob, RawLength: MaxDataBlob}
	for _, tc := range []struct {
		name string
		pack *sparsePack
		want string
	}{
		{"size 2^40", &sparsePack{size: 1 << 40, head: packHeader(), tail: footer(1, 0)}, "exceeds"},
		{"size 2^63-1", &sparsePack{size: 1<<63 - 1, head: packHeader(), tail: footer(1, 0)}, "exceeds"},
		{"count 2^32-1 in a small pack", small(append(packHeader(), footer(1<<32-1, 0)...)), "do not fit"},
		{"count 2^32-1 in a 1 GiB pack", &sparsePack{size: MaxPackSize, head: packHeader(), tail: footer(1<<32-1, 0)}, "do not fit"},
		{"entry of 4 GiB", small(withEntries(huge)), "exceeds"},
		{"4 bytes claiming 4 GiB", small(withEntries(bomb)), "exceeds"},
		{"entries past the end", small(withEntries(one, past, past)), "runs past"},
		{"count one more than written", small(append(withEntries(one)[:len(withEntries(one))-packFooterSize], footer(2, 0)...)), "fit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			n := allocated(func() { _, err = ReadTrailer(tc.pack, tc.pack.size) })
			if !errors.Is(err, ErrPackCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a corrupt pack error (%q)", err, tc.want)
			}
			if n > 64<<10 {
				t.Errorf("refusing a pack of %d bytes allocated %d bytes", tc.pack.size, n)
			}
		})
	}
}

// TestLoadRefusesDecompressionBombs stores blobs whose zstd frames decode
// to far more than their declared raw length, or than MaxTreeBlob (1 GiB
// of zeros in 32 KiB), or ask for a 2 GiB window: loading, verifying and
// checking them fails, and memory stays near the declared raw length.
func TestLoadRefusesDecompressionBombs(t *testing.T) {
	const gib = 1 << 30
	for _, tc := range []struct {
		name   string
		typ    index.BlobType
		raw    uint32
		frame  []byte
		decode int64 // what the frame decodes to without limits; 0: not checked
	}{
		{"data, no content size", index.DataBlob, 64 << 10, zstdBomb(gib, -1, 17), gib},
		{"data, content size 1 GiB", index.DataBlob, 64 << 10, zstdBomb(gib, gib, 17), gib},
		{"data, content size lies", index.DataBlob, 64 << 10, zstdBomb(gib, 64<<10, 17), 0},
		{"data, 2 GiB window", index.DataBlob, 64 << 10, zstdBomb(64<<10, -1, 31), 0},
		{"tree beyond MaxTreeBlob", index.TreeBlob, 1 << 20, zstdBomb(gib, -1, 17), gib},
		{"tree, content size 1 GiB", index.TreeBlob, 1 << 20, zstdBomb(gib, gib, 17), gib},
		{"snapshot record", index.SnapshotBlob, 64 << 10, zstdBomb(gib, -1, 17), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.decode > 0 {
				if n := decodedSize(t, tc.frame); n != tc.decode {
					t.Fatalf("the bomb decodes to %d bytes, want %d", n, tc.decode)
				}
			}
			r := testRepo(t)
			id := index.Hash(make([]byte, tc.raw))
			sb := StoredBlob{ID: id, Type: tc.typ, Compression: index.Zstd, RawLength: tc.raw, Data: tc.frame}
			if tc.typ == index.SnapshotBlob {
				plantPack(t, r, sb)
			} else {
				up := r.NewUploader()
				if _, err := up.SaveStored(context.Background(), sb); err != nil {
					t.Fatal(err)
				}
				if _, err := up.Flush(nil); err != nil {
					t.Fatal(err)
				}
				up.Close()
			}
			limit := uint64(tc.raw)*3 + 1<<20
			var err error
			if n := allocated(func() { _, err = r.LoadBlob(id, nil) }); n > limit {
				t.Errorf("LoadBlob allocated %d bytes for a blob of %d", n, tc.raw)
			}
			if err == nil {
				t.Fatal("the bomb loaded")
			}
			t.Logf("load: %v", err)
			loc, _, _ := r.idx.Lookup(id)
			stored, err := r.ReadStored(id, loc, nil)
			if err != nil {
				t.Fatal(err)
			}
			if n := allocated(func() { _, err = r.VerifyStored(stored, nil) }); n > limit {
				t.Errorf("VerifyStored allocated %d bytes for a blob of %d", n, tc.raw)
			}
			if err == nil {
				t.Fatal("the bomb verified")
			}
			var found bool
			n := allocated(func() {
				err = r.Check(context.Background(), CheckOptions{ReadData: true}, func(p Problem) { found = found || p.Blob == id })
			})
			if err != nil || !found {
				t.Errorf("check --read-data: %v, bomb reported: %v", err, found)
			}
			if n > limit+4<<20 {
				t.Errorf("check --read-data allocated %d bytes", n)
			}
		})
	}
}

// plantPack writes a pack holding sb, as a hostile or damaged repository
// could, and indexes it.
func plantPack(t *testing.T, r *Repo, sb StoredBlob) index.ID {
	t.Helper()
	e := PackEntry{ID: sb.ID, Type: sb.Type, Compression: sb.Compression, Offset: packHeaderSize, Length: uint32(len(sb.Data)), RawLength: sb.RawLength}
	pack := appendTrailer(append(packHeader(), sb.Data...), []PackEntry{e})
	id := index.ID(sha256.Sum256(pack))
	name := r.PackPath(id)
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, pack, 0o400); err != nil {
		t.Fatal(err)
	}
	p := index.Pack{ID: id, Type: index.TreeBlob, Size: uint64(len(pack)), Count: 1}
	if err := r.idx.AddPack(p, []index.Blob{{ID: sb.ID, Location: e.Location(id)}}, nil); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestRebuildIndexSkipsHostilePacks: repair index over planted packs, one
// whose trailer declares 2^32-1 entries and one whose snapshot record is
// a decompression bomb, reports both and leaves them out without large
// allocations; the repository's own blobs are indexed again.
func TestRebuildIndexSkipsHostilePacks(t *testing.T) {
	r := testRepo(t)
	good := []byte("a good blob")
	up := r.NewUploader()
	if _, err := up.Save(context.Background(), index.DataBlob, index.Hash(good), good); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Flush(nil); err != nil {
		t.Fatal(err)
	}
	up.Close()

	plant := func(pack []byte) index.ID {
		id := index.ID(sha256.Sum256(pack))
		name := r.PackPath(id)
		if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, pack, 0o400); err != nil {
			t.Fatal(err)
		}
		return id
	}
	counted := plant(append(packHeader(), footer(1<<32-1, 0)...))
	bombID := index.Hash([]byte("record"))
	frame := zstdBomb(1<<30, -1, 17)
	e := PackEntry{ID: bombID, Type: index.SnapshotBlob, Compression: index.Zstd, Length: uint32(len(frame)), RawLength: 64 << 10}
	plant(appendTrailer(append(packHeader(), frame...), []PackEntry{e}))

	reported := map[index.ID]string{}
	var st RebuildStats
	var err error
	keep := func(*index.DB, func(index.ID) ([]byte, error), index.ID, []byte) error { return nil }
	n := allocated(func() {
		st, err = r.RebuildIndex(context.Background(), keep, func(p Problem) {
			k := p.Pack
			if !p.Blob.IsZero() {
				k = p.Blob
			}
			reported[k] = p.Error()
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rebuild: %+v, %d bytes allocated, problems %v", st, n, reported)
	if reported[counted] == "" || reported[bombID] == "" {
		t.Errorf("problems %v; want the pack %s and the record %s", reported, counted.Short(), bombID.Short())
	}
	if n > 16<<20 {
		t.Errorf("rebuilding over hostile packs allocated %d bytes", n)
	}
	if _, err := r.LoadBlob(index.Hash(good), nil); err != nil {
		t.Errorf("the good blob after the rebuild: %v", err)
	}
	if _, ok, _ := r.idx.SnapshotRecord(bombID); ok {
		t.Error("the bomb became a snapshot")
	}
}
