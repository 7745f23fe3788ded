package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/tree"
)

// RecordVersion is the version of the snapshot record format.
const RecordVersion = 1

// Record is a snapshot: the root tree of "/" with what was selected and how
// it went. It is stored as JSON in a snapshot blob and in the index; its ID is
// the SHA-256 of those bytes.
type Record struct {
	Version int       `json:"version"`
	Time    time.Time `json:"time"`
	Root    index.ID  `json:"root"` // tree of the root directory "/"
	// RootDir is the directory "/" itself (its owner, mode, times, xattrs,
	// flags), which no tree holds: a tree blob with one directory entry
	// named "root" whose subtree is Root. See RootNode.
	RootDir       []byte    `json:"root_dir"`
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
	Files int64 `json:"files"`
	// Files and directories against the set's previous snapshot, as the
	// change-detection cache knows it: new (not in it), changed, unmodified.
	FilesNew        int64   `json:"files_new"`
	FilesChanged    int64   `json:"files_changed"`
	FilesUnmodified int64   `json:"files_unmodified"`
	Dirs            int64   `json:"dirs"`
	DirsNew         int64   `json:"dirs_new"`
	DirsChanged     int64   `json:"dirs_changed"`
	DirsUnmodified  int64   `json:"dirs_unmodified"`
	Others          int64   `json:"others"` // symlinks, devices, FIFOs, sockets
	BytesRead       int64   `json:"bytes_read"`
	BytesTotal      int64   `json:"bytes_total"` // logical size of all files
	BlobsAdded      int64   `json:"blobs_added"`
	BytesAdded      int64   `json:"bytes_added"` // stored (compressed) bytes added to the repository
	RawAdded        int64   `json:"raw_added"`   // uncompressed size of the added blobs
	DurationSec     float64 `json:"duration_seconds"`
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
	if _, err := r.RootNode(); err != nil {
		return nil, err
	}
	return &r, nil
}

// rootName is the name of the single entry of a record's RootDir.
const rootName = "root"

// RootNode decodes RootDir: the metadata of the directory "/" of the
// snapshot.
func (r *Record) RootNode() (*tree.Node, error) {
	t, err := tree.Decode(r.RootDir)
	if err != nil {
		return nil, fmt.Errorf("%w: root_dir: %w", ErrBadRecord, err)
	}
	if len(t.Nodes) != 1 || t.Nodes[0].Name != rootName || t.Nodes[0].Type != tree.Dir || t.Nodes[0].Subtree != r.Root {
		return nil, fmt.Errorf("%w: root_dir is not the entry of the root tree", ErrBadRecord)
	}
	return &t.Nodes[0], nil
}

// EncodeRootDir returns the RootDir form of n, the node of "/" whose Subtree
// is the record's Root.
func EncodeRootDir(n tree.Node) ([]byte, error) {
	n.Name = rootName
	return tree.Encode(&tree.Tree{Nodes: []tree.Node{n}})
}
