package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	stdsync "sync"
	"time"
)

// Dest is where push sends snapshots: a repository path on this host, served
// by a child `understudy serve` on a pipe, or ssh://[user@]host[:port]/path.
type Dest struct {
	Path string  // the repository's path on the standby
	SSH  *SSHURL // nil for a local repository
}

// ParseDest parses a push destination.
func ParseDest(s string) (Dest, error) {
	if strings.HasPrefix(s, "ssh://") {
		u, err := ParseSSHURL(s)
		if err != nil {
			return Dest{}, err
		}
		return Dest{Path: u.Path, SSH: &u}, nil
	}
	if strings.Contains(s, "://") {
		return Dest{}, fmt.Errorf("destination %q: want a repository path or ssh://[user@]host[:port]/path", s)
	}
	if s == "" {
		return Dest{}, errors.New("empty destination")
	}
	abs, err := filepath.Abs(s)
	if err != nil {
		return Dest{}, err
	}
	return Dest{Path: abs}, nil
}

// String returns the destination as the user would write it.
func (d Dest) String() string {
	if d.SSH != nil {
		return d.SSH.String()
	}
	return d.Path
}

// DialOptions configure Dial.
type DialOptions struct {
	SSH SSHOptions
	// ServeCommand runs `understudy serve` for a local destination: the
	// program and its arguments before "--repo PATH". Default: this
	// executable and "serve".
	ServeCommand []string
	// Stderr receives serve's standard error (messages of the standby).
	Stderr io.Writer
	// AllowTargets are given to a local serve as --allow-target, so that
	// it applies to them on request: the user has direct access to those
	// paths anyway. A remote serve allows what its own command line says.
	AllowTargets []string
}

// Dial starts serve for d and returns the connection to it.
func Dial(ctx context.Context, d Dest, opts DialOptions) (Conn, error) {
	if d.SSH != nil {
		so := opts.SSH
		if so.Stderr == nil {
			so.Stderr = opts.Stderr
		}
		so.RemoteArgs = []string{"serve", "--repo", d.Path}
		return DialSSH(ctx, *d.SSH, so)
	}
	argv := opts.ServeCommand
	if len(argv) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find this program to run serve: %w", err)
		}
		argv = []string{self, "serve"}
	}
	argv = slices.Clone(argv)
	for _, t := range opts.AllowTargets {
		argv = append(argv, "--allow-target", t)
	}
	argv = append(argv, "--repo", d.Path)
	return startLocal(argv, opts.Stderr)
}

// procConn is a child serve process on a pipe.
type procConn struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout io.ReadCloser
	once   stdsync.Once
	werr   error
}

func startLocal(argv []string, stderr io.Writer) (*procConn, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(argv, " "), err)
	}
	return &procConn{cmd: cmd, stdin: stdin, stdout: stdout}, nil
}

func (c *procConn) Read(p []byte) (int, error)  { return c.stdout.Read(p) }
func (c *procConn) Write(p []byte) (int, error) { return c.stdin.Write(p) }
func (c *procConn) CloseWrite() error           { return c.stdin.Close() }

func (c *procConn) Wait() error {
	c.once.Do(func() {
		c.werr = c.cmd.Wait()
		if c.werr != nil {
			c.werr = fmt.Errorf("serve: %w", c.werr)
		}
	})
	return c.werr
}

// Close ends serve's input, so that it commits what it received, and kills
// it if it has not exited after closeGrace.
func (c *procConn) Close() error {
	c.stdin.Close()
	exited := make(chan struct{})
	go func() { c.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(closeGrace):
		c.cmd.Process.Kill()
		<-exited
	}
	return nil
}

// closeGrace is how long a local serve may take to commit and exit once its
// client is gone.
const closeGrace = 30 * time.Second
