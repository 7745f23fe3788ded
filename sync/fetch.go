package sync

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
)

// Fetching blobs (capability capFetch), for `repair --from`: the client asks
// the peer's serve for good copies of blobs its own repository holds damaged.
// Serve only reads: it answers from its index and packs and changes nothing.
//
// Get payload:
//
//	count u32          1 to maxGetIDs
//	count × ID [32]
//
// serve answers with one Got frame per ID, in the order asked:
//
//	status u8          gotAbsent, gotBlob or gotUnreadable
//	ID [32]            the ID asked
//	gotBlob only:
//	  type u8 | compression u8 | raw length u32 | stored bytes
//
// The stored bytes are the blob as serve's pack holds it, not verified by
// serve: the client decodes and hashes every one before it uses it.
const (
	maxGetIDs = 4096
	gotFixed  = 1 + 32
	gotHeader = gotFixed + 1 + 1 + 4
)

// Got statuses.
const (
	gotAbsent     byte = 0 // the peer's index does not hold the blob
	gotBlob       byte = 1 // the blob in its stored form follows
	gotUnreadable byte = 2 // indexed, but its pack cannot be read there
)

// Errors about one blob the peer could not give, in Fetched.Missing.
var (
	// ErrNoFetch is wrapped by Session.Fetch's error when the peer does not
	// announce capFetch (an older understudy).
	ErrNoFetch = errors.New("peer cannot send blobs: upgrade it")
	// ErrPeerLacks: the peer's index does not hold the blob.
	ErrPeerLacks = errors.New("the peer does not hold it")
	// ErrPeerUnreadable: the peer holds the blob but cannot read its pack.
	ErrPeerUnreadable = errors.New("the peer holds it but cannot read it")
	// ErrBadCopy: what the peer sent does not decode to the blob's ID, or
	// is of another type; it is not used.
	ErrBadCopy = errors.New("the peer's copy does not verify")
)

// CanFetch reports whether the peer answers Get frames (Session.Fetch).
func (w Welcome) CanFetch() bool { return w.Caps&capFetch != 0 }

// encodeGet appends a Get payload for ids (1 to maxGetIDs of them).
func encodeGet(b []byte, ids []index.ID) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	for i := range ids {
		b = append(b, ids[i][:]...)
	}
	return b
}

func decodeGet(p []byte) ([]index.ID, error) {
	if len(p) < 4 {
		return nil, fmt.Errorf("%w: get of %d bytes", ErrFrame, len(p))
	}
	n := binary.BigEndian.Uint32(p)
	if n == 0 || n > maxGetIDs || uint64(len(p)) != 4+32*uint64(n) {
		return nil, fmt.Errorf("%w: get of %d bytes declares %d IDs (1 to %d)", ErrFrame, len(p), n, maxGetIDs)
	}
	ids := make([]index.ID, n)
	for i := range ids {
		copy(ids[i][:], p[4+32*i:])
	}
	return ids, nil
}

// got is a decoded Got payload.
type got struct {
	Status byte
	ID     index.ID
	Blob   chunkstore.StoredBlob // gotBlob only; Data aliases the payload
}

// appendGotHeader appends a Got payload without the stored bytes, which
// follow it for gotBlob.
func appendGotHeader(b []byte, status byte, id index.ID, sb chunkstore.StoredBlob) []byte {
	b = append(b, status)
	b = append(b, id[:]...)
	if status != gotBlob {
		return b
	}
	b = append(b, byte(sb.Type), byte(sb.Compression))
	return binary.BigEndian.AppendUint32(b, sb.RawLength)
}

