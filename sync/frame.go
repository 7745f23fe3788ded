package sync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/understudy/understudy/chunkstore"
)

// A frame is the unit of the replication protocol, in both directions:
//
//	type    u8
//	length  u32, big-endian: the number of payload bytes that follow
//	payload length bytes
//
// Each frame type has its own maximum length (maxPayload); a frame that
// declares more is refused before any of its payload is read.
const frameHeaderSize = 5

// Frame types. C: sent by the client (push), S: sent by serve.
const (
	fHello      byte = 0x01 // C: magic, version, capabilities
	fWelcome    byte = 0x02 // S: version, capabilities, repository ID, flags
	fError      byte = 0x03 // C or S: a reason; the sender stops after it
	fBegin      byte = 0x0a // C: the snapshot about to be pushed, and its set
	fReady      byte = 0x0b // S: the standby accepts that set
	fHave       byte = 0x10 // C: blob IDs the client asks about
	fHaveReply  byte = 0x11 // S: one bit per asked ID, in order
	fBlob       byte = 0x20 // C: one blob in its stored form
	fDelta      byte = 0x21 // C: a data or tree blob as a delta against one the standby holds
	fCommit     byte = 0x30 // C: a snapshot record to commit once all blobs are in
	fCommitted  byte = 0x31 // S: the snapshot is committed; what the session stored
	fApply      byte = 0x40 // C: apply the set of a held snapshot to a target (capApply)
	fApplyReply byte = 0x41 // S: what the apply did, as JSON
	fGet        byte = 0x50 // C: blob IDs whose stored form the client asks for (capFetch)
	fGot        byte = 0x51 // S: one per asked ID, in order: the blob as stored, or why not
)

// Limits on what a frame may hold.
const (
	maxHaveIDs    = 8192 // IDs in one Have frame
	maxErrorText  = 4096
	maxBlobHeader = 1 + 1 + 4 + 32
	// maxBlobPayload bounds a Blob frame: the largest stored tree blob
	// (chunkstore.MaxTreeBlob) and its header.
	maxBlobPayload = 256<<20 + maxBlobHeader
	maxCommit      = 32 + 16<<20 // a snapshot record is small JSON
)

// maxPayload returns the largest payload a frame of type t may declare, and
// whether t is a frame type at all.
func maxPayload(t byte) (uint32, bool) {
	switch t {
	case fHello:
		return uint32(helloSize), true
	case fWelcome:
		return welcomeMax, true
	case fError:
		return 2 + 2 + maxErrorText, true
	case fBegin:
		return 32 + 1 + 255, true
	case fReady:
		return 0, true
	case fHave:
		return 4 + 32*maxHaveIDs, true
	case fHaveReply:
		return 4 + maxHaveIDs/8, true
	case fBlob:
		return maxBlobPayload, true
	case fDelta:
		return deltaHeader + chunkstore.MaxTreeBlob, true
	case fCommit:
		return maxCommit, true
	case fCommitted:
		return committedSize, true
	case fApply:
		return applyFixed + maxApplyTarget, true
	case fApplyReply:
		return maxApplyReply, true
	case fGet:
		return 4 + 32*maxGetIDs, true
	case fGot:
		return gotHeader + chunkstore.MaxTreeBlob, true
	}
	return 0, false
}

// ErrFrame is wrapped by every error about a malformed frame.
var ErrFrame = errors.New("malformed frame")

// readGrain is how much of a payload is read before more memory is given to
// it: a peer that declares a large frame and sends little costs little.
const readGrain = 1 << 20

// frameReader reads frames from a stream.
type frameReader struct {
	r   io.Reader
	hdr [frameHeaderSize]byte
}

// next reads one frame. The payload is appended to buf[:0], which is grown in
// steps of readGrain as bytes arrive, never to more than the declared
// length. io.EOF is returned only at a frame boundary.
func (fr *frameReader) next(buf []byte) (byte, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, nil, fmt.Errorf("%w: stream ends inside a frame header (%w)", ErrFrame, io.ErrUnexpectedEOF)
		}
		return 0, nil, err
	}
	t := fr.hdr[0]
	n := binary.BigEndian.Uint32(fr.hdr[1:])
	limit, known := maxPayload(t)
	if !known {
		return 0, nil, fmt.Errorf("%w: unknown frame type 0x%02x", ErrFrame, t)
	}
	if n > limit {
		return 0, nil, fmt.Errorf("%w: frame type 0x%02x declares %d bytes, at most %d allowed", ErrFrame, t, n, limit)
	}
	buf = buf[:0]
	for uint32(len(buf)) < n {
		step := int(min(n-uint32(len(buf)), readGrain))
		start := len(buf)
		buf = slices.Grow(buf, step)[:start+step]
		if got, err := io.ReadFull(fr.r, buf[start:]); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return 0, nil, fmt.Errorf("%w: stream ends inside a frame of type 0x%02x (%d of %d bytes) (%w)", ErrFrame, t, start+got, n, io.ErrUnexpectedEOF)
			}
			return 0, nil, err
		}
	}
	return t, buf, nil
}

// appendFrameHeader appends the header of a frame of type t with n payload
// bytes.
func appendFrameHeader(b []byte, t byte, n int) []byte {
	b = append(b, t)
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// writeFrame writes one frame.
func writeFrame(w io.Writer, t byte, payload []byte) error {
	var hdr [frameHeaderSize]byte
	appendFrameHeader(hdr[:0], t, len(payload))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}
