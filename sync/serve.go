package sync

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	stdsync "sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/chunkstore/faultpoint"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/tree"
)

// ServeOptions configure Serve.
type ServeOptions struct {
	// AppendOnly refuses every request that would delete anything from the
	// repository. No request of this protocol version deletes; the flag is
	// announced to the client so that it knows before it asks.
	AppendOnly bool
	// Program is understudy's version, told to the client.
	Program string
	// Log receives one line per committed snapshot, per apply and per
	// failure.
	Log *slog.Logger
	// Apply runs an apply the client asks for (Session.Apply); nil
	// announces no apply capability. It is called only for targets in
	// AllowTargets.
	Apply ApplyFunc
	// AllowTargets are the absolute paths an Apply request may name
	// (`serve --allow-target`); any other target is refused, so that a
	// client cannot make serve write elsewhere.
	AllowTargets []string
	// Syslog receives the refusals of applies, for the system log; nil
	// leaves them to Log.
	Syslog func(msg string)
}

// Serve speaks the replication protocol as the standby on r and w (stdin and
// stdout of `understudy serve`) until the client ends the session. open is
// called after a valid hello, so that a client always learns in-protocol why
// the repository could not be opened (locked, missing); the repository must
// be opened exclusively and is closed by the caller.
//
// Whatever ends the session, the blobs received and verified so far are
// sealed and committed before Serve returns, so that a resumed push does
// not send them again; a snapshot record is committed only on request, after
// the tree it names.
func Serve(ctx context.Context, open func() (*chunkstore.Repo, error), r io.Reader, w io.Writer, opts ServeOptions) (err error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &server{fr: frameReader{r: r}, bw: bufio.NewWriterSize(w, 64<<10), opts: opts}
	defer func() {
		if err != nil && !errors.Is(err, errPeerGone) && s.sendError(err) == nil {
			err = &ToldError{Err: err}
		}
	}()
	t, p, err := s.fr.next(nil)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	if t != fHello {
		return fmt.Errorf("%w: first frame has type 0x%02x, not hello", ErrFrame, t)
	}
	h, err := decodeHello(p)
	if err != nil {
		return err
	}
	if h.Version != ProtocolVersion {
		return &RemoteError{Code: codeVersion, Text: fmt.Sprintf("the standby speaks replication protocol version %d, the client %d: install the same understudy release on both hosts", ProtocolVersion, h.Version)}
	}
	repo, err := open()
	if err != nil {
		return &RemoteError{Code: codeNoRepo, Text: err.Error()}
	}
	s.repo = repo
	s.clientCaps = h.Caps
	welcome := Welcome{Version: ProtocolVersion, Caps: capsSpoken &^ capApply, Polynomial: uint64(repo.Config().Polynomial), Program: opts.Program}
	if opts.Apply != nil {
		welcome.Caps |= capApply
	}
	if id, err := hex.DecodeString(repo.Config().ID); err == nil && len(id) == 32 {
		copy(welcome.RepoID[:], id)
	}
	if opts.AppendOnly {
		welcome.Flags |= flagAppendOnly
	}
	if err := s.send(fWelcome, welcome.encode()); err != nil {
		return err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.cancel = cancel
	s.ctx = ctx
	s.up = repo.NewUploader()
	s.startVerifiers()
	defer func() {
		// Commit what arrived, whatever ended the session.
		close(s.jobs)
		s.verifiers.Wait()
		if _, ferr := s.up.Flush(nil); ferr != nil && err == nil {
			err = ferr
		}
		s.up.Close()
		s.treeDD.close()
		if err == nil {
			err = s.failed()
		}
	}()
	return s.loop()
}

// errPeerGone marks the end of a session by the client closing it.
var errPeerGone = errors.New("client went away")

type server struct {
	ctx    context.Context
	cancel context.CancelCauseFunc // ends the session on a blob's error
	fr     frameReader
	bw     *bufio.Writer
	opts   ServeOptions
	repo   *chunkstore.Repo
	up     *chunkstore.Uploader

	clientCaps uint64 // what the client's hello announced

	treeDD    deltaDecoder // for tree deltas, decoded by the frame loop itself
	jobs      chan blobJob
	verifiers stdsync.WaitGroup // the verifier goroutines
	inflight  stdsync.WaitGroup // data blobs handed to them, not yet saved
	errMu     stdsync.Mutex
	err       error
	verified  uint64 // guarded by errMu
}

type blobJob struct {
	buf   *[]byte
	sb    chunkstore.StoredBlob
	delta *delta // instead of sb
}

var frameBufs = stdsync.Pool{New: func() any { b := make([]byte, 0, 1<<20+maxBlobHeader); return &b }}

// putFrameBuf returns a frame buffer to the pool unless a large tree made it
// too big to keep.
func putFrameBuf(bp *[]byte) {
	if cap(*bp) <= 2*chunkstore.MaxDataBlob {
		frameBufs.Put(bp)
	}
}

func (s *server) startVerifiers() {
	n := runtime.GOMAXPROCS(0)
	s.jobs = make(chan blobJob, 2*n)
	for range n {
		s.verifiers.Add(1)
		go func() {
			defer s.verifiers.Done()
			var scratch []byte
			var dd deltaDecoder
			defer dd.close()
			for job := range s.jobs {
				if job.delta != nil {
					if s.failed() == nil {
						s.note(s.saveDelta(&dd, job.delta))
					}
				} else if s.failed() == nil {
					raw, err := s.repo.VerifyStored(job.sb, scratch)
					if err == nil {
						_, err = s.up.SaveStored(s.ctx, job.sb)
					}
					if job.sb.Compression != index.Raw {
						scratch = raw // a raw blob's content is the frame buffer itself
					}
					s.note(err)
				}
				putFrameBuf(job.buf)
				s.inflight.Done()
			}
		}()
	}
}

// note records the first error of a blob's verification or storing, which
// ends the session, or counts a verified blob.
func (s *server) note(err error) {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if err == nil {
		s.verified++
		return
	}
	if s.err == nil {
		s.err = err
		s.cancel(err)
	}
}

func (s *server) failed() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

// barrier waits until every data blob received so far is saved (or failed).
func (s *server) barrier() error {
	s.inflight.Wait()
	return s.failed()
}

func (s *server) loop() error {
	for {
		if err := s.failed(); err != nil {
			return err
		}
		bp := frameBufs.Get().(*[]byte)
		t, p, err := s.fr.next(*bp)
		if err != nil {
			putFrameBuf(bp)
			if err == io.EOF {
				return s.barrier()
			}
			if errors.Is(err, ErrFrame) && !errors.Is(err, io.ErrUnexpectedEOF) {
				return err
			}
			return fmt.Errorf("%w: %w", errPeerGone, err)
		}
		*bp = p
		handed, err := s.dispatch(bp, t, p)
		if !handed {
			putFrameBuf(bp)
		}
		if err != nil {
			return err
		}
	}
}

// dispatch acts on one frame. Data blobs go to the verifiers with their
// frame buffer (handed is then true); everything else is done here, in
// order.
func (s *server) dispatch(bp *[]byte, t byte, p []byte) (handed bool, err error) {
	switch t {
	case fBlob:
		sb, err := decodeBlob(p)
		if err != nil {
			return false, err
		}
		if sb.Type == index.DataBlob {
			return s.verify(blobJob{buf: bp, sb: sb})
		}
		return false, s.saveTree(sb)
	case fDelta:
		d, err := decodeDelta(p)
		if err != nil {
			return false, err
		}
		if d.Type == index.DataBlob {
			return s.verify(blobJob{buf: bp, delta: &d})
		}
		return false, s.saveTreeDelta(&d)
	}
	return false, s.handle(t, p)
}

// verify hands a data blob to the verifiers.
func (s *server) verify(job blobJob) (bool, error) {
	s.inflight.Add(1)
	select {
	case s.jobs <- job:
		return true, nil
	case <-s.ctx.Done():
		s.inflight.Done()
		return false, context.Cause(s.ctx)
	}
}

func (s *server) handle(t byte, p []byte) error {
	switch t {
	case fHave:
		ids, err := decodeHave(p)
		if err != nil {
			return err
		}
		if err := s.barrier(); err != nil {
			return err
		}
		held := make([]bool, len(ids))
		for i, id := range ids {
			if held[i], err = s.up.Has(id); err != nil {
				return err
			}
		}
		return s.send(fHaveReply, encodeHaveReply(held))
	case fBegin:
		_, set, err := decodeBegin(p)
		if err != nil {
			return err
		}
		if err := s.accepts(set); err != nil {
			return err
		}
		return s.send(fReady, nil)
	case fCommit:
		id, record, err := decodeCommit(p)
		if err != nil {
			return err
		}
		if err := s.barrier(); err != nil {
			return err
		}
		return s.commit(id, record)
	case fApply:
		return s.apply(p)
	case fGet:
		return s.get(p)
	case fError:
		re, err := decodeError(p)
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: the client stopped: %s", errPeerGone, re.Text)
	}
	return fmt.Errorf("%w: unexpected frame of type 0x%02x from the client", ErrFrame, t)
}

// deltaDecoder decodes Delta frames for one verifier goroutine.
type deltaDecoder struct {
	dec  *zstd.Decoder
	base []byte
	out  []byte
}

func (dd *deltaDecoder) close() {
	if dd.dec != nil {
		dd.dec.Close()
	}
}

// saveDelta rebuilds a data blob from a delta against a blob the standby
// holds, verifies it against its ID and stores it compressed as the
// standby's own blobs are.
func (s *server) saveDelta(dd *deltaDecoder, d *delta) error {
	if ok, err := s.up.Has(d.ID); err != nil || ok {
		return err
	}
	raw, err := s.undelta(dd, d)
	if err != nil {
		return err
	}
	_, err = s.up.Save(s.ctx, index.DataBlob, d.ID, raw)
	return err
}

// saveTreeDelta rebuilds a tree from a delta, then stores it like a Blob
// frame's tree.
func (s *server) saveTreeDelta(d *delta) error {
	if err := s.barrier(); err != nil {
		return err
	}
	raw, err := s.undelta(&s.treeDD, d)
	if err != nil {
		return err
	}
	return s.storeTree(d.ID, raw, func() error {
		_, err := s.up.Save(s.ctx, index.TreeBlob, d.ID, raw)
		return err
	})
}

// undelta decodes a delta against its predecessor, loaded (and verified)
// from the standby's repository, and checks the result against its ID.
func (s *server) undelta(dd *deltaDecoder, d *delta) ([]byte, error) {
	bad := func(err error) ([]byte, error) {
		return nil, &RemoteError{Code: codeBadInput, Text: fmt.Sprintf("delta for %s blob %s against %s: %v", d.Type, d.ID.Short(), d.Base.Short(), err)}
	}
	base, err := s.repo.LoadBlob(d.Base, dd.base)
	if err != nil {
		return bad(fmt.Errorf("predecessor: %w", err))
	}
	dd.base = base
	if dd.dec == nil {
		dd.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(chunkstore.MaxTreeBlob),
			zstd.WithDecoderMaxWindow(chunkstore.MaxTreeBlob), zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			return nil, err
		}
	}
	if err := dd.dec.ResetWithOptions(nil, zstd.WithDecoderDictRaw(deltaDict, base)); err != nil {
		return nil, err
	}
	if uint32(cap(dd.out)) < d.RawLength {
		dd.out = make([]byte, 0, d.RawLength)
	}
	raw, err := dd.dec.DecodeAll(d.Data, dd.out[:0:d.RawLength])
	if err != nil {
		return bad(err)
	}
	dd.out = raw
	if uint32(len(raw)) != d.RawLength {
		return bad(fmt.Errorf("decoded to %d bytes, expected %d", len(raw), d.RawLength))
	}
	if index.Hash(raw) != d.ID {
		return bad(chunkstore.ErrBlobHash)
	}
	return raw, nil
}

