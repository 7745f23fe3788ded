package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
)

// The parts of bbolt's meta page that checkTruncated reads (bbolt's
// internal/common/meta.go, its file format 2): a 16-byte page header, then
// magic, version, page size, flags (4 bytes each), the root bucket (16),
// the freelist page (8), the high-water mark (8), the last transaction (8)
// and an FNV-1a checksum of the meta's bytes before it. Integers are in the
// machine's byte order: an index.db is not moved between architectures.
const (
	metaMagic       = 0xED0CDAED
	metaMagicAt     = 16
	metaPageSizeAt  = 24
	metaHighWaterAt = 56
	metaTxidAt      = 64
	metaChecksumAt  = 72
)

// ErrTruncated says that index.db is shorter than its own meta page says:
// bbolt maps the file and would fault reading a page past its end.
var ErrTruncated = errors.New("index is truncated")

// checkTruncated refuses an index file shorter than the pages its newest
// valid meta page counts. bbolt reads the file through a memory mapping, and
// a page the tree points at past the end of a truncated file kills the
// process with SIGBUS, which no error return or recover catches. A file
// without a valid meta page is left to bbolt, which refuses it; a missing
// or empty file is a new index.
func checkTruncated(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open index %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	pages, pageSize, ok := metaExtent(f)
	if ok && uint64(fi.Size()) < pages*pageSize {
		return fmt.Errorf("%s: %w: %d bytes, its meta page counts %d pages of %d bytes; rebuild it from the packs with `understudy repair index`",
			path, ErrTruncated, fi.Size(), pages, pageSize)
	}
	return nil
}

// metaExtent returns the pages (the high-water mark) and the page size of
// the newest valid meta page of the bbolt file f; ok is false when neither
// meta page is valid.
func metaExtent(f *os.File) (pages, pageSize uint64, ok bool) {
	var txid uint64
	buf := make([]byte, metaChecksumAt+8)
	read := func(off int64) bool {
		if n, _ := f.ReadAt(buf, off); n < len(buf) {
			return false
		}
		h := fnv.New64a()
		h.Write(buf[metaMagicAt:metaChecksumAt])
		if binary.NativeEndian.Uint32(buf[metaMagicAt:]) != metaMagic || h.Sum64() != binary.NativeEndian.Uint64(buf[metaChecksumAt:]) {
			return false
		}
		if t := binary.NativeEndian.Uint64(buf[metaTxidAt:]); !ok || t > txid {
			ok, txid = true, t
			pages = binary.NativeEndian.Uint64(buf[metaHighWaterAt:])
			pageSize = uint64(binary.NativeEndian.Uint32(buf[metaPageSizeAt:]))
		}
		return true
	}
	// Meta page 0 is at offset 0; meta page 1 one page further, at the
	// page size meta 0 gives or, when meta 0 is damaged, at a size bbolt
	// could have used (its page size is the system's at creation).
	if read(0) {
		read(int64(pageSize))
	} else {
		for _, off := range []int64{4096, 8192, 16384, 65536} {
			if read(off) && pageSize == uint64(off) {
				break
			}
		}
	}
	return pages, pageSize, ok
}
