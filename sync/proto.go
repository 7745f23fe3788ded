package sync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
)

// ProtocolVersion is the version of the replication protocol this build
// speaks. A peer with another version is refused at the handshake.
const ProtocolVersion = 1

// helloMagic opens every session, so that a peer that is not understudy
// (a shell printing a banner, another program) is recognised at once.
const helloMagic = "understudy-sync"

// Capability bits, exchanged at the handshake; a peer ignores bits it does
// not know, and a feature is used only when both sides announce it.
const (
	// capDelta: the receiver accepts Delta frames.
	capDelta uint64 = 1 << 0
	// capApply: the client may send Apply frames, and serve answers them
	// (serve announces it only when it was given a way to apply).
	capApply uint64 = 1 << 1
	// capFetch: serve answers Get frames with the blobs it holds (repair
	// from a peer); the client may send them.
	capFetch   uint64 = 1 << 2
	capsSpoken        = capDelta | capApply | capFetch
)

// Welcome flags.
const (
	flagAppendOnly uint64 = 1 << 0 // serve --append-only: requests that delete are refused
)

const (
	helloSize     = len(helloMagic) + 2 + 8
	welcomeMax    = 2 + 8 + 8 + 32 + 8 + 1 + 255
	committedSize = 32 + 8 + 8 + 8 + 8
)

// hello is the client's first frame.
type hello struct {
	Version uint16
	Caps    uint64
}

func (h hello) encode() []byte {
	b := make([]byte, 0, helloSize)
	b = append(b, helloMagic...)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	return binary.BigEndian.AppendUint64(b, h.Caps)
}

func decodeHello(p []byte) (hello, error) {
	if len(p) != helloSize || string(p[:len(helloMagic)]) != helloMagic {
		return hello{}, fmt.Errorf("%w: not an understudy hello (%d bytes)", ErrFrame, len(p))
	}
	p = p[len(helloMagic):]
	return hello{Version: binary.BigEndian.Uint16(p), Caps: binary.BigEndian.Uint64(p[2:])}, nil
}

// Welcome is serve's answer to hello: who the standby is.
type Welcome struct {
	Version    uint16
	Caps       uint64
	Flags      uint64
	RepoID     [32]byte
	Polynomial uint64 // the standby's chunker polynomial (init --from)
	Program    string // understudy's version on the standby, for messages
}

// AppendOnly reports whether the standby refuses requests that delete.
func (w Welcome) AppendOnly() bool { return w.Flags&flagAppendOnly != 0 }

// CanApply reports whether the standby answers Apply requests
// (Session.Apply).
func (w Welcome) CanApply() bool { return w.Caps&capApply != 0 }

func (w Welcome) encode() []byte {
	b := make([]byte, 0, welcomeMax)
	b = binary.BigEndian.AppendUint16(b, w.Version)
	b = binary.BigEndian.AppendUint64(b, w.Caps)
	b = binary.BigEndian.AppendUint64(b, w.Flags)
	b = append(b, w.RepoID[:]...)
	b = binary.BigEndian.AppendUint64(b, w.Polynomial)
	prog := w.Program
	if len(prog) > 255 {
		prog = prog[:255]
	}
	b = append(b, byte(len(prog)))
	return append(b, prog...)
}

func decodeWelcome(p []byte) (Welcome, error) {
	const fixed = 2 + 8 + 8 + 32 + 8 + 1
	if len(p) < fixed || len(p) != fixed+int(p[fixed-1]) {
		return Welcome{}, fmt.Errorf("%w: welcome of %d bytes", ErrFrame, len(p))
	}
	var w Welcome
	w.Version = binary.BigEndian.Uint16(p)
	w.Caps = binary.BigEndian.Uint64(p[2:])
	w.Flags = binary.BigEndian.Uint64(p[10:])
	copy(w.RepoID[:], p[18:50])
	w.Polynomial = binary.BigEndian.Uint64(p[50:])
	w.Program = string(p[fixed:])
	return w, nil
}

// Error codes carried by an Error frame.
const (
	codeFailed    uint16 = 1 // anything else; the text says what
	codeVersion   uint16 = 2 // protocol version not spoken
	codeRefused   uint16 = 3 // refused by the standby's flags or state
	codeBadInput  uint16 = 4 // a frame or blob that does not verify
	codeNoRepo    uint16 = 5 // the repository cannot be opened
	codeNoSpace   uint16 = 6 // the standby's filesystem is full
	codeCancelled uint16 = 7 // the sender is stopping (signal)
)

// ErrRefused is wrapped by a RemoteError whose code says the standby refused
// by its state or flags (a promoted set): a guard, not a failure.
var ErrRefused = errors.New("refused by the standby")