// saveTree verifies a tree blob, then stores it.
func (s *server) saveTree(sb chunkstore.StoredBlob) error {
	if err := s.barrier(); err != nil {
		return err
	}
	raw, err := s.repo.VerifyStored(sb, nil)
	if err != nil {
		return &RemoteError{Code: codeBadInput, Text: fmt.Sprintf("received tree: %v", err)}
	}
	return s.storeTree(sb.ID, raw, func() error {
		_, err := s.up.SaveStored(s.ctx, sb)
		return err
	})
}

// storeTree checks that a verified tree decodes and that every blob it names
// is already held, so that the index never holds a tree without what it
// names (the closure rule the client's walk relies on), then calls save.
func (s *server) storeTree(id index.ID, raw []byte, save func() error) error {
	t, err := tree.Decode(raw)
	if err != nil {
		return &RemoteError{Code: codeBadInput, Text: fmt.Sprintf("received tree %s: %v", id.Short(), err)}
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if n.Type == tree.Dir {
			if err := s.requireHeld(id, n.Name, n.Subtree); err != nil {
				return err
			}
			continue
		}
		for _, e := range n.Content {
			if !e.IsHole() {
				if err := s.requireHeld(id, n.Name, e.Blob); err != nil {
					return err
				}
			}
		}
	}
	err = save()
	s.note(err)
	return err
}

