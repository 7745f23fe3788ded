package sync

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/tree"
)

// A hostile client speaks the protocol by hand (rawClient) and sends what
// understudy's own push never would: names that leave their directory,
// sizes far beyond what it sends, decompression bombs, streams cut short.
// Serve must refuse each, store nothing reachable, allocate little and
// never hang.

// allocated returns the bytes the heap gave out while f ran. Two
// collections first empty sync.Pools (the first moves their items to the
// victim cache, the second drops them), so that every session allocates its
// frame buffer: otherwise whether one does depends on what the last left
// in frameBufs, and under the race detector, which drops a random quarter
// of what is put in a pool, on chance.
func allocated(f func()) uint64 {
	runtime.GC()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// hostileEntry is one tree entry, encoded without the checks of tree.Encode.
type hostileEntry struct {
	name string
	typ  tree.Type
	blob index.ID // File: its one data extent
	size uint64
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// hostileTree encodes entries in the tree blob format, in the order given.
func hostileTree(entries ...hostileEntry) []byte {
	b := binary.AppendUvarint([]byte{tree.FormatVersion}, uint64(len(entries)))
	for _, e := range entries {
		b = appendString(b, e.name)
		b = append(b, byte(e.typ))
		b = binary.AppendUvarint(b, 0o644) // mode
		b = binary.AppendUvarint(b, 0)     // uid
		b = binary.AppendUvarint(b, 0)     // gid
		b = appendString(b, "")            // user
		b = appendString(b, "")            // group
		b = binary.AppendVarint(b, 1)      // mtime
		b = binary.AppendUvarint(b, 0)     // nsec
		b = binary.AppendUvarint(b, 0)     // flags
		b = binary.AppendUvarint(b, 0)     // xattrs
		b = appendString(b, "")            // link path
		switch e.typ {
		case tree.File:
			b = binary.AppendUvarint(b, 1)
			b = append(b, 0)
			b = append(b, e.blob[:]...)
			b = binary.AppendUvarint(b, e.size)
		case tree.Symlink:
			b = appendString(b, "/")
		}
	}
	return b
}

func rawStored(t index.BlobType, raw []byte) chunkstore.StoredBlob {
	return chunkstore.StoredBlob{ID: index.Hash(raw), Type: t, Compression: index.Raw, RawLength: uint32(len(raw)), Data: raw}
}

// commitFrame is the payload of a Commit of a snapshot of "/" whose root
// tree is root, and the snapshot's ID.
func commitFrame(t *testing.T, root index.ID) ([]byte, index.ID) {
	t.Helper()
	rootDir, err := snapshot.EncodeRootDir(tree.Node{Type: tree.Dir, Mode: 0o755, Subtree: root})
	if err != nil {
		t.Fatal(err)
	}
	rec := &snapshot.Record{Version: snapshot.RecordVersion, Time: time.Unix(1700000000, 0).UTC(), Root: root,
		RootDir: rootDir, Set: "evil", Host: "evil", Paths: []string{"/"}}
	b, err := rec.Encode()
	if err != nil {
		t.Fatal(err)
	}
	id := index.Hash(b)
	return encodeCommit(id, b), id
}

// commitBlob stores raw as a blob of type typ in the repository in dir,
// as an earlier session would have: a base for deltas.
func commitBlob(t *testing.T, dir string, typ index.BlobType, raw []byte) {
	t.Helper()
	r := openRepo(t, dir, chunkstore.Exclusive)
	defer r.Close()
	up := r.NewUploader()
	defer up.Close()
	if _, err := up.Save(context.Background(), typ, index.Hash(raw), raw); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Flush(nil); err != nil {
		t.Fatal(err)
	}
}

// deltaPayload encodes target as a Delta frame's payload against base.
func deltaPayload(t *testing.T, typ index.BlobType, base, target []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderDictRaw(deltaDict, base))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	d := delta{Type: typ, RawLength: uint32(len(target)), ID: index.Hash(target), Base: index.Hash(base), Data: enc.EncodeAll(target, nil)}
	return append(appendDeltaHeader(nil, d), d.Data...)
}

// expectCommitted reads the answer to a Commit, which must be Committed.
func expectCommitted(t *testing.T, fr *frameReader, id index.ID) {
	t.Helper()
	typ, p, err := fr.next(nil)
	if err != nil {
		t.Fatalf("after a commit: %v", err)
	}
	if typ == fError {
		re, _ := decodeError(p)
		t.Fatalf("commit refused: %v", re)
	}
	c, err := decodeCommitted(p)
	if typ != fCommitted || err != nil || c.Snapshot != id {
		t.Fatalf("after a commit: frame type %x, %+v, %v", typ, c, err)
	}
}

// TestServeRefusesHostileNames: a tree naming an entry "..", "a/b",
// "x\x00y", ".", "" or twice, sent whole or as a delta, is refused with
// the reason; the tree is not stored and the snapshot naming it is not
// committed. A tree with a good name, sent the same way, is (the control
// that shows the frames are right).
func TestServeRefusesHostileNames(t *testing.T) {
	data := []byte("the content of the file")
	dataID := index.Hash(data)
	file := func(name string) hostileEntry {
		return hostileEntry{name: name, typ: tree.File, blob: dataID, size: uint64(len(data))}
	}
	cases := []struct {
		name    string
		entries []hostileEntry
	}{
		{"dotdot", []hostileEntry{file("..")}},
		{"slash", []hostileEntry{file("a/b")}},
		{"absolute", []hostileEntry{file("/etc")}},
		{"nul", []hostileEntry{file("x\x00y")}},
		{"dot", []hostileEntry{file(".")}},
		{"empty", []hostileEntry{file("")}},
		{"symlink then file of the same name", []hostileEntry{{name: "etc", typ: tree.Symlink}, file("etc")}},
		{"control", []hostileEntry{file("ok")}},
	}
	for _, tc := range cases {
		for _, asDelta := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/delta=%v", tc.name, asDelta), func(t *testing.T) {
				dst := filepath.Join(t.TempDir(), "dst")
				initRepo(t, dst)
				treeBlob := hostileTree(tc.entries...)
				treeID := index.Hash(treeBlob)
				if asDelta {
					commitBlob(t, dst, index.DataBlob, data)
				}
				c, fr := rawClient(t, dst)
				var frames [][]byte
				if asDelta {
					frames = append(frames, frame(fDelta, deltaPayload(t, index.TreeBlob, data, treeBlob)))
				} else {
					frames = append(frames, frame(fBlob, blobFrame(rawStored(index.DataBlob, data))),
						frame(fBlob, blobFrame(rawStored(index.TreeBlob, treeBlob))))
				}
				commit, snapID := commitFrame(t, treeID)
				frames = append(frames, frame(fCommit, commit))
				// Serve may refuse the tree as it arrives, before the
				// Commit: its error frame waits to be read while the
				// rest is still being written, so the frames go from a
				// goroutine (a write fails once serve has ended).
				sent := make(chan struct{})
				go func() {
					defer close(sent)
					for _, f := range frames {
						if _, err := c.Write(f); err != nil {
							return
						}
					}
				}()
				if tc.name == "control" {
					expectCommitted(t, fr, snapID)
				} else {
					expectError(t, fr, "corrupt tree blob")
				}
				c.Close()
				<-sent
				checkRepo(t, dst)
				held := heldBlobs(t, dst)
				_, committed := rootOf(t, dst, snapID)
				if tc.name == "control" {
					if !held[treeID] || !committed {
						t.Fatalf("the good tree was not stored (%v) or its snapshot not committed (%v)", held[treeID], committed)
					}
					return
				}
				if held[treeID] || committed {
					t.Errorf("the hostile tree was stored (%v) or its snapshot committed (%v)", held[treeID], committed)
				}
				if len(held) > 1 {
					t.Errorf("the standby holds %d blobs; at most the file's data may be there", len(held))
				}
			})
		}
	}
}