// RemoteError is an error reported by the peer in an Error frame.
type RemoteError struct {
	Code uint16
	Text string
}

func (e *RemoteError) Error() string { return e.Text }

// Is makes a refusal match ErrRefused.
func (e *RemoteError) Is(target error) bool { return target == ErrRefused && e.Code == codeRefused }

func encodeError(code uint16, text string) []byte {
	if len(text) > maxErrorText {
		text = text[:maxErrorText]
	}
	b := binary.BigEndian.AppendUint16(nil, code)
	b = binary.BigEndian.AppendUint16(b, uint16(len(text)))
	return append(b, text...)
}

func decodeError(p []byte) (*RemoteError, error) {
	if len(p) < 4 || len(p) != 4+int(binary.BigEndian.Uint16(p[2:])) {
		return nil, fmt.Errorf("%w: error frame of %d bytes", ErrFrame, len(p))
	}
	return &RemoteError{Code: binary.BigEndian.Uint16(p), Text: string(p[4:])}, nil
}

// encodeHave appends a Have payload: count u32, then count IDs.
func encodeHave(b []byte, ids []index.ID) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	for i := range ids {
		b = append(b, ids[i][:]...)
	}
	return b
}

func decodeHave(p []byte) ([]index.ID, error) {
	if len(p) < 4 {
		return nil, fmt.Errorf("%w: have of %d bytes", ErrFrame, len(p))
	}
	n := binary.BigEndian.Uint32(p)
	if n > maxHaveIDs || uint64(len(p)) != 4+32*uint64(n) {
		return nil, fmt.Errorf("%w: have of %d bytes declares %d IDs", ErrFrame, len(p), n)
	}
	ids := make([]index.ID, n)
	for i := range ids {
		copy(ids[i][:], p[4+32*i:])
	}
	return ids, nil
}

// encodeHaveReply: count u32, then one bit per ID, most significant bit
// first, padded with zero bits to a whole byte.
func encodeHaveReply(held []bool) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(held)))
	bitmap := make([]byte, (len(held)+7)/8)
	for i, h := range held {
		if h {
			bitmap[i/8] |= 0x80 >> (i % 8)
		}
	}
	return append(b, bitmap...)
}

func decodeHaveReply(p []byte, want int) ([]bool, error) {
	if len(p) < 4 {
		return nil, fmt.Errorf("%w: have reply of %d bytes", ErrFrame, len(p))
	}
	n := int(binary.BigEndian.Uint32(p))
	if n != want || len(p) != 4+(n+7)/8 {
		return nil, fmt.Errorf("%w: have reply for %d IDs of %d bytes, asked about %d", ErrFrame, n, len(p), want)
	}
	if n%8 != 0 && bits.TrailingZeros8(p[len(p)-1]) < 8-n%8 {
		return nil, fmt.Errorf("%w: have reply has padding bits set", ErrFrame)
	}
	held := make([]bool, n)
	for i := range held {
		held[i] = p[4+i/8]&(0x80>>(i%8)) != 0
	}
	return held, nil
}

// appendBlobHeader appends the header of a Blob payload; the stored bytes
// follow it:
//
//	type u8 | compression u8 | raw length u32 | ID [32] | stored bytes
func appendBlobHeader(b []byte, sb chunkstore.StoredBlob) []byte {
	b = append(b, byte(sb.Type), byte(sb.Compression))
	b = binary.BigEndian.AppendUint32(b, sb.RawLength)
	return append(b, sb.ID[:]...)
}

// decodeBlob parses a Blob payload; Data aliases p. Sizes are checked
// against the blob type's limits; content is verified by the receiver.
func decodeBlob(p []byte) (chunkstore.StoredBlob, error) {
	if len(p) < maxBlobHeader {
		return chunkstore.StoredBlob{}, fmt.Errorf("%w: blob of %d bytes", ErrFrame, len(p))
	}
	b := chunkstore.StoredBlob{
		Type:        index.BlobType(p[0]),
		Compression: index.Compression(p[1]),
		RawLength:   binary.BigEndian.Uint32(p[2:]),
		Data:        p[maxBlobHeader:],
	}
	copy(b.ID[:], p[6:38])
	if b.Type != index.DataBlob && b.Type != index.TreeBlob {
		return chunkstore.StoredBlob{}, fmt.Errorf("%w: blob %s of type %d (data or tree expected)", ErrFrame, b.ID.Short(), p[0])
	}
	if b.RawLength > chunkstore.MaxRaw(b.Type) || uint64(len(b.Data)) > uint64(chunkstore.MaxRaw(b.Type)) {
		return chunkstore.StoredBlob{}, fmt.Errorf("%w: %s blob %s of %d bytes (raw %d) exceeds %d", ErrFrame, b.Type, b.ID.Short(), len(b.Data), b.RawLength, chunkstore.MaxRaw(b.Type))
	}
	return b, nil
}

