package chunkstore

import (
	"context"
	"fmt"

	"github.com/understudy/understudy/index"
)

// StoredBlob is a blob in the form a pack holds it: compressed or raw, with
// what is needed to decode it. Replication sends blobs in this form, so that
// nothing is compressed twice.
type StoredBlob struct {
	ID          index.ID
	Type        index.BlobType
	Compression index.Compression
	RawLength   uint32
	Data        []byte // the stored bytes
}

// ReadStored returns the stored bytes of the blob at loc, without decoding
// or verifying them (the receiver of a replicated blob verifies it). buf is
// reused when it is large enough.
func (r *Repo) ReadStored(id index.ID, loc index.Location, buf []byte) (StoredBlob, error) {
	entry := PackEntry{ID: id, Type: loc.Type, Compression: loc.Compression, Offset: loc.Offset, Length: loc.Length, RawLength: loc.RawLength}
	if err := entry.validate(); err != nil {
		return StoredBlob{}, &BlobError{ID: id, Pack: loc.Pack, Err: fmt.Errorf("bad index entry: %w", err)}
	}
	if uint32(cap(buf)) < loc.Length {
		buf = make([]byte, loc.Length)
	}
	buf = buf[:loc.Length]
	if err := r.packs.readAt(loc.Pack, buf, int64(loc.Offset)); err != nil {
		return StoredBlob{}, &BlobError{ID: id, Pack: loc.Pack, Err: fmt.Errorf("read: %w", err)}
	}
	return StoredBlob{ID: id, Type: loc.Type, Compression: loc.Compression, RawLength: loc.RawLength, Data: buf}, nil
}

// VerifyStored decodes b and checks that its content hashes to its ID. It
// returns the decoded content (in buf when large enough). Every size is
// checked before anything is allocated for it.
func (r *Repo) VerifyStored(b StoredBlob, buf []byte) ([]byte, error) {
	entry := PackEntry{ID: b.ID, Type: b.Type, Compression: b.Compression, Length: uint32(len(b.Data)), RawLength: b.RawLength}
	if uint64(len(b.Data)) > uint64(MaxRaw(b.Type)) {
		return nil, &BlobError{ID: b.ID, Err: fmt.Errorf("%d stored bytes exceed the %d byte maximum", len(b.Data), MaxRaw(b.Type))}
	}
	if err := entry.validate(); err != nil {
		return nil, &BlobError{ID: b.ID, Err: err}
	}
	raw, err := r.codec.decode(b.Data, b.Compression, b.RawLength, buf)
	if err != nil {
		return nil, &BlobError{ID: b.ID, Err: err}
	}
	if index.Hash(raw) != b.ID {
		return nil, &BlobError{ID: b.ID, Err: ErrBlobHash}
	}
	return raw, nil
}

// SaveStored adds a blob received in its stored form, whose content the
// caller has verified with VerifyStored, unless the repository holds it or
// it is pending. Like Save, it returns once the blob is in an open pack, and
// reports whether it was added. b.Data is not retained.
func (u *Uploader) SaveStored(ctx context.Context, b StoredBlob) (bool, error) {
	if b.Type == index.SnapshotBlob {
		return false, fmt.Errorf("blob %s: snapshot records are saved by Flush", b.ID.Short())
	}
	return u.save(ctx, b.ID, func() error {
		return u.appendClaimed(b.Type, b.ID, b.Data, b.Compression, b.RawLength)
	})
}