func (s *server) requireHeld(treeID index.ID, name string, id index.ID) error {
	ok, err := s.up.Has(id)
	if err != nil {
		return err
	}
	if !ok {
		return &RemoteError{Code: codeBadInput, Text: fmt.Sprintf("received tree %s names blob %s (entry %q) before sending it", treeID.Short(), id.Short(), name)}
	}
	return nil
}

// accepts refuses snapshots of a set this repository was promoted for.
func (s *server) accepts(set string) error {
	st, err := s.repo.Index().Standby(set)
	if err != nil {
		return err
	}
	if !st.Promoted.IsZero() {
		return &RemoteError{Code: codeRefused, Text: fmt.Sprintf("has been promoted at %s for set %q; it is now a primary (`understudy demote --set %s` there makes it a standby again)",
			st.Promoted.Local().Format(time.RFC3339), set, set)}
	}
	return nil
}

// commit stores a snapshot record once its root tree is held.
func (s *server) commit(id index.ID, record []byte) error {
	rec, err := snapshot.DecodeRecord(record)
	if err != nil {
		return &RemoteError{Code: codeBadInput, Text: fmt.Sprintf("snapshot %s: %v", id.Short(), err)}
	}
	if err := s.accepts(rec.Set); err != nil {
		return err
	}
	if err := s.requireHeld(id, "/", rec.Root); err != nil {
		return err
	}
	if _, ok, err := s.repo.Index().SnapshotRecord(id); err != nil {
		return err
	} else if !ok {
		faultpoint.Hit("serve-before-record") // every blob received and verified, the last packs not sealed, the record not stored
		got, err := s.up.Flush(record)
		if err != nil {
			return err
		}
		if got != id {
			return fmt.Errorf("snapshot record stored as %s, expected %s", got.Short(), id.Short())
		}
		s.opts.Log.Info("snapshot received", "snapshot", id.Short(), "set", rec.Set, "host", rec.Host, "time", rec.Time)
	}
	s.errMu.Lock()
	verified := s.verified
	s.errMu.Unlock()
	c := Committed{
		Snapshot:    id,
		BlobsAdded:  uint64(s.up.BlobsAdded.Load()),
		BytesAdded:  uint64(s.up.BytesAdded.Load()),
		PacksSealed: uint64(s.up.PacksSealed.Load()),
		Verified:    verified,
	}
	return s.send(fCommitted, c.encode())
}

func (s *server) send(t byte, p []byte) error {
	if err := writeFrame(s.bw, t, p); err != nil {
		return fmt.Errorf("%w: %w", errPeerGone, err)
	}
	if err := s.bw.Flush(); err != nil {
		return fmt.Errorf("%w: %w", errPeerGone, err)
	}
	return nil
}

// ToldError is an error that ended a session and was reported to the client
// in the protocol, so that it need not be shown again.
type ToldError struct{ Err error }

func (e *ToldError) Error() string { return e.Err.Error() }
func (e *ToldError) Unwrap() error { return e.Err }

// sendError tells the client why the session ends.
func (s *server) sendError(err error) error {
	code := codeFailed
	var re *RemoteError
	switch {
	case errors.As(err, &re):
		code = re.Code
	case errors.Is(err, ErrFrame):
		code = codeBadInput
	case errors.Is(err, syscall.ENOSPC):
		code = codeNoSpace
		err = fsmeta.NoSpace(err, "") // names the standby's filesystem
	}
	text := err.Error()
	if code != codeRefused {
		text = "standby: " + text
	}
	return s.send(fError, encodeError(code, text))
}