// encodeCommit: snapshot ID [32] | record bytes.
func encodeCommit(id index.ID, record []byte) []byte {
	return append(append(make([]byte, 0, 32+len(record)), id[:]...), record...)
}

func decodeCommit(p []byte) (index.ID, []byte, error) {
	if len(p) <= 32 {
		return index.ID{}, nil, fmt.Errorf("%w: commit of %d bytes", ErrFrame, len(p))
	}
	id := index.ID(p[:32])
	if index.Hash(p[32:]) != id {
		return index.ID{}, nil, fmt.Errorf("%w: snapshot record does not hash to %s", ErrFrame, id.Short())
	}
	return id, p[32:], nil
}

// Committed is serve's answer to a commit: what the session has stored so
// far.
type Committed struct {
	Snapshot    index.ID
	BlobsAdded  uint64
	BytesAdded  uint64 // stored bytes
	PacksSealed uint64
	Verified    uint64 // blobs received and verified
}

func (c Committed) encode() []byte {
	b := append(make([]byte, 0, committedSize), c.Snapshot[:]...)
	b = binary.BigEndian.AppendUint64(b, c.BlobsAdded)
	b = binary.BigEndian.AppendUint64(b, c.BytesAdded)
	b = binary.BigEndian.AppendUint64(b, c.PacksSealed)
	return binary.BigEndian.AppendUint64(b, c.Verified)
}

func decodeCommitted(p []byte) (Committed, error) {
	if len(p) != committedSize {
		return Committed{}, fmt.Errorf("%w: committed of %d bytes", ErrFrame, len(p))
	}
	return Committed{
		Snapshot:    index.ID(p[:32]),
		BlobsAdded:  binary.BigEndian.Uint64(p[32:]),
		BytesAdded:  binary.BigEndian.Uint64(p[40:]),
		PacksSealed: binary.BigEndian.Uint64(p[48:]),
		Verified:    binary.BigEndian.Uint64(p[56:]),
	}, nil
}

// Delta payload: a data or tree blob encoded as zstd against a predecessor
// blob the receiver holds, used as a raw dictionary (zstd dictionary ID
// deltaDict):
//
//	blob type u8 | raw length u32 | ID [32] | predecessor ID [32] | zstd frame
const deltaHeader = 1 + 4 + 32 + 32

// deltaDict is the dictionary ID of every delta frame; the dictionary is
// the predecessor's content.
const deltaDict = 1

type delta struct {
	Type      index.BlobType
	RawLength uint32
	ID, Base  index.ID
	Data      []byte
}

func appendDeltaHeader(b []byte, d delta) []byte {
	b = append(b, byte(d.Type))
	b = binary.BigEndian.AppendUint32(b, d.RawLength)
	b = append(b, d.ID[:]...)
	return append(b, d.Base[:]...)
}

func decodeDelta(p []byte) (delta, error) {
	if len(p) <= deltaHeader {
		return delta{}, fmt.Errorf("%w: delta of %d bytes", ErrFrame, len(p))
	}
	d := delta{Type: index.BlobType(p[0]), RawLength: binary.BigEndian.Uint32(p[1:]), ID: index.ID(p[5:37]), Base: index.ID(p[37:69]), Data: p[deltaHeader:]}
	if d.Type != index.DataBlob && d.Type != index.TreeBlob {
		return delta{}, fmt.Errorf("%w: delta for blob %s of type %d (data or tree expected)", ErrFrame, d.ID.Short(), p[0])
	}
	if max := chunkstore.MaxRaw(d.Type); d.RawLength > max || uint64(len(d.Data)) > uint64(max) {
		return delta{}, fmt.Errorf("%w: delta for %s blob %s of %d bytes (raw %d) exceeds %d", ErrFrame, d.Type, d.ID.Short(), len(d.Data), d.RawLength, max)
	}
	return d, nil
}

// encodeBegin: snapshot ID [32] | set length u8 | set name.
func encodeBegin(id index.ID, set string) ([]byte, error) {
	if len(set) > 255 {
		return nil, fmt.Errorf("set name of %d bytes (at most 255)", len(set))
	}
	b := append(make([]byte, 0, 33+len(set)), id[:]...)
	b = append(b, byte(len(set)))
	return append(b, set...), nil
}

func decodeBegin(p []byte) (index.ID, string, error) {
	if len(p) < 33 || len(p) != 33+int(p[32]) {
		return index.ID{}, "", fmt.Errorf("%w: begin of %d bytes", ErrFrame, len(p))
	}
	return index.ID(p[:32]), string(p[33:]), nil
}
