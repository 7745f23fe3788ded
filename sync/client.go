package sync

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	stdsync "sync"
	"sync/atomic"
	"time"
)

// Conn is a byte stream to a running `understudy serve`: a child process on
// a pipe, or a remote command over SSH.
type Conn interface {
	io.Reader
	io.Writer
	// CloseWrite ends the session: serve sees end of input, commits what
	// it received and exits.
	CloseWrite() error
	// Wait waits for serve to exit and reports how it did.
	Wait() error
	// Close aborts: the connection (or the child) is torn down.
	Close() error
}

// Session is an open replication session with one standby.
type Session struct {
	// NoDelta sends every data blob as stored, never as a delta against
	// its predecessor (to measure what deltas save).
	NoDelta bool

	conn    Conn
	bw      *bufio.Writer
	out     countingWriter
	in      countingReader
	welcome Welcome
	start   time.Time

	replies chan reply // frames from serve, read by readLoop
	rerr    atomic.Pointer[error]
	done    chan struct{} // closed when readLoop returns

	quit  chan struct{} // closed when the session is torn down
	qonce stdsync.Once
}

type reply struct {
	t byte
	p []byte
}

type countingWriter struct {
	w io.Writer
	n atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// NewSession says hello on conn and waits for the standby's welcome. On
// error conn is closed.
func NewSession(ctx context.Context, conn Conn) (*Session, error) {
	s := &Session{conn: conn, start: time.Now(), replies: make(chan reply, 4), done: make(chan struct{}), quit: make(chan struct{})}
	s.out.w = conn
	s.in.r = conn
	s.bw = bufio.NewWriterSize(&s.out, 1<<20)
	go s.readLoop()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := s.send(fHello, hello{Version: ProtocolVersion, Caps: capsSpoken}.encode()); err != nil {
		s.Abort()
		return nil, err
	}
	if err := s.flush(); err != nil {
		s.Abort()
		return nil, err
	}
	p, err := s.expect(fWelcome)
	if err != nil {
		s.Abort()
		return nil, err
	}
	if s.welcome, err = decodeWelcome(p); err != nil {
		s.Abort()
		return nil, err
	}
	if s.welcome.Version != ProtocolVersion {
		s.Abort()
		return nil, fmt.Errorf("the standby speaks replication protocol version %d, this understudy %d: install the same release on both hosts", s.welcome.Version, ProtocolVersion)
	}
	return s, nil
}

// Welcome returns what the standby said of itself.
func (s *Session) Welcome() Welcome { return s.welcome }

// readLoop hands serve's frames to expect. An Error frame, a malformed frame
// or the end of the stream ends it; the reason is kept for the writer, whose
// writes then fail because the connection is closed.
func (s *Session) readLoop() {
	defer close(s.done)
	defer close(s.replies)
	fr := frameReader{r: &s.in}
	for {
		t, p, err := fr.next(nil)
		if err == nil && t == fError {
			var re *RemoteError
			if re, err = decodeError(p); err == nil {
				err = re
			}
		}
		if err != nil {
			if err == io.EOF {
				err = errors.New("the standby ended the session")
			}
			s.rerr.CompareAndSwap(nil, &err)
			if _, remote := err.(*RemoteError); remote {
				s.conn.Close()
			}
			return
		}
		select {
		case s.replies <- reply{t, p}:
		case <-s.quit:
			return
		}
	}
}

// remoteErr returns why readLoop stopped, if it did.
func (s *Session) remoteErr() error {
	if p := s.rerr.Load(); p != nil {
		return *p
	}
	return nil
}

// expect waits for the next frame from serve, which must be of type t.
func (s *Session) expect(t byte) ([]byte, error) {
	r, ok := <-s.replies
	if !ok {
		<-s.done
		return nil, s.remoteErr()
	}
	if r.t != t {
		return nil, fmt.Errorf("%w: expected frame type 0x%02x from the standby, got 0x%02x", ErrFrame, t, r.t)
	}
	return r.p, nil
}

// send buffers one frame. A write error is replaced by the standby's own
// reason when it gave one.
func (s *Session) send(t byte, p []byte) error {
	if err := writeFrame(s.bw, t, p); err != nil {
		return s.writeErr(err)
	}
	return nil
}

func (s *Session) flush() error {
	if err := s.bw.Flush(); err != nil {
		return s.writeErr(err)
	}
	return nil
}

// writeErr prefers the standby's reason for a broken connection, waiting a
// moment for it to arrive.
func (s *Session) writeErr(err error) error {
	select {
	case <-s.done:
	case <-time.After(2 * time.Second):
	}
	if re := s.remoteErr(); re != nil {
		return re
	}
	return fmt.Errorf("write to the standby: %w", err)
}

// Close ends the session cleanly: serve commits what it received and exits.
func (s *Session) Close() error {
	err := s.flush()
	if cerr := s.conn.CloseWrite(); err == nil && cerr != nil {
		err = cerr
	}
	s.qonce.Do(func() { close(s.quit) })
	<-s.done
	if werr := s.conn.Wait(); err == nil && werr != nil {
		err = werr
		if re := s.remoteErr(); re != nil {
			if _, ok := re.(*RemoteError); ok {
				err = re
			}
		}
	}
	s.conn.Close()
	return err
}

// Abort tears the session down without waiting for serve.
func (s *Session) Abort() {
	s.qonce.Do(func() { close(s.quit) })
	s.conn.Close()
	<-s.done
	s.conn.Wait()
}

// Wire returns the bytes written to and read from the connection so far.
func (s *Session) Wire() (out, in int64) { return s.out.n.Load(), s.in.n.Load() }
