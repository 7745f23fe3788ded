package sync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/testtree"
)

func initRepo(t *testing.T, dir string) {
	t.Helper()
	if _, err := chunkstore.Init(dir, chunkstore.InitOptions{}); err != nil {
		t.Fatal(err)
	}
}

func openRepo(t *testing.T, dir string, mode chunkstore.LockMode) *chunkstore.Repo {
	t.Helper()
	r, err := chunkstore.Open(dir, chunkstore.OpenOptions{Mode: mode, What: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// take snapshots root (as "/") into the repository in dir.
func take(t *testing.T, dir, root string) index.ID {
	t.Helper()
	r := openRepo(t, dir, chunkstore.Exclusive)
	defer r.Close()
	sel, err := selection.New([]string{"/"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	res, err := snapshot.Take(context.Background(), r, snapshot.Options{Root: root, Selection: sel, Set: "test", Host: "test",
		Warn: func(p string, err error) { t.Errorf("snapshot: %s: %v", p, err) }})
	if err != nil {
		t.Fatal(err)
	}
	return res.ID
}

// pipeConn runs Serve in this process on the other end of two pipes.
type pipeConn struct {
	toServe   *io.PipeWriter
	fromServe *io.PipeReader
	done      chan struct{}
	err       error
}

func (c *pipeConn) Read(p []byte) (int, error)  { return c.fromServe.Read(p) }
func (c *pipeConn) Write(p []byte) (int, error) { return c.toServe.Write(p) }
func (c *pipeConn) CloseWrite() error           { return c.toServe.Close() }
func (c *pipeConn) Wait() error                 { <-c.done; return c.err }
func (c *pipeConn) Close() error {
	c.toServe.CloseWithError(errors.New("connection closed"))
	c.fromServe.CloseWithError(errors.New("connection closed"))
	<-c.done
	return nil
}

// serveDir starts Serve on the repository in dir.
func serveDir(t *testing.T, dir string) *pipeConn {
	t.Helper()
	return serveDirWith(t, dir, ServeOptions{Program: "test"})
}

// serveDirWith starts Serve with opts on the repository in dir.
func serveDirWith(t *testing.T, dir string, opts ServeOptions) *pipeConn {
	t.Helper()
	cr, cw := io.Pipe() // client → serve
	sr, sw := io.Pipe() // serve → client
	c := &pipeConn{toServe: cw, fromServe: sr, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		var repo *chunkstore.Repo
		open := func() (*chunkstore.Repo, error) {
			var err error
			repo, err = chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "serve"})
			return repo, err
		}
		c.err = Serve(context.Background(), open, cr, sw, opts)
		if repo != nil {
			repo.Close()
		}
		cr.CloseWithError(io.ErrClosedPipe)
		sw.Close()
	}()
	return c
}

// push sends snapshot id from the repository src to dst in one session.
func push(t *testing.T, src, dst string, id index.ID) PushStats {
	t.Helper()
	st, err := tryPush(src, serveDir(t, dst), id)
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	return st
}

func tryPush(src string, conn Conn, id index.ID) (PushStats, error) {
	r, err := chunkstore.Open(src, chunkstore.OpenOptions{Mode: chunkstore.Shared, What: "push"})
	if err != nil {
		return PushStats{}, err
	}
	defer r.Close()
	s, err := NewSession(context.Background(), conn)
	if err != nil {
		return PushStats{}, err
	}
	st, err := s.Push(context.Background(), r, id)
	if err != nil {
		s.Abort()
		return st, err
	}
	return st, s.Close()
}

// checkRepo runs the equivalent of check --read-data on dir: packs, blobs
// and the trees of every snapshot. Harmless notes are allowed.
func checkRepo(t *testing.T, dir string) {
	t.Helper()
	r := openRepo(t, dir, chunkstore.Exclusive)
	defer r.Close()
	bad := map[index.ID]bool{}
	err := r.Check(context.Background(), chunkstore.CheckOptions{ReadData: true}, func(p chunkstore.Problem) {
		if !p.Harmless {
			t.Errorf("check %s: %v", dir, p)
			bad[p.Blob] = true
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := snapshot.CheckTrees(context.Background(), r.Index(), r, bad, func(p snapshot.TreeProblem) {
		t.Errorf("check %s: %v", dir, p)
	}); err != nil {
		t.Fatal(err)
	}
}

// rootOf returns the root tree of snapshot id in the repository in dir, and
// whether it is there.
func rootOf(t *testing.T, dir string, id index.ID) (index.ID, bool) {
	t.Helper()
	r := openRepo(t, dir, chunkstore.Shared)
	defer r.Close()
	rec, ok, err := r.Index().SnapshotRecord(id)
	if err != nil || !ok {
		return index.ID{}, false
	}
	d, err := snapshot.DecodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	return d.Root, true
}

func TestPushEveryFileType(t *testing.T) {
	base := t.TempDir()
	src, dst, tree := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
	initRepo(t, src)
	initRepo(t, dst)
	os.Mkdir(tree, 0o755)
	testtree.Every(t, tree)
	id := take(t, src, tree)
	st := push(t, src, dst, id)
	if st.AlreadyThere || st.DataSent == 0 || st.TreesSent == 0 {
		t.Fatalf("first push sent nothing: %+v", st)
	}
	checkRepo(t, dst)
	want, _ := rootOf(t, src, id)
	if got, ok := rootOf(t, dst, id); !ok || got != want {
		t.Fatalf("standby has root %s (%v), want %s", got.Short(), ok, want.Short())
	}
	again := push(t, src, dst, id)
	if !again.AlreadyThere || again.DataSent != 0 || again.WireOut > 200 {
		t.Fatalf("second push of the same snapshot: %+v", again)
	}
}

// bigTree writes dirs×files small distinct files.
func bigTree(t *testing.T, root string, dirs, files int) {
	t.Helper()
	for d := range dirs {
		dir := filepath.Join(root, fmt.Sprintf("d%03d", d/10), fmt.Sprintf("e%03d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range files {
			body := fmt.Sprintf("file %d of dir %d\n%s", f, d, strings.Repeat("x", f%97))
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%04d", f)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestPushOfSmallChangeIsSmall: ten changed files in a tree of 5 000 cost
// a few kilobytes of negotiation, and only their blobs travel.
func TestPushOfSmallChangeIsSmall(t *testing.T) {
	base := t.TempDir()
	src, dst, tree := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
	initRepo(t, src)
	initRepo(t, dst)
	bigTree(t, tree, 100, 50)
	id1 := take(t, src, tree)
	push(t, src, dst, id1)
	for i := range 10 {
		p := filepath.Join(tree, fmt.Sprintf("d%03d", i), fmt.Sprintf("e%03d", i*10), "f0007")
		if err := os.WriteFile(p, []byte(fmt.Sprintf("changed %d", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	id2 := take(t, src, tree)
	st := push(t, src, dst, id2)
	t.Logf("%+v", st)
	if st.Base == nil || *st.Base != id1 {
		t.Errorf("base = %v, want %s", st.Base, id1.Short())
	}
	if st.DataSent != 10 {
		t.Errorf("sent %d data blobs, want 10", st.DataSent)
	}
	// Each changed file changes its directory, its parent and the root.
	if st.TreesSent != 21 || st.TreesWalked != 21 {
		t.Errorf("walked %d and sent %d trees, want 21", st.TreesWalked, st.TreesSent)
	}
	// The changed trees travel as deltas against the base's trees.
	if st.TreeDeltas != 21 {
		t.Errorf("%d trees sent as deltas, want 21", st.TreeDeltas)
	}
	negotiation := st.WireOut - st.BytesSent
	if negotiation > 8<<10 || st.WireIn > 1<<10 || st.WireOut > 16<<10 {
		t.Errorf("sent %d bytes (%d of them for blobs) and received %d", st.WireOut, st.BytesSent, st.WireIn)
	}
	checkRepo(t, dst)

	// A renamed directory of 500 files sends only the trees above it.
	if err := os.Rename(filepath.Join(tree, "d005"), filepath.Join(tree, "d005-renamed")); err != nil {
		t.Fatal(err)
	}
	id3 := take(t, src, tree)
	st = push(t, src, dst, id3)
	t.Logf("%+v", st)
	if st.DataSent != 0 || st.TreesSent != 1 || st.WireOut > 2<<10 {
		t.Errorf("after a rename: %+v", st)
	}
	checkRepo(t, dst)
}

// breakAfter is a writer that fails for good after n bytes.
type breakAfter struct {
	w    io.WriteCloser
	mu   stdsync.Mutex
	left int
}

func (b *breakAfter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.left <= 0 {
		return 0, errors.New("connection broken by the test")
	}
	if len(p) > b.left {
		n, _ := b.w.Write(p[:b.left])
		b.left = 0
		b.w.Close()
		return n, errors.New("connection broken by the test")
	}
	b.left -= len(p)
	return b.w.Write(p)
}

// brokenConn is a pipeConn whose client→serve stream breaks after n bytes.
type brokenConn struct {
	*pipeConn
	b *breakAfter
}

func (c *brokenConn) Write(p []byte) (int, error) { return c.b.Write(p) }

// TestPushResumes breaks the stream at several points: after each the
// standby is valid, and the final push sends only blobs the standby did not
// commit before it.
func TestPushResumes(t *testing.T) {
	base := t.TempDir()
	src, dst, tree := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
	initRepo(t, src)
	initRepo(t, dst)
	// 40 MiB that does not compress: several data packs.
	rng := rand.NewChaCha8([32]byte{1})
	for i := range 40 {
		b := make([]byte, 1<<20)
		rng.Read(b)
		os.MkdirAll(filepath.Join(tree, "big"), 0o755)
		if err := os.WriteFile(filepath.Join(tree, "big", fmt.Sprint(i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bigTree(t, tree, 20, 50)
	id := take(t, src, tree)
	for _, n := range []int{10, 300, 4 << 20, 4 << 20, 4 << 20, 4 << 20, 4 << 20} {
		pc := serveDir(t, dst)
		bc := &brokenConn{pipeConn: pc, b: &breakAfter{w: pc.toServe, left: n}}
		_, err := tryPush(src, bc, id)
		if err == nil {
			t.Fatalf("push broken after %d bytes succeeded", n)
		}
		pc.Wait()
		checkRepo(t, dst)
		held := heldBlobs(t, dst)
		t.Logf("broken after %d bytes: %v; standby holds %d blobs", n, err, len(held))
	}
	held := heldBlobs(t, dst)
	st := push(t, src, dst, id)
	needed := neededBlobs(t, src, id)
	var missing int64
	for b := range needed {
		if !held[b] {
			missing++
		}
	}
	if st.DataSent+st.TreesSent != missing {
		t.Errorf("final push sent %d data blobs and %d trees, the standby lacked %d", st.DataSent, st.TreesSent, missing)
	}
	if missing == int64(len(needed)) {
		t.Errorf("nothing was committed by the broken pushes")
	}
	checkRepo(t, dst)
	want, _ := rootOf(t, src, id)
	if got, ok := rootOf(t, dst, id); !ok || got != want {
		t.Fatalf("standby has root %s (%v), want %s", got.Short(), ok, want.Short())
	}
}

func heldBlobs(t *testing.T, dir string) map[index.ID]bool {
	t.Helper()
	r := openRepo(t, dir, chunkstore.Exclusive)
	defer r.Close()
	held := map[index.ID]bool{}
	if err := r.Index().ForEachBlob(func(b index.Blob) error { held[b.ID] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	return held
}

// neededBlobs lists the trees and data blobs of snapshot id.
func neededBlobs(t *testing.T, dir string, id index.ID) map[index.ID]bool {
	t.Helper()
	r := openRepo(t, dir, chunkstore.Shared)
	defer r.Close()
	rec, _, err := r.Index().SnapshotRecord(id)
	if err != nil {
		t.Fatal(err)
	}
	d, err := snapshot.DecodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	need := map[index.ID]bool{}
	var walk func(index.ID)
	walk = func(tid index.ID) {
		if need[tid] {
			return
		}
		need[tid] = true
		tr, err := snapshot.LoadTree(r, tid)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range tr.Nodes {
			if !n.Subtree.IsZero() {
				walk(n.Subtree)
			}
			for _, e := range n.Content {
				if !e.IsHole() {
					need[e.Blob] = true
				}
			}
		}
	}
	walk(d.Root)
	return need
}

// rawClient speaks the protocol by hand, to send what a correct client
// never would.
func rawClient(t *testing.T, dst string) (*pipeConn, *frameReader) {
	t.Helper()
	c := serveDir(t, dst)
	if err := writeFrame(c, fHello, hello{Version: ProtocolVersion}.encode()); err != nil {
		t.Fatal(err)
	}
	fr := &frameReader{r: c}
	if typ, _, err := fr.next(nil); err != nil || typ != fWelcome {
		t.Fatalf("welcome: type %x, %v", typ, err)
	}
	return c, fr
}

// sendFrames writes frames to serve from a goroutine. Serve may refuse one
// and stop reading to send its Error before the test has written the next,
// and a write in the test's goroutine would then wait for a reader
// forever, with serve waiting for the test to read its Error. The test's
// Close ends a write still pending.
func sendFrames(c *pipeConn, frames ...[]byte) {
	go func() {
		for _, f := range frames {
			if _, err := c.Write(f); err != nil {
				return
			}
		}
	}()
}

func expectError(t *testing.T, fr *frameReader, want string) {
	t.Helper()
	typ, p, err := fr.next(nil)
	if err != nil || typ != fError {
		t.Fatalf("expected an error frame, got type %x, %v", typ, err)
	}
	re, err := decodeError(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(re.Text, want) {
		t.Fatalf("error %q does not mention %q", re.Text, want)
	}
}

func storedOf(t *testing.T, dir string, id index.ID) chunkstore.StoredBlob {
	t.Helper()
	r := openRepo(t, dir, chunkstore.Shared)
	defer r.Close()
	loc, ok, err := r.Index().Lookup(id)
	if err != nil || !ok {
		t.Fatalf("lookup %s: %v %v", id.Short(), ok, err)
	}
	sb, err := r.ReadStored(id, loc, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func blobFrame(sb chunkstore.StoredBlob) []byte {
	return append(appendBlobHeader(nil, sb), sb.Data...)
}

// TestServeRefusesBadInput: a tree sent before the blobs it names, a blob
// that does not hash to its ID, a record whose tree is missing: each is
// refused with a message, and the standby stays valid and holds none of it.
func TestServeRefusesBadInput(t *testing.T) {
	base := t.TempDir()
	src, dst, tree := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
	initRepo(t, src)
	initRepo(t, dst)
	os.MkdirAll(filepath.Join(tree, "d"), 0o755)
	os.WriteFile(filepath.Join(tree, "d", "f"), []byte(strings.Repeat("data ", 1000)), 0o644)
	id := take(t, src, tree)
	root, _ := rootOf(t, src, id)
	rootBlob := storedOf(t, src, root)

	t.Run("tree before its blobs", func(t *testing.T) {
		c, fr := rawClient(t, dst)
		writeFrame(c, fBlob, blobFrame(rootBlob))
		expectError(t, fr, "before sending it")
		c.Close()
	})
	t.Run("corrupt blob", func(t *testing.T) {
		c, fr := rawClient(t, dst)
		sb := rootBlob
		sb.Type = index.DataBlob
		sb.ID[0] ^= 1
		sendFrames(c, frame(fBlob, blobFrame(sb)), frame(fHave, encodeHave(nil, []index.ID{sb.ID})))
		expectError(t, fr, "does not match its ID")
		c.Close()
	})
	t.Run("record without its tree", func(t *testing.T) {
		r := openRepo(t, src, chunkstore.Shared)
		rec, _, _ := r.Index().SnapshotRecord(id)
		r.Close()
		c, fr := rawClient(t, dst)
		writeFrame(c, fCommit, encodeCommit(id, rec))
		expectError(t, fr, "before sending it")
		c.Close()
	})
	t.Run("unknown frame", func(t *testing.T) {
		c, fr := rawClient(t, dst)
		c.Write([]byte{0x7f, 0, 0, 0, 0})
		expectError(t, fr, "unknown frame type")
		c.Close()
	})
	checkRepo(t, dst)
	if held := heldBlobs(t, dst); len(held) != 0 {
		t.Errorf("the standby stored %d blobs from bad input", len(held))
	}
}

func TestServeRefusesOtherVersion(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "dst")
	initRepo(t, dst)
	c := serveDir(t, dst)
	writeFrame(c, fHello, hello{Version: ProtocolVersion + 1}.encode())
	expectError(t, &frameReader{r: c}, "install the same understudy release")
	c.Close()
}

func TestServeReportsMissingRepository(t *testing.T) {
	c := serveDir(t, filepath.Join(t.TempDir(), "nothing"))
	_, err := NewSession(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), "not an understudy repository") {
		t.Fatalf("session with a missing repository: %v", err)
	}
}

func TestFrameDeclaringTooMuchAllocatesLittle(t *testing.T) {
	var hdr []byte
	hdr = appendFrameHeader(hdr, fBlob, maxBlobPayload)
	fr := frameReader{r: io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(make([]byte, 100)))}
	var before, after runtimeMem
	before.read()
	_, _, err := fr.next(nil)
	after.read()
	if !errors.Is(err, ErrFrame) || !strings.Contains(err.Error(), "stream ends inside") {
		t.Fatalf("truncated frame: %v", err)
	}
	if got := after.total - before.total; got > 4<<20 {
		t.Errorf("a frame declaring %d bytes and sending 100 allocated %d bytes", maxBlobPayload, got)
	}
	hdr = appendFrameHeader(nil, fHave, 4+32*maxHaveIDs+1)
	fr = frameReader{r: bytes.NewReader(hdr)}
	if _, _, err := fr.next(nil); !errors.Is(err, ErrFrame) || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("oversized frame: %v", err)
	}
}

// TestPushSendsDeltas: a few bytes changed in a large file travel as a
// delta against the chunk that held them before, a few hundred bytes rather
// than the whole chunk; without deltas the chunk travels whole.
func TestPushSendsDeltas(t *testing.T) {
	for _, noDelta := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoDelta=%v", noDelta), func(t *testing.T) {
			base := t.TempDir()
			src, dst, tree := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
			initRepo(t, src)
			initRepo(t, dst)
			os.Mkdir(tree, 0o755)
			big := make([]byte, 4<<20)
			rand.NewChaCha8([32]byte{3}).Read(big)
			name := filepath.Join(tree, "big")
			if err := os.WriteFile(name, big, 0o644); err != nil {
				t.Fatal(err)
			}
			push(t, src, dst, take(t, src, tree))
			copy(big[1<<20:], "sixteen changed!")
			copy(big[3<<20:], "sixteen changed!")
			if err := os.WriteFile(name, big, 0o644); err != nil {
				t.Fatal(err)
			}
			// And a new file: no predecessor, sent whole.
			if err := os.WriteFile(filepath.Join(tree, "new"), big[:100<<10], 0o644); err != nil {
				t.Fatal(err)
			}
			id := take(t, src, tree)
			conn := serveDir(t, dst)
			r := openRepo(t, src, chunkstore.Shared)
			s, err := NewSession(context.Background(), conn)
			if err != nil {
				t.Fatal(err)
			}
			s.NoDelta = noDelta
			st, err := s.Push(context.Background(), r, id)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			r.Close()
			t.Logf("%+v", st)
			if st.DataSent != 3 {
				t.Fatalf("sent %d data blobs, want the two changed chunks and the new file", st.DataSent)
			}
			if noDelta {
				if st.DeltasSent != 0 || st.BytesSent < 3*64<<10 {
					t.Errorf("without deltas: %d deltas, %d bytes", st.DeltasSent, st.BytesSent)
				}
			} else if st.DeltasSent != 2 || st.BytesSent > 100<<10+8192 {
				t.Errorf("with deltas: %d deltas, %d bytes", st.DeltasSent, st.BytesSent)
			}
			checkRepo(t, dst)
			rd := openRepo(t, dst, chunkstore.Shared)
			defer rd.Close()
			rootID, _ := rootOf(t, src, id)
			n, _, err := snapshot.Resolve(rd, rootID, "/big")
			if err != nil {
				t.Fatal(err)
			}
			var got []byte
			for _, e := range n.Content {
				b, err := rd.LoadBlob(e.Blob, nil)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, b...)
			}
			if !bytes.Equal(got, big) {
				t.Fatal("the standby's file differs from the source")
			}
		})
	}
}

// TestServeRefusesBadDelta: a delta against a blob the standby lacks, or
// one that decodes to other content, is refused and nothing is stored.
func TestServeRefusesBadDelta(t *testing.T) {
	base := t.TempDir()
	dst := filepath.Join(base, "dst")
	initRepo(t, dst)
	content := []byte(strings.Repeat("predecessor content ", 100))
	c, fr := rawClient(t, dst)
	d := delta{RawLength: uint32(len(content)), ID: index.Hash(content), Base: index.Hash([]byte("absent"))}
	d.Type = index.DataBlob
	d.Data = []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0}
	sendFrames(c, frame(fDelta, append(appendDeltaHeader(nil, d), d.Data...)), frame(fHave, encodeHave(nil, []index.ID{d.ID})))
	expectError(t, fr, "predecessor")
	c.Close()
	checkRepo(t, dst)
	if held := heldBlobs(t, dst); len(held) != 0 {
		t.Errorf("the standby stored %d blobs from bad input", len(held))
	}
}

// TestPushToPromotedSetIsRefused: once the standby is promoted for a set,
// pushes of that set are refused before anything is sent, and the standby
// gains nothing; after demote they are accepted again.
func TestPushToPromotedSetIsRefused(t *testing.T) {
	base := t.TempDir()
	src, dst, tree := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
	initRepo(t, src)
	initRepo(t, dst)
	os.Mkdir(tree, 0o755)
	os.WriteFile(filepath.Join(tree, "f"), []byte("first"), 0o644)
	push(t, src, dst, take(t, src, tree))
	at := time.Date(2026, 12, 1, 6, 30, 0, 0, time.UTC)
	setPromoted := func(when time.Time) {
		r := openRepo(t, dst, chunkstore.Exclusive)
		defer r.Close()
		if err := r.Index().UpdateStandby("test", func(st *index.StandbyState) error { st.Promoted = when; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	setPromoted(at)
	os.WriteFile(filepath.Join(tree, "f"), []byte("second, from an old primary"), 0o644)
	id := take(t, src, tree)
	before := heldBlobs(t, dst)
	st, err := tryPush(src, serveDir(t, dst), id)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "has been promoted at") {
		t.Fatalf("push to a promoted set: %v", err)
	}
	if st.WireOut > 512 || st.DataSent+st.TreesSent != 0 {
		t.Errorf("a refused push sent %d bytes, %d blobs", st.WireOut, st.DataSent+st.TreesSent)
	}
	if after := heldBlobs(t, dst); len(after) != len(before) {
		t.Errorf("the standby went from %d to %d blobs", len(before), len(after))
	}
	if _, ok := rootOf(t, dst, id); ok {
		t.Error("the refused snapshot is on the standby")
	}
	// The pre-flight question gets the same answer, sending nothing.
	accepts := func() error {
		s, err := NewSession(context.Background(), serveDir(t, dst))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Accepts(context.Background(), "test"); err != nil {
			s.Abort()
			return err
		}
		return s.Close()
	}
	if err := accepts(); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "has been promoted at") {
		t.Fatalf("Accepts of a promoted set: %v", err)
	}
	setPromoted(time.Time{})
	if err := accepts(); err != nil {
		t.Fatalf("Accepts after demote: %v", err)
	}
	if after := heldBlobs(t, dst); len(after) != len(before) {
		t.Errorf("asking changed the standby from %d to %d blobs", len(before), len(after))
	}
	push(t, src, dst, id)
	checkRepo(t, dst)
}
