package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
)

// RecordVersion is the version of the snapshot record format.
const RecordVersion = 1

// Record is a snapshot: the root tree of "/" with what was selected and how
// it went. It is stored as JSON in a snapshot blob and in the index; its ID is
// the SHA-256 of those bytes.
type Record struct {
	Version       int       `json:"version"`
	Time          time.Time `json:"time"`
	Root          index.ID  `json:"root"` // tree of the root directory "/"
	Set           string    `json:"set"`
	Host          string    `json:"host"`
	Paths         []string  `json:"paths"`
	Excludes      []string  `json:"excludes,omitempty"`
	OneFileSystem bool      `json:"one_file_system,omitempty"`
	Tags          []string  `json:"tags,omitempty"`
	Parent        *index.ID `json:"parent,omitempty"`
	Stats         Stats     `json:"stats"`
	Warnings      []Warning `json:"warnings,omitempty"`
}

// Stats describe what taking a snapshot did.
type Stats struct {
	Files       int64   `json:"files"`
	Dirs        int64   `json:"dirs"`
	Others      int64   `json:"others"` // symlinks, devices, FIFOs, sockets
	BytesRead   int64   `json:"bytes_read"`
	BytesTotal  int64   `json:"bytes_total"` // logical size of all files
	BlobsAdded  int64   `json:"blobs_added"`
	BytesAdded  int64   `json:"bytes_added"` // stored (compressed) bytes added to the repository
	RawAdded    int64   `json:"raw_added"`   // uncompressed size of the added blobs
	DurationSec float64 `json:"duration_seconds"`
}

// Warning is a path that could not be read, or changed while it was read.
// Paths that are not valid UTF-8 are shown with Go escapes.
type Warning struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

// ErrBadRecord is wrapped by record decoding errors.
var ErrBadRecord = errors.New("corrupt snapshot record")

// Encode returns the record's stored form.
func (r *Record) Encode() ([]byte, error) { return json.Marshal(r) }

// DecodeRecord parses a stored snapshot record.
func DecodeRecord(data []byte) (*Record, error) {
	if len(data) > chunkstore.MaxTreeBlob {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadRecord, len(data))
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	if r.Version != RecordVersion {
		return nil, fmt.Errorf("%w: version %d is not supported", ErrBadRecord, r.Version)
	}
	if r.Root.IsZero() {
		return nil, fmt.Errorf("%w: no root tree", ErrBadRecord)
	}
	if len(r.Paths) == 0 {
		return nil, fmt.Errorf("%w: no paths", ErrBadRecord)
	}
	return &r, nil
}