// sessionAlloc runs a session of a hostile client on a fresh repository:
// the frames, then end of input; it returns serve's error and the bytes
// allocated from the start of serve to its end. before runs first, on the
// repository's directory.
func sessionAlloc(t *testing.T, before func(dir string), frames ...[]byte) (uint64, error) {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "dst")
	initRepo(t, dst)
	if before != nil {
		before(dst)
	}
	var c *pipeConn
	var sent error
	n := allocated(func() {
		c = serveDir(t, dst)
		go io.Copy(io.Discard, c)
		sent = writeFrame(c, fHello, hello{Version: ProtocolVersion}.encode())
		for _, f := range frames {
			if sent == nil {
				_, sent = c.Write(f)
			}
		}
		c.CloseWrite()
		select {
		case <-c.done:
		case <-time.After(time.Minute):
			t.Fatal("serve did not end within a minute")
		}
	})
	c.Close()
	checkRepo(t, dst)
	return n, c.err
}

func frame(typ byte, payload []byte) []byte {
	return append(appendFrameHeader(nil, typ, len(payload)), payload...)
}

// header is a frame header declaring n payload bytes, the payload left out.
func header(typ byte, n uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{typ}, n)
}

// TestServeHugeDeclarationsAllocateLittle: frames declaring 4 GiB (the
// most a frame header can say: its length is 32 bits, so 2^40 cannot be
// declared), a Blob frame declaring its maximum and sending 1 KiB, and
// blobs, Have lists and trees whose own counts and lengths are huge are all
// refused, and a session with one of them allocates little more than an
// empty session.
func TestServeHugeDeclarationsAllocateLittle(t *testing.T) {
	baseline, errBase := sessionAlloc(t, nil)
	if errBase != nil {
		t.Fatalf("an empty session: %v", errBase)
	}
	t.Logf("an empty session allocates %d bytes", baseline)

	id := index.Hash([]byte("x"))
	hugeTree := binary.AppendUvarint([]byte{tree.FormatVersion}, 1<<60)
	longName := append(binary.AppendUvarint([]byte{tree.FormatVersion, 1}, 1<<40), make([]byte, 64)...)
	// 8 MiB of tree that declares as many extents as it could hold and
	// fails at the first, compressed to a few kilobytes.
	extents := hostileTree(hostileEntry{name: "f", typ: tree.FIFO})
	extents[4] = byte(tree.File) // after the version, the count and the name
	extents = binary.AppendUvarint(extents, (8<<20)/2-64)
	extents = append(extents, make([]byte, 8<<20-len(extents))...)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	extentsStored := chunkstore.StoredBlob{ID: index.Hash(extents), Type: index.TreeBlob, Compression: index.Zstd,
		RawLength: uint32(len(extents)), Data: enc.EncodeAll(extents, nil)}
	enc.Close()
	t.Logf("an 8 MiB tree declaring %d extents is %d bytes compressed", (8<<20)/2-64, len(extentsStored.Data))

	type hostile struct {
		name   string
		frames [][]byte
		want   string
		slack  uint64 // allowed beyond the baseline
	}
	var cases []hostile
	for _, typ := range []byte{fHello, fWelcome, fError, fBegin, fReady, fHave, fHaveReply, fBlob, fDelta, fCommit, fCommitted, fApply, fApplyReply} {
		cases = append(cases, hostile{fmt.Sprintf("frame 0x%02x of 4 GiB", typ), [][]byte{header(typ, 1<<32-1)}, "at most", 1 << 20})
	}
	cases = append(cases,
		hostile{"unknown frame of 4 GiB", [][]byte{header(0x7f, 1<<32-1)}, "unknown frame type", 1 << 20},
		hostile{"blob frame of 256 MiB sending 1 KiB", [][]byte{header(fBlob, maxBlobPayload), make([]byte, 1024)}, "stream ends inside a frame", 2 << 20},
		hostile{"have of 2^32-1 IDs", [][]byte{frame(fHave, binary.BigEndian.AppendUint32(nil, 1<<32-1))}, "declares", 1 << 20},
		hostile{"data blob of raw length 2^32-1", [][]byte{frame(fBlob, appendBlobHeader(nil, chunkstore.StoredBlob{ID: id, Type: index.DataBlob, Compression: index.Zstd, RawLength: 1<<32 - 1}))}, "exceeds", 1 << 20},
		hostile{"delta of raw length 2^32-1", [][]byte{frame(fDelta, append(appendDeltaHeader(nil, delta{Type: index.TreeBlob, RawLength: 1<<32 - 1, ID: id, Base: id}), 0))}, "exceeds", 1 << 20},
		hostile{"tree of 2^60 entries", [][]byte{frame(fBlob, blobFrame(rawStored(index.TreeBlob, hugeTree)))}, "entry count", 1 << 20},
		hostile{"tree entry name of 2^40 bytes", [][]byte{frame(fBlob, blobFrame(rawStored(index.TreeBlob, longName)))}, "name length", 1 << 20},
		hostile{"8 MiB tree declaring 4 M extents", [][]byte{frame(fBlob, blobFrame(extentsStored))}, "zero blob ID", 2*8<<20 + 4<<20},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n, err := sessionAlloc(t, nil, tc.frames...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve: %v, want an error about %q", err, tc.want)
			}
			if n > baseline+tc.slack {
				t.Errorf("the session allocated %d bytes, an empty one %d", n, baseline)
			}
		})
	}
}

