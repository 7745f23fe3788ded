package chunkstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/understudy/understudy/index"
)

// Pack file layout (docs/design.md has it byte by byte):
//
//	header   8 bytes  "USPACK" 0x00 version
//	blobs    the stored bytes of each blob, back to back
//	trailer  count × 42-byte entries:
//	             type (1) compression (1) length (4, BE) raw length (4, BE) ID (32)
//	footer   16 bytes: count (4, BE) CRC-32C of the entries (4, BE) "USPKEND" version
//
// The offset of a blob is implied: the header size plus the lengths of the
// blobs before it.
const (
	packVersion     = 1
	packHeaderSize  = 8
	packEntrySize   = 1 + 1 + 4 + 4 + index.IDSize
	packFooterSize  = 16
	packHeaderMagic = "USPACK\x00"
	packFooterMagic = "USPKEND"
)

// Limits the decoders enforce before trusting a length.
const (
	// MaxDataBlob bounds a data chunk (the chunker's maximum is lower).
	MaxDataBlob = 8 << 20
	// MaxTreeBlob bounds a tree or snapshot blob: a directory of about two
	// million entries.
	MaxTreeBlob = 256 << 20
	// MaxPackSize bounds a pack file: a pack is sealed at PackSize, but one
	// blob may carry it past that.
	MaxPackSize = 1 << 30
)

// PackSize is the size at which a pack is sealed.
const PackSize = 16 << 20

// PackMaxBlobs seals a pack of many small blobs before PackSize: each blob
// is a random key in the index, and the transaction that indexes a pack
// rewrites (and holds in memory) about one bbolt page per blob.
const PackMaxBlobs = 2048

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrPackCorrupt is wrapped by pack decoding errors.
var ErrPackCorrupt = errors.New("corrupt pack")

// PackEntry is one blob as a pack's trailer lists it.
type PackEntry struct {
	ID          index.ID
	Type        index.BlobType
	Compression index.Compression
	Offset      uint32
	Length      uint32
	RawLength   uint32
}

// MaxRaw returns the largest uncompressed size allowed for a blob of type t.
func MaxRaw(t index.BlobType) uint32 {
	if t == index.DataBlob {
		return MaxDataBlob
	}
	return MaxTreeBlob
}

func packHeader() []byte { return append([]byte(packHeaderMagic), packVersion) }

// appendTrailer appends the trailer and footer for entries to buf.
func appendTrailer(buf []byte, entries []PackEntry) []byte {
	start := len(buf)
	for _, e := range entries {
		buf = append(buf, byte(e.Type), byte(e.Compression))
		buf = binary.BigEndian.AppendUint32(buf, e.Length)
		buf = binary.BigEndian.AppendUint32(buf, e.RawLength)
		buf = append(buf, e.ID[:]...)
	}
	crc := crc32.Checksum(buf[start:], crcTable)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(entries)))
	buf = binary.BigEndian.AppendUint32(buf, crc)
	buf = append(buf, packFooterMagic...)
	return append(buf, packVersion)
}

// ReadTrailer reads and validates the trailer of a pack of the given size.
// It checks, in order: the size bounds, the footer magic and version, that the
// declared count fits the file, the CRC, and then every entry: known type and
// compression, lengths within bounds, and offsets that exactly tile the file.
func ReadTrailer(r io.ReaderAt, size int64) ([]PackEntry, error) {
	if size < packHeaderSize+packFooterSize {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrPackCorrupt, size)
	}
	if size > MaxPackSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds the %d byte maximum", ErrPackCorrupt, size, MaxPackSize)
	}
	var footer [packFooterSize]byte
	if _, err := r.ReadAt(footer[:], size-packFooterSize); err != nil {
		return nil, fmt.Errorf("read pack footer: %w", err)
	}
	if string(footer[8:15]) != packFooterMagic || footer[15] != packVersion {
		return nil, fmt.Errorf("%w: bad footer magic or version", ErrPackCorrupt)
	}
	var header [packHeaderSize]byte
	if _, err := r.ReadAt(header[:], 0); err != nil {
		return nil, fmt.Errorf("read pack header: %w", err)
	}
	if string(header[:7]) != packHeaderMagic || header[7] != packVersion {
		return nil, fmt.Errorf("%w: bad header magic or version", ErrPackCorrupt)
	}
	count := int64(binary.BigEndian.Uint32(footer[0:]))
	trailerSize := count * packEntrySize
	if trailerSize > size-packHeaderSize-packFooterSize {
		return nil, fmt.Errorf("%w: %d entries do not fit in %d bytes", ErrPackCorrupt, count, size)
	}
	raw := make([]byte, trailerSize)
	if _, err := r.ReadAt(raw, size-packFooterSize-trailerSize); err != nil {
		return nil, fmt.Errorf("read pack trailer: %w", err)
	}
	if crc := crc32.Checksum(raw, crcTable); crc != binary.BigEndian.Uint32(footer[4:]) {
		return nil, fmt.Errorf("%w: trailer checksum mismatch", ErrPackCorrupt)
	}
	return parseEntries(raw, size-packFooterSize-trailerSize)
}

// parseEntries decodes trailer entries whose blobs must exactly fill the bytes
// from the header to end.
func parseEntries(raw []byte, end int64) ([]PackEntry, error) {
	entries := make([]PackEntry, 0, len(raw)/packEntrySize)
	offset := int64(packHeaderSize)
	for i := 0; len(raw) >= packEntrySize; i++ {
		e := PackEntry{
			Type:        index.BlobType(raw[0]),
			Compression: index.Compression(raw[1]),
			Length:      binary.BigEndian.Uint32(raw[2:]),
			RawLength:   binary.BigEndian.Uint32(raw[6:]),
			Offset:      uint32(offset),
		}
		copy(e.ID[:], raw[10:packEntrySize])
		raw = raw[packEntrySize:]
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("%w: entry %d (%s): %w", ErrPackCorrupt, i, e.ID.Short(), err)
		}
		offset += int64(e.Length)
		if offset > end {
			return nil, fmt.Errorf("%w: entry %d (%s) runs past the blobs", ErrPackCorrupt, i, e.ID.Short())
		}
		entries = append(entries, e)
	}
	if offset != end {
		return nil, fmt.Errorf("%w: blobs end at %d but the trailer starts at %d", ErrPackCorrupt, offset, end)
	}
	return entries, nil
}

func (e PackEntry) validate() error {
	if !e.Type.Valid() {
		return fmt.Errorf("unknown blob type %d", e.Type)
	}
	if e.RawLength > MaxRaw(e.Type) {
		return fmt.Errorf("raw length %d exceeds %d", e.RawLength, MaxRaw(e.Type))
	}
	switch e.Compression {
	case index.Raw:
		if e.Length != e.RawLength {
			return fmt.Errorf("raw blob of length %d claims raw length %d", e.Length, e.RawLength)
		}
	case index.Zstd:
		if e.Length > e.RawLength || e.Length == 0 {
			return fmt.Errorf("compressed length %d invalid for raw length %d", e.Length, e.RawLength)
		}
	default:
		return fmt.Errorf("unknown compression %d", e.Compression)
	}
	return nil
}

// Location returns the index location of the entry within pack.
func (e PackEntry) Location(pack index.ID) index.Location {
	return index.Location{Pack: pack, Offset: e.Offset, Length: e.Length, RawLength: e.RawLength, Type: e.Type, Compression: e.Compression}
}
