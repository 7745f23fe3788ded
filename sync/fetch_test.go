package sync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
)

// verifierRepo makes an empty repository to verify with.
func verifierRepo(t *testing.T) *chunkstore.Repo {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "verifier")
	initRepo(t, dir)
	r := openRepo(t, dir, chunkstore.Exclusive)
	t.Cleanup(func() { r.Close() })
	return r
}

func indexedBlobs(t *testing.T, dir string) []index.Blob {
	t.Helper()
	r := openRepo(t, dir, chunkstore.Shared)
	defer r.Close()
	var blobs []index.Blob
	if err := r.Index().ForEachBlob(func(b index.Blob) error { blobs = append(blobs, b); return nil }); err != nil {
		t.Fatal(err)
	}
	return blobs
}

// TestFetch asks a real serve for every blob of its repository (data,
// trees, the snapshot record) and for blobs it lacks, over more than one
// Get frame: each held blob arrives verified, in its stored form as the
// peer's pack holds it, the others as missing, all in the order asked;
// Holds agrees; and the session ends cleanly, the peer's repository
// unchanged.
func TestFetch(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "peer")
	initRepo(t, dir)
	tree := filepath.Join(t.TempDir(), "tree")
	writeTree(t, tree, map[string]string{"a": "alpha\n", "b/c": strings.Repeat("compressible ", 9000), "b/d": "delta\n"})
	take(t, dir, tree)
	held := indexedBlobs(t, dir)
	types := map[index.BlobType]int{}
	for _, b := range held {
		types[b.Type]++
	}
	if types[index.DataBlob] == 0 || types[index.TreeBlob] == 0 || types[index.SnapshotBlob] != 1 {
		t.Fatalf("the peer holds %v", types)
	}
	// Absent blobs first, enough to need a second Get frame, then the
	// held ones.
	var want []Want
	for i := range maxGetIDs + 3 {
		want = append(want, Want{ID: index.Hash(fmt.Appendf(nil, "absent %d", i)), Type: index.DataBlob})
	}
	for _, b := range held {
		want = append(want, Want{ID: b.ID, Type: b.Type})
	}
	v := verifierRepo(t)
	s, err := NewSession(context.Background(), serveDir(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CheckFetch(); err != nil {
		t.Fatal(err)
	}
	var got []Fetched
	if err := s.Fetch(context.Background(), v, want, func(f Fetched) error { got = append(got, f); return nil }); err != nil {
		t.Fatal(err)
	}
	ids := make([]index.ID, len(want))
	for i, w := range want {
		ids[i] = w.ID
	}
	holds, err := s.Holds(ids)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d answers to %d asked", len(got), len(want))
	}
	peer := openRepo(t, dir, chunkstore.Shared)
	defer peer.Close()
	for i, f := range got {
		if f.ID != want[i].ID {
			t.Fatalf("answer %d is for %s, asked %s", i, f.ID.Short(), want[i].ID.Short())
		}
		if i < maxGetIDs+3 {
			if !errors.Is(f.Missing, ErrPeerLacks) || holds[i] {
				t.Fatalf("absent blob %d: %v, holds %v", i, f.Missing, holds[i])
			}
			continue
		}
		b := held[i-maxGetIDs-3]
		sb, err := peer.ReadStored(b.ID, b.Location, nil)
		if err != nil {
			t.Fatal(err)
		}
		if f.Missing != nil || !holds[i] || f.Blob.ID != b.ID || f.Blob.Type != b.Type || f.Blob.Compression != b.Compression ||
			f.Blob.RawLength != b.RawLength || !bytes.Equal(f.Blob.Data, sb.Data) {
			t.Errorf("blob %s (%s): %v, holds %v; got %s %d %d bytes", b.ID.Short(), b.Type, f.Missing, holds[i], f.Blob.Type, f.Blob.Compression, len(f.Blob.Data))
		}
	}
	if after := indexedBlobs(t, dir); len(after) != len(held) {
		t.Errorf("the peer holds %d blobs after the fetch, %d before", len(after), len(held))
	}
}

