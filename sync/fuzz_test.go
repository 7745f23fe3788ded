package sync

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
)

// FuzzFrames feeds arbitrary bytes to the frame reader and every frame's
// payload decoder (Apply and ApplyReply included): errors are fine, panics and large allocations are not
// (the reader grows a payload only as its bytes arrive).
func FuzzFrames(f *testing.F) {
	var seed []byte
	add := func(t byte, p []byte) { seed = appendFrameHeader(seed, t, len(p)); seed = append(seed, p...) }
	add(fHello, hello{Version: ProtocolVersion}.encode())
	add(fWelcome, Welcome{Version: ProtocolVersion, Program: "x"}.encode())
	add(fError, encodeError(codeFailed, "no"))
	id := index.Hash([]byte("x"))
	begin, _ := encodeBegin(id, "os")
	add(fBegin, begin)
	add(fReady, nil)
	add(fHave, encodeHave(nil, []index.ID{id, id}))
	add(fHaveReply, encodeHaveReply([]bool{true, false, true}))
	add(fBlob, append(appendBlobHeader(nil, chunkstore.StoredBlob{ID: id, Type: index.DataBlob, RawLength: 1}), 'x'))
	add(fDelta, append(appendDeltaHeader(nil, delta{Type: index.TreeBlob, RawLength: 3, ID: id, Base: id}), 1, 2, 3))
	add(fCommit, encodeCommit(index.Hash([]byte("{}")), []byte("{}")))
	add(fCommitted, Committed{Snapshot: id}.encode())
	apply, _ := applyRequest{Snapshot: id, Target: "/srv/standby"}.encode()
	add(fApply, apply)
	reply, _ := ApplyReply{Status: ApplyWaiting, Snapshot: id, DueAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), Stats: json.RawMessage(`{"created":1}`)}.encode()
	add(fApplyReply, reply)
	f.Add(seed)
	f.Add(appendFrameHeader(nil, fBlob, maxBlobPayload))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := frameReader{r: bytes.NewReader(data)}
		var buf []byte
		for {
			typ, p, err := fr.next(buf)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrFrame) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			if len(p) > len(data) {
				t.Fatalf("payload of %d bytes from %d bytes of input", len(p), len(data))
			}
			buf = p
			switch typ {
			case fHello:
				decodeHello(p)
			case fWelcome:
				if w, err := decodeWelcome(p); err == nil {
					if w2, err := decodeWelcome(w.encode()); err != nil || w2 != w {
						t.Fatalf("welcome does not round-trip: %+v %+v %v", w, w2, err)
					}
				}
			case fError:
				decodeError(p)
			case fBegin:
				if id, set, err := decodeBegin(p); err == nil {
					if b, err := encodeBegin(id, set); err != nil || !bytes.Equal(b, p) {
						t.Fatal("begin does not round-trip")
					}
				}
			case fHave:
				if ids, err := decodeHave(p); err == nil && !bytes.Equal(encodeHave(nil, ids), p) {
					t.Fatal("have does not round-trip")
				}
			case fHaveReply:
				if len(p) >= 4 {
					n := int(p[0])<<24 | int(p[1])<<16 | int(p[2])<<8 | int(p[3])
					if held, err := decodeHaveReply(p, n); err == nil && !bytes.Equal(encodeHaveReply(held), p) {
						t.Fatal("have reply does not round-trip")
					}
				}
			case fBlob:
				if b, err := decodeBlob(p); err == nil && !bytes.Equal(append(appendBlobHeader(nil, b), b.Data...), p) {
					t.Fatal("blob does not round-trip")
				}
			case fDelta:
				if d, err := decodeDelta(p); err == nil && !bytes.Equal(append(appendDeltaHeader(nil, d), d.Data...), p) {
					t.Fatal("delta does not round-trip")
				}
			case fCommit:
				decodeCommit(p)
			case fCommitted:
				if c, err := decodeCommitted(p); err == nil && !bytes.Equal(c.encode(), p) {
					t.Fatal("committed does not round-trip")
				}
			case fApply:
				if a, err := decodeApply(p); err == nil {
					if b, err := a.encode(); err != nil || !bytes.Equal(b, p) {
						t.Fatalf("apply does not round-trip: %+v %v", a, err)
					}
				}
			case fApplyReply:
				// A reply that decodes encodes within the limits, and its
				// encoding is stable (JSON need not keep the peer's bytes).
				if r, err := decodeApplyReply(p); err == nil {
					b, err := r.encode()
					if err != nil || len(b) > maxApplyReply {
						t.Fatalf("decoded apply reply %+v does not encode: %v", r, err)
					}
					r2, err := decodeApplyReply(b)
					if err != nil {
						t.Fatalf("apply reply %s does not decode again: %v", b, err)
					}
					if b2, err := r2.encode(); err != nil || !bytes.Equal(b, b2) {
						t.Fatalf("apply reply is not stable: %s, then %s (%v)", b, b2, err)
					}
				}
			}
		}
	})
}