// zstdBomb returns a zstd frame of RLE blocks that decodes to total zero
// bytes, 4 bytes per 128 KiB: 1 GiB takes 32 KiB. The frame declares no
// content size.
func zstdBomb(total int64) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3} // magic, no content size, 128 KiB window
	const block = 128 << 10
	for left := total; left > 0; {
		n := min(left, block)
		left -= n
		hdr := uint32(n)<<3 | 1<<1 // RLE block of n bytes
		if left == 0 {
			hdr |= 1
		}
		b = append(b, byte(hdr), byte(hdr>>8), byte(hdr>>16), 0)
	}
	return b
}

// TestServeRefusesDecompressionBombs: Blob and Delta frames whose zstd data
// decodes to 1 GiB (beyond the declared raw length and beyond MaxTreeBlob)
// are refused, the session's memory stays near the declared raw length,
// and nothing of them is stored.
func TestServeRefusesDecompressionBombs(t *testing.T) {
	baseline, _ := sessionAlloc(t, nil)
	bomb := zstdBomb(1 << 30)
	base := []byte(strings.Repeat("a predecessor the standby holds ", 100))
	hold := func(dir string) { commitBlob(t, dir, index.DataBlob, base) }
	id := index.Hash(make([]byte, 64<<10))
	stored := func(typ index.BlobType, raw uint32) []byte {
		return frame(fBlob, blobFrame(chunkstore.StoredBlob{ID: id, Type: typ, Compression: index.Zstd, RawLength: raw, Data: bomb}))
	}
	deltaOf := func(typ index.BlobType, raw uint32) []byte {
		d := delta{Type: typ, RawLength: raw, ID: id, Base: index.Hash(base), Data: bomb}
		return frame(fDelta, append(appendDeltaHeader(nil, d), bomb...))
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		raw   uint32
	}{
		{"data blob of 64 KiB", stored(index.DataBlob, 64<<10), 64 << 10},
		{"tree blob of 1 MiB", stored(index.TreeBlob, 1<<20), 1 << 20},
		{"data delta of 64 KiB", deltaOf(index.DataBlob, 64<<10), 64 << 10},
		{"tree delta of 1 MiB", deltaOf(index.TreeBlob, 1<<20), 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A Have after the frame waits for data blobs to be verified.
			n, err := sessionAlloc(t, hold, tc.frame, frame(fHave, encodeHave(nil, []index.ID{id})))
			if err == nil || !strings.Contains(err.Error(), "exceeds") {
				t.Fatalf("serve: %v, want a refusal of the bomb", err)
			}
			t.Logf("%v; %d bytes allocated", err, n-baseline)
			if n > baseline+3*uint64(tc.raw)+4<<20 {
				t.Errorf("the session allocated %d bytes, an empty one %d", n, baseline)
			}
		})
	}
}

