package index

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// IDSize is the length of a blob ID in bytes.
const IDSize = sha256.Size

// ID names a blob, a pack or a snapshot: the SHA-256 of its uncompressed bytes.
// It is a value type usable as a map key.
type ID [IDSize]byte

// Hash returns the ID of data.
func Hash(data []byte) ID { return sha256.Sum256(data) }

// String returns the lower-case hex form of the ID.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first eight hex digits, for messages and listings.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsZero reports whether id is the zero ID, which names nothing.
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText encodes the ID as hex, so IDs read naturally in JSON.
func (id ID) MarshalText() ([]byte, error) {
	out := make([]byte, hex.EncodedLen(IDSize))
	hex.Encode(out, id[:])
	return out, nil
}

// UnmarshalText decodes a hex ID of exactly 64 digits.
func (id *ID) UnmarshalText(text []byte) error {
	parsed, err := ParseID(string(text))
	if err != nil {
		return err
	}
	*id = parsed
	return nil
}

// ParseID decodes a full 64-digit hex ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != hex.EncodedLen(IDSize) {
		return id, fmt.Errorf("invalid ID %q: want %d hex digits, have %d", s, hex.EncodedLen(IDSize), len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("invalid ID %q: %w", s, err)
	}
	return id, nil
}

// BlobType says what a blob holds.
type BlobType uint8

// Blob types. The numbers are part of the on-disk format.
const (
	DataBlob     BlobType = 1 // a chunk of file content
	TreeBlob     BlobType = 2 // an encoded directory
	SnapshotBlob BlobType = 3 // a snapshot record
)

func (t BlobType) String() string {
	switch t {
	case DataBlob:
		return "data"
	case TreeBlob:
		return "tree"
	case SnapshotBlob:
		return "snapshot"
	}
	return fmt.Sprintf("blobtype(%d)", uint8(t))
}

// Valid reports whether t is a known blob type.
func (t BlobType) Valid() bool { return t >= DataBlob && t <= SnapshotBlob }