// decodeGot parses a Got payload. Sizes are checked against the blob
// type's limits; the content is verified by the caller.
func decodeGot(p []byte) (got, error) {
	if len(p) < gotFixed {
		return got{}, fmt.Errorf("%w: got of %d bytes", ErrFrame, len(p))
	}
	g := got{Status: p[0], ID: index.ID(p[1:gotFixed])}
	switch g.Status {
	case gotAbsent, gotUnreadable:
		if len(p) != gotFixed {
			return got{}, fmt.Errorf("%w: got without a blob of %d bytes", ErrFrame, len(p))
		}
		return g, nil
	case gotBlob:
	default:
		return got{}, fmt.Errorf("%w: got with status %d", ErrFrame, g.Status)
	}
	if len(p) < gotHeader {
		return got{}, fmt.Errorf("%w: got of %d bytes", ErrFrame, len(p))
	}
	g.Blob = chunkstore.StoredBlob{
		ID:          g.ID,
		Type:        index.BlobType(p[gotFixed]),
		Compression: index.Compression(p[gotFixed+1]),
		RawLength:   binary.BigEndian.Uint32(p[gotFixed+2:]),
		Data:        p[gotHeader:],
	}
	b := &g.Blob
	if !b.Type.Valid() {
		return got{}, fmt.Errorf("%w: got blob %s of type %d", ErrFrame, g.ID.Short(), p[gotFixed])
	}
	if b.Compression != index.Raw && b.Compression != index.Zstd {
		return got{}, fmt.Errorf("%w: got blob %s with compression %d", ErrFrame, g.ID.Short(), b.Compression)
	}
	if max := chunkstore.MaxRaw(b.Type); b.RawLength > max || uint64(len(b.Data)) > uint64(max) {
		return got{}, fmt.Errorf("%w: got %s blob %s of %d bytes (raw %d) exceeds %d", ErrFrame, b.Type, g.ID.Short(), len(b.Data), b.RawLength, max)
	}
	return g, nil
}

// get answers a Get frame: one Got frame per ID, from the repository's
// index and packs, without changing anything.
func (s *server) get(p []byte) error {
	if s.clientCaps&capFetch == 0 {
		return fmt.Errorf("%w: get frame, but the fetch capability was not agreed", ErrFrame)
	}
	ids, err := decodeGet(p)
	if err != nil {
		return err
	}
	if err := s.barrier(); err != nil {
		return err
	}
	var stored, hdr []byte
	for _, id := range ids {
		status := gotAbsent
		var sb chunkstore.StoredBlob
		loc, ok, err := s.repo.Index().Lookup(id)
		if err != nil {
			return err
		}
		if ok {
			status = gotBlob
			if sb, err = s.repo.ReadStored(id, loc, stored); err != nil {
				s.opts.Log.Warn("blob asked for cannot be read", "blob", id.Short(), "error", err)
				status = gotUnreadable
			} else {
				stored = sb.Data
			}
		}
		hdr = appendGotHeader(hdr[:0], status, id, sb)
		if status != gotBlob {
			sb.Data = nil
		}
		if err := s.queue(fGot, hdr, sb.Data); err != nil {
			return err
		}
	}
	if err := s.bw.Flush(); err != nil {
		return fmt.Errorf("%w: %w", errPeerGone, err)
	}
	return nil
}

// queue buffers one frame whose payload is head then tail, without
// flushing.
func (s *server) queue(t byte, head, tail []byte) error {
	var h [frameHeaderSize]byte
	appendFrameHeader(h[:0], t, len(head)+len(tail))
	for _, b := range [][]byte{h[:], head, tail} {
		if _, err := s.bw.Write(b); err != nil {
			return fmt.Errorf("%w: %w", errPeerGone, err)
		}
	}
	return nil
}

// Want is a blob the client asks the peer for.
type Want struct {
	ID index.ID
	// Type is what the client's index says the blob is; a copy of another
	// type is refused. Zero accepts any type.
	Type index.BlobType
}

// Fetched is the peer's answer for one blob.
type Fetched struct {
	ID index.ID
	// Blob is the peer's copy in its stored form, verified against ID;
	// its Data is the caller's to keep. Valid when Missing is nil.
	Blob chunkstore.StoredBlob
	// Missing says why there is no good copy: it wraps ErrPeerLacks,
	// ErrPeerUnreadable or ErrBadCopy.
	Missing error
}