// recordingConn counts what the client reads and keeps what it writes.
type recordingConn struct {
	*pipeConn
	sent     bytes.Buffer
	received int
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.sent.Write(p)
	return c.pipeConn.Write(p)
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.pipeConn.Read(p)
	c.received += n
	return n, err
}

// serveStream runs Serve on a fresh repository in dir, gives it in as its
// whole input, reads at most outLimit bytes of its output (-1: all), and
// returns its error. A serve that does not end within deadline fails t.
func serveStream(t *testing.T, dir string, in []byte, outLimit int, deadline time.Duration) error {
	t.Helper()
	cr, cw := io.Pipe()
	sr, sw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		var repo *chunkstore.Repo
		open := func() (*chunkstore.Repo, error) {
			var err error
			repo, err = chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "serve"})
			return repo, err
		}
		err := Serve(context.Background(), open, cr, sw, ServeOptions{Program: "test"})
		if repo != nil {
			repo.Close()
		}
		cr.CloseWithError(io.ErrClosedPipe)
		sw.Close()
		done <- err
	}()
	go func() {
		cw.Write(in)
		cw.Close()
	}()
	go func() {
		if outLimit >= 0 {
			io.CopyN(io.Discard, sr, int64(outLimit))
			sr.CloseWithError(errors.New("connection cut by the test"))
			return
		}
		io.Copy(io.Discard, sr)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(deadline):
		cr.CloseWithError(errors.New("deadline"))
		sr.CloseWithError(errors.New("deadline"))
		t.Fatalf("serve did not end within %v", deadline)
		return nil
	}
}