// fakeServe is a hostile or old peer: it welcomes with caps, then answers
// each Get frame with answer's frames.
func fakeServe(t *testing.T, caps uint64, answer func(ids []index.ID) [][]byte) *pipeConn {
	t.Helper()
	cr, cw := io.Pipe()
	sr, sw := io.Pipe()
	c := &pipeConn{toServe: cw, fromServe: sr, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer sw.Close()
		fr := frameReader{r: cr}
		if _, _, err := fr.next(nil); err != nil {
			c.err = err
			return
		}
		writeFrame(sw, fWelcome, Welcome{Version: ProtocolVersion, Caps: caps, Program: "fake 0.1"}.encode())
		for {
			typ, p, err := fr.next(nil)
			if err != nil {
				if err != io.EOF {
					c.err = err
				}
				return
			}
			if typ != fGet {
				c.err = fmt.Errorf("frame 0x%02x", typ)
				return
			}
			ids, err := decodeGet(p)
			if err != nil {
				c.err = err
				return
			}
			for _, f := range answer(ids) {
				if _, err := sw.Write(f); err != nil {
					return
				}
			}
		}
	}()
	return c
}

func gotFrame(status byte, id index.ID, sb chunkstore.StoredBlob) []byte {
	p := append(appendGotHeader(nil, status, id, sb), sb.Data...)
	return append(appendFrameHeader(nil, fGot, len(p)), p...)
}

