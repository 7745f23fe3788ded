package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/user"
	"strings"
	stdsync "sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSHConn is a command running on a remote host over SSH: Read reads its
// stdout and Write writes its stdin. Read returns io.EOF when the command
// closes its stdout; Wait then tells whether it succeeded.
//
// Read and Write may be called from different goroutines; Close may be
// called from any goroutine to interrupt both.
type SSHConn struct {
	client  *ssh.Client
	session *ssh.Session
	stdin   io.WriteCloser
	stdout  io.Reader
	where   string // user@host:port, for messages
	command string

	stopCtx   func() bool
	closing   chan struct{} // closed by Close; stops the keepalive goroutine
	kaDone    chan struct{} // closed when the keepalive goroutine returns
	closeOnce stdsync.Once
	closeErr  error

	mu     stdsync.Mutex
	broken error // why the connection was closed under the caller
}

// DialSSH connects to u, checks its host key against the known_hosts files,
// authenticates, and starts opts.RemoteCommand with opts.RemoteArgs.
//
// An unknown or changed host key is refused with a *HostKeyError. Cancelling
// ctx closes the connection, also after DialSSH has returned. The caller must
// Close the SSHConn.
func DialSSH(ctx context.Context, u SSHURL, opts SSHOptions) (*SSHConn, error) {
	opts = opts.withDefaults()
	if u.Host == "" || strings.HasPrefix(u.Host, "-") {
		return nil, fmt.Errorf("ssh: bad host %q", u.Host)
	}
	if u.Port < 1 || u.Port > 65535 {
		return nil, fmt.Errorf("ssh: port %d of %s is not in 1..65535", u.Port, u.Host)
	}
	if u.User == "" {
		cur, err := user.Current()
		if err != nil {
			return nil, fmt.Errorf("ssh: no user for %s and the current user is unknown: %w", u.Host, err)
		}
		u.User = cur.Username
	}
	addr := u.address()
	where := u.User + "@" + addr

	hostKeys, err := newHostKeyChecker(opts.KnownHosts, u.Host, u.Port)
	if err != nil {
		return nil, err
	}
	auth, closeAgent, err := authMethod(opts.Identity, opts.Logger)
	if err != nil {
		return nil, err
	}
	defer closeAgent()

	deadline := time.Now().Add(opts.ConnectTimeout)
	d := net.Dialer{Deadline: deadline}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ssh %s: %w", where, err)
	}
	// From here on ctx and the deadline interrupt the handshake by closing
	// or timing out conn.
	_ = conn.SetDeadline(deadline)
	stopSetup := context.AfterFunc(ctx, func() { conn.Close() })
	fail := func(err error) (*SSHConn, error) {
		stopSetup()
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ssh %s: %w", where, context.Cause(ctx))
		}
		var hke *HostKeyError
		if errors.As(err, &hke) {
			return nil, hke
		}
		return nil, fmt.Errorf("ssh %s: %w", where, err)
	}

	cfg := &ssh.ClientConfig{
		User:              u.User,
		Auth:              []ssh.AuthMethod{auth},
		HostKeyCallback:   hostKeys.check,
		HostKeyAlgorithms: hostKeys.algorithms(addr, conn.RemoteAddr()),
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		return fail(err)
	}
	client := ssh.NewClient(sc, chans, reqs)
	session, err := client.NewSession()
	if err != nil {
		return fail(fmt.Errorf("opening session: %w", err))
	}
	stdin, err := session.StdinPipe()
	if err != nil {
		return fail(err)
	}
	stdout, err := session.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	session.Stderr = opts.Stderr
	command := opts.commandLine()
	if err := session.Start(command); err != nil {
		return fail(fmt.Errorf("starting remote command %s: %w", command, err))
	}
	if !stopSetup() {
		return fail(context.Cause(ctx))
	}
	_ = conn.SetDeadline(time.Time{})

	c := &SSHConn{
		client:  client,
		session: session,
		stdin:   stdin,
		stdout:  stdout,
		where:   where,
		command: command,
		closing: make(chan struct{}),
		kaDone:  make(chan struct{}),
	}
	c.stopCtx = context.AfterFunc(ctx, func() {
		c.breakConn(fmt.Errorf("ssh %s: %w", where, context.Cause(ctx)))
	})
	if opts.Keepalive > 0 {
		go c.keepalive(opts.Keepalive)
	} else {
		close(c.kaDone)
	}
	return c, nil
}