// TestServeTruncatedPush replays a real push's client stream cut at every
// frame boundary, two bytes into every frame header and in the middle of
// every payload, and with serve's own output cut at several points. Serve
// always ends, within a deadline. A cut inside a frame is an error; a cut
// at a boundary is the end of a session, which is no error. Either way the
// repository passes check, holds exactly the blobs whose frames arrived
// whole (so that a resumed push sends each only once), and holds the
// snapshot, its record a blob too, only when its Commit arrived whole.
func TestServeTruncatedPush(t *testing.T) {
	base := t.TempDir()
	src, dst, root := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
	initRepo(t, src)
	initRepo(t, dst)
	for d := range 3 {
		for f := range 3 {
			p := filepath.Join(root, fmt.Sprintf("d%d", d), fmt.Sprintf("f%d", f))
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte(fmt.Sprintf("file %d of directory %d %s", f, d, strings.Repeat("z", 1000*f))), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	id := take(t, src, root)
	rc := &recordingConn{pipeConn: serveDir(t, dst)}
	if _, err := tryPush(src, rc, id); err != nil {
		t.Fatal(err)
	}
	stream := rc.sent.Bytes()

	// The frames of the stream: where each starts, its type and size.
	type span struct {
		typ        byte
		start, end int
	}
	var frames []span
	fr := frameReader{r: bytes.NewReader(stream)}
	for off := 0; off < len(stream); {
		typ, p, err := fr.next(nil)
		if err != nil {
			t.Fatalf("the recorded stream at %d: %v", off, err)
		}
		frames = append(frames, span{typ, off, off + frameHeaderSize + len(p)})
		off += frameHeaderSize + len(p)
	}
	t.Logf("a push of %d bytes in %d frames", len(stream), len(frames))

	type cut struct {
		at       int
		boundary bool
	}
	var cuts []cut
	for _, f := range frames {
		cuts = append(cuts, cut{f.start, true}, cut{f.start + 2, false})
		if f.end-f.start > frameHeaderSize+1 {
			cuts = append(cuts, cut{(f.start + frameHeaderSize + f.end) / 2, false})
		}
	}
	cuts = append(cuts, cut{len(stream), true})

	for _, c := range cuts {
		dir := filepath.Join(t.TempDir(), "dst")
		initRepo(t, dir)
		err := serveStream(t, dir, stream[:c.at], -1, 30*time.Second)
		var blobs int
		committed := false
		for _, f := range frames {
			if f.end > c.at {
				break
			}
			switch f.typ {
			case fBlob, fDelta:
				blobs++
			case fCommit:
				committed = true
				blobs++ // the record, a snapshot blob in the last pack
			}
		}
		switch {
		case c.at == 0:
			if err == nil {
				t.Errorf("an empty stream: no error")
			}
		case c.boundary:
			if err != nil {
				t.Errorf("cut at the frame boundary %d: %v", c.at, err)
			}
		default:
			if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("cut at %d inside a frame: %v, want an error saying the stream ended inside a frame", c.at, err)
			}
		}
		checkRepo(t, dir)
		if held := heldBlobs(t, dir); len(held) != blobs {
			t.Errorf("cut at %d: the standby holds %d blobs, %d arrived whole", c.at, len(held), blobs)
		}
		if _, ok := rootOf(t, dir, id); ok != committed {
			t.Errorf("cut at %d: snapshot committed %v, its Commit arrived whole %v", c.at, ok, committed)
		}
	}

	// Serve's own output cut: it fails to answer, ends, and keeps what it
	// verified.
	t.Logf("serve answered with %d bytes", rc.received)
	for _, out := range []int{0, 3, rc.received / 4, rc.received / 2, rc.received - 1} {
		dir := filepath.Join(t.TempDir(), "dst")
		initRepo(t, dir)
		err := serveStream(t, dir, stream, out, 30*time.Second)
		if err == nil {
			t.Errorf("serve's output cut after %d bytes: no error", out)
		}
		checkRepo(t, dir)
	}
}