// TestFetchRefusesWrongBlob: a peer that sends bytes that do not hash to
// the ID asked, a blob of another type, or a decompression bomb gets each
// refused as ErrBadCopy, never passed on as a blob; one that answers for
// another ID than asked breaks the session.
func TestFetchRefusesWrongBlob(t *testing.T) {
	content := []byte(strings.Repeat("the good copy ", 100))
	id := index.Hash(content)
	v := verifierRepo(t)
	// A decompression bomb: 8 MiB of zeros in a few hundred bytes of zstd,
	// sent as a blob of raw length 4096.
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	bomb := enc.EncodeAll(make([]byte, 8<<20), nil)
	enc.Close()
	cases := []struct {
		name string
		sb   chunkstore.StoredBlob
	}{
		{"other bytes", chunkstore.StoredBlob{Type: index.DataBlob, Compression: index.Raw, RawLength: uint32(len(content)), Data: append(bytes.Clone(content[:len(content)-1]), '!')}},
		{"other type", chunkstore.StoredBlob{Type: index.TreeBlob, Compression: index.Raw, RawLength: uint32(len(content)), Data: content}},
		{"raw length", chunkstore.StoredBlob{Type: index.DataBlob, Compression: index.Raw, RawLength: uint32(len(content)) + 1, Data: content}},
		{"bomb", chunkstore.StoredBlob{Type: index.DataBlob, Compression: index.Zstd, RawLength: 4096, Data: bomb}},
		{"not zstd", chunkstore.StoredBlob{Type: index.DataBlob, Compression: index.Zstd, RawLength: 10, Data: []byte{0x28, 0xb5, 0x2f, 0xfd, 1}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeServe(t, capDelta|capFetch, func(ids []index.ID) [][]byte {
				return [][]byte{gotFrame(gotBlob, ids[0], tc.sb)}
			})
			defer c.Close()
			s, err := NewSession(context.Background(), c)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Abort()
			var got []Fetched
			err = s.Fetch(context.Background(), v, []Want{{ID: id, Type: index.DataBlob}}, func(f Fetched) error { got = append(got, f); return nil })
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || !errors.Is(got[0].Missing, ErrBadCopy) || got[0].Blob.Data != nil {
				t.Fatalf("got %+v", got)
			}
			t.Logf("refused: %v", got[0].Missing)
		})
	}

	// The good copy itself passes, from the same fake peer.
	c := fakeServe(t, capDelta|capFetch, func(ids []index.ID) [][]byte {
		return [][]byte{gotFrame(gotBlob, ids[0], chunkstore.StoredBlob{Type: index.DataBlob, Compression: index.Raw, RawLength: uint32(len(content)), Data: content}),
			gotFrame(gotUnreadable, ids[1], chunkstore.StoredBlob{})}
	})
	s, err := NewSession(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	var got []Fetched
	other := index.Hash([]byte("other"))
	if err := s.Fetch(context.Background(), v, []Want{{ID: id, Type: index.DataBlob}, {ID: other}}, func(f Fetched) error { got = append(got, f); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Missing != nil || !bytes.Equal(got[0].Blob.Data, content) || !errors.Is(got[1].Missing, ErrPeerUnreadable) {
		t.Fatalf("got %+v", got)
	}
	s.Abort()

	// An answer for another blob than asked ends the fetch.
	c = fakeServe(t, capDelta|capFetch, func(ids []index.ID) [][]byte {
		return [][]byte{gotFrame(gotAbsent, other, chunkstore.StoredBlob{})}
	})
	s, err = NewSession(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Fetch(context.Background(), v, []Want{{ID: id}}, func(Fetched) error { t.Error("answer passed on"); return nil })
	if !errors.Is(err, ErrFrame) {
		t.Errorf("answer for another ID: %v", err)
	}
	s.Abort()
}

// TestFetchOldPeer: a peer that does not announce capFetch is not asked,
// and the error says what to do; a client that did not announce it may not
// send Get frames to a serve.
func TestFetchOldPeer(t *testing.T) {
	c := fakeServe(t, capDelta|capApply, func([]index.ID) [][]byte { t.Error("an old peer was asked"); return nil })
	s, err := NewSession(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Fetch(context.Background(), verifierRepo(t), []Want{{ID: index.Hash(nil)}}, func(Fetched) error { return nil })
	if !errors.Is(err, ErrNoFetch) || !strings.Contains(err.Error(), "peer cannot send blobs: upgrade it") || !strings.Contains(err.Error(), "fake 0.1") {
		t.Errorf("fetch from an old peer: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "peer")
	initRepo(t, dir)
	sc := serveDir(t, dir)
	defer sc.Close()
	if err := writeFrame(sc, fHello, hello{Version: ProtocolVersion, Caps: capDelta}.encode()); err != nil {
		t.Fatal(err)
	}
	fr := frameReader{r: sc}
	if typ, p, err := fr.next(nil); err != nil || typ != fWelcome {
		t.Fatalf("no welcome: 0x%02x %v", typ, err)
	} else if w, err := decodeWelcome(p); err != nil || !w.CanFetch() {
		t.Fatalf("welcome %+v, %v: want capFetch", w, err)
	}
	if err := writeFrame(sc, fGet, encodeGet(nil, []index.ID{index.Hash(nil)})); err != nil {
		t.Fatal(err)
	}
	typ, p, err := fr.next(nil)
	if err != nil || typ != fError {
		t.Fatalf("get without the capability agreed: frame 0x%02x, %v; want an error", typ, err)
	}
	if re, err := decodeError(p); err != nil || re.Code != codeBadInput {
		t.Errorf("error %+v, %v; want bad input", re, err)
	}
}

// TestGetCodec pins the Get and Got payloads and their bounds.
func TestGetCodec(t *testing.T) {
	id := index.Hash([]byte("x"))
	p := encodeGet(nil, []index.ID{id})
	if want := append([]byte{0, 0, 0, 1}, id[:]...); !bytes.Equal(p, want) {
		t.Errorf("get: % x", p)
	}
	for _, bad := range [][]byte{nil, {0, 0, 0, 0}, {0, 0, 0, 2}, append([]byte{0, 0, 0x10, 0x01}, make([]byte, 32*4097)...)} {
		if _, err := decodeGet(bad); !errors.Is(err, ErrFrame) {
			t.Errorf("get of %d bytes accepted", len(bad))
		}
	}
	sb := chunkstore.StoredBlob{ID: id, Type: index.TreeBlob, Compression: index.Zstd, RawLength: 300, Data: []byte{1, 2, 3}}
	p = append(appendGotHeader(nil, gotBlob, id, sb), sb.Data...)
	want := append(append([]byte{gotBlob}, id[:]...), byte(index.TreeBlob), byte(index.Zstd), 0, 0, 1, 44, 1, 2, 3)
	if !bytes.Equal(p, want) {
		t.Errorf("got: % x", p)
	}
	g, err := decodeGot(p)
	if err != nil || g.Status != gotBlob || g.Blob.ID != id || g.Blob.RawLength != 300 || !bytes.Equal(g.Blob.Data, sb.Data) {
		t.Errorf("got decodes to %+v, %v", g, err)
	}
	for name, bad := range map[string][]byte{
		"short":          p[:gotFixed-1],
		"absent, more":   append(append([]byte{gotAbsent}, id[:]...), 0),
		"status":         append([]byte{9}, id[:]...),
		"type":           append(append([]byte{gotBlob}, id[:]...), 9, 0, 0, 0, 0, 1, 'x'),
		"compression":    append(append([]byte{gotBlob}, id[:]...), 1, 7, 0, 0, 0, 1, 'x'),
		"raw length":     append(append([]byte{gotBlob}, id[:]...), 1, 0, 0x00, 0x80, 0x00, 0x01, 'x'),
		"no blob header": append([]byte{gotBlob}, id[:]...),
	} {
		if _, err := decodeGot(bad); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: accepted", name)
		}
	}
	if n, _ := maxPayload(fGet); n != 4+32*4096 {
		t.Errorf("get max %d", n)
	}
}

// FuzzFetchFrames feeds arbitrary bytes to the frame reader and the Get and
// Got decoders: errors are fine; panics, large allocations and payloads
// that do not round-trip are not. A Got blob that decodes goes through the
// client's verification, with the repository's bounded zstd decoder, and
// passes only if it hashes to its ID (declared raw lengths are kept small
// here: the allocation up to a raw length the blob type allows is the
// codec's own).
func FuzzFetchFrames(f *testing.F) {
	id := index.Hash([]byte("x"))
	var seed []byte
	add := func(t byte, p []byte) { seed = appendFrameHeader(seed, t, len(p)); seed = append(seed, p...) }
	add(fGet, encodeGet(nil, []index.ID{id, index.Hash(nil)}))
	add(fGot, append(appendGotHeader(nil, gotBlob, id, chunkstore.StoredBlob{Type: index.DataBlob, RawLength: 1}), 'x'))
	add(fGot, appendGotHeader(nil, gotAbsent, id, chunkstore.StoredBlob{}))
	add(fGot, appendGotHeader(nil, gotUnreadable, id, chunkstore.StoredBlob{}))
	f.Add(seed)
	f.Add(appendFrameHeader(nil, fGot, gotHeader+chunkstore.MaxTreeBlob))
	dir := filepath.Join(f.TempDir(), "repo")
	if _, err := chunkstore.Init(dir, chunkstore.InitOptions{}); err != nil {
		f.Fatal(err)
	}
	v, err := chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { v.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := frameReader{r: bytes.NewReader(data)}
		var scratch []byte
		for {
			typ, p, err := fr.next(nil)
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrFrame) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			if len(p) > len(data) {
				t.Fatalf("payload of %d bytes from %d bytes of input", len(p), len(data))
			}
			switch typ {
			case fGet:
				if ids, err := decodeGet(p); err == nil && !bytes.Equal(encodeGet(nil, ids), p) {
					t.Fatal("get does not round-trip")
				}
			case fGot:
				g, err := decodeGot(p)
				if err != nil {
					continue
				}
				if !bytes.Equal(append(appendGotHeader(nil, g.Status, g.ID, g.Blob), g.Blob.Data...), p) {
					t.Fatal("got does not round-trip")
				}
				if g.Status != gotBlob || g.Blob.RawLength > 1<<20 {
					continue
				}
				sb, err := verifyFetched(v, Want{ID: g.ID, Type: g.Blob.Type}, g.Blob, &scratch)
				if err == nil {
					raw, err := v.VerifyStored(sb, nil)
					if err != nil || index.Hash(raw) != g.ID {
						t.Fatalf("blob %s passed verification but does not hash to its ID (%v)", g.ID.Short(), err)
					}
				} else if !errors.Is(err, ErrBadCopy) {
					t.Fatalf("refusal that is not ErrBadCopy: %v", err)
				}
			}
		}
	})
}