// Read reads from the remote command's stdout. After the connection was
// closed by a keepalive failure or ctx, it returns that reason, not io.EOF.
func (c *SSHConn) Read(p []byte) (int, error) {
	n, err := c.stdout.Read(p)
	if err != nil {
		if b := c.brokenErr(); b != nil {
			return n, b
		}
	}
	return n, err
}

// Write writes to the remote command's stdin. It blocks while the remote
// side does not read (SSH flow control).
func (c *SSHConn) Write(p []byte) (int, error) {
	n, err := c.stdin.Write(p)
	if err != nil {
		if b := c.brokenErr(); b != nil {
			return n, b
		}
		return n, fmt.Errorf("ssh %s: writing to remote command: %w", c.where, err)
	}
	return n, nil
}

// CloseWrite closes the remote command's stdin: it reads EOF.
func (c *SSHConn) CloseWrite() error {
	if err := c.stdin.Close(); err != nil {
		if b := c.brokenErr(); b != nil {
			return b
		}
		return fmt.Errorf("ssh %s: closing remote stdin: %w", c.where, err)
	}
	return nil
}

// Wait waits for the remote command to exit and for its stderr to be copied.
// It returns nil for exit status 0; otherwise the error names the command
// and its exit status or signal, and wraps an *ssh.ExitError when there is
// one.
func (c *SSHConn) Wait() error {
	err := c.session.Wait()
	if err == nil {
		return nil
	}
	if b := c.brokenErr(); b != nil {
		return b
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return fmt.Errorf("ssh %s: connection lost before remote command %s exited: %w", c.where, c.command, err)
	}
	return fmt.Errorf("ssh %s: remote command %s failed: %w", c.where, c.command, err)
}

// Close closes the session and the connection. Read, Write and Wait blocked
// or called after it fail with an error wrapping net.ErrClosed (or the
// earlier reason the connection broke). It may be called more than once;
// later calls return nil.
func (c *SSHConn) Close() error {
	c.closeOnce.Do(func() {
		c.stopCtx()
		close(c.closing)
		c.mu.Lock()
		if c.broken == nil {
			// A Read interrupted by Close must not look like a clean EOF.
			c.broken = fmt.Errorf("ssh %s: %w", c.where, net.ErrClosed)
		}
		c.mu.Unlock()
		_ = c.session.Close()
		if err := c.client.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			c.closeErr = fmt.Errorf("ssh %s: close: %w", c.where, err)
		}
		<-c.kaDone
	})
	return c.closeErr
}

// breakConn closes the connection under the caller and records why, so that
// Read, Write and Wait report err instead of a bare EOF.
func (c *SSHConn) breakConn(err error) {
	c.mu.Lock()
	if c.broken == nil {
		c.broken = err
	}
	c.mu.Unlock()
	_ = c.client.Close()
}

func (c *SSHConn) brokenErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broken
}

// keepalive sends a keepalive@openssh.com request every interval, keeping at
// most one outstanding. Any reply, even a refusal, means the peer is alive.
// A tick that finds the last request unanswered counts a miss; after
// keepaliveMisses misses in a row it closes the connection. It stops when the
// connection closes for another reason.
func (c *SSHConn) keepalive(interval time.Duration) {
	defer close(c.kaDone)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var (
		reply  chan error // non-nil while a request is outstanding
		misses int        // ticks in a row that found it unanswered
	)
	for {
		select {
		case <-c.closing:
			return
		case err := <-reply:
			if err != nil {
				// The connection is closed already; Read and Write
				// report that themselves.
				return
			}
			reply = nil
			misses = 0
		case <-tick.C:
			if reply != nil {
				misses++
			}
			if misses >= keepaliveMisses {
				c.breakConn(fmt.Errorf("ssh %s: no reply to %d keepalives %v apart; connection closed",
					c.where, misses, interval))
				return
			}
			if reply == nil {
				reply = make(chan error, 1)
				go func(ch chan<- error) {
					// Returns when the reply comes or the connection closes.
					_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
					ch <- err
				}(reply)
			}
		}
	}
}

// shellQuote quotes s for a POSIX shell: words of safe characters stay as
// they are, anything else goes in single quotes, each single quote inside
// becoming: close the quotes, a backslash-escaped quote, reopen them.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("_-./,:@+", r):
		case r == '=' && i > 0: // a leading = is special in zsh
		default:
			safe = false
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