// StoredVerifier decodes a blob in its stored form, with the bounded zstd
// decoder the repository and serve use, and checks that it hashes to its
// ID (chunkstore.Repo.VerifyStored).
type StoredVerifier interface {
	VerifyStored(b chunkstore.StoredBlob, buf []byte) ([]byte, error)
}

var _ StoredVerifier = (*chunkstore.Repo)(nil)

// CheckFetch returns nil if the peer answers Get frames, else an error
// wrapping ErrNoFetch.
func (s *Session) CheckFetch() error {
	if s.welcome.CanFetch() {
		return nil
	}
	return fmt.Errorf("%w (its understudy, %s, does not announce the fetch capability)", ErrNoFetch, s.welcome.Program)
}

// Fetch asks the peer for good copies of want, maxGetIDs per round trip,
// and calls fn once per blob, in order. Every copy received is verified by
// v before fn sees it; one that does not verify, or is of another type than
// asked, is passed on as Missing (ErrBadCopy) and never as a Blob. An error
// of fn or of the session stops Fetch; the session must then be aborted.
func (s *Session) Fetch(ctx context.Context, v StoredVerifier, want []Want, fn func(Fetched) error) error {
	if err := s.CheckFetch(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	err := s.fetch(v, want, fn)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

func (s *Session) fetch(v StoredVerifier, want []Want, fn func(Fetched) error) error {
	var buf, scratch []byte
	ids := make([]index.ID, 0, min(len(want), maxGetIDs))
	for len(want) > 0 {
		batch := want[:min(len(want), maxGetIDs)]
		want = want[len(batch):]
		ids = ids[:0]
		for _, w := range batch {
			ids = append(ids, w.ID)
		}
		buf = encodeGet(buf[:0], ids)
		if err := s.send(fGet, buf); err != nil {
			return err
		}
		if err := s.flush(); err != nil {
			return err
		}
		for _, w := range batch {
			p, err := s.expect(fGot)
			if err != nil {
				return err
			}
			g, err := decodeGot(p)
			if err != nil {
				return err
			}
			if g.ID != w.ID {
				return fmt.Errorf("%w: asked the peer for blob %s, it answered for %s", ErrFrame, w.ID.Short(), g.ID.Short())
			}
			f := Fetched{ID: w.ID}
			switch g.Status {
			case gotAbsent:
				f.Missing = ErrPeerLacks
			case gotUnreadable:
				f.Missing = ErrPeerUnreadable
			default:
				f.Blob, f.Missing = verifyFetched(v, w, g.Blob, &scratch)
			}
			if err := fn(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// verifyFetched is the one check a received copy passes before use: its
// type is the one asked for, and it decodes (within the limits of its
// type) to bytes that hash to its ID.
func verifyFetched(v StoredVerifier, w Want, sb chunkstore.StoredBlob, scratch *[]byte) (chunkstore.StoredBlob, error) {
	if w.Type != 0 && sb.Type != w.Type {
		return chunkstore.StoredBlob{}, fmt.Errorf("%w: a %s blob, expected %s", ErrBadCopy, sb.Type, w.Type)
	}
	raw, err := v.VerifyStored(sb, *scratch)
	if err != nil {
		var be *chunkstore.BlobError
		if errors.As(err, &be) {
			err = be.Err // the ID is named by the caller
		}
		return chunkstore.StoredBlob{}, fmt.Errorf("%w: %w", ErrBadCopy, err)
	}
	if sb.Compression == index.Zstd {
		*scratch = raw[:0]
	}
	return sb, nil
}

// Holds asks which of ids the peer's index holds (Have frames): what a
// Fetch would find, without transferring anything.
func (s *Session) Holds(ids []index.ID) ([]bool, error) {
	var st PushStats
	return s.have(&st, ids)
}
