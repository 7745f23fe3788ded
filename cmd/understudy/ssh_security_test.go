package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	bin "encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	usync "github.com/understudy/understudy/sync"
	"github.com/understudy/understudy/sync/sshdtest"
)

// confinedStandby is a standby whose authorized_keys confines the client
// key to `serve --repo Repo --allow-target Target`, with restrict, behind an
// sshd configured as distributions ship it (forwarding and sftp allowed):
// whatever is refused, the key's line refuses.
type confinedStandby struct {
	s      *sshdtest.Server
	base   string // everything the tests create lives here
	repo   string // the forced repository
	target string // the one allowed target
	repoID string // the repository's ID, as Welcome carries it

	secret   []byte   // the content of secretFile, which must never be sent
	secretID index.ID // its SHA-256: what a blob of that content is named
	snapshot index.ID // a snapshot the standby holds
	held     index.ID // a blob the standby holds
}

func startConfinedStandby(t *testing.T) *confinedStandby {
	t.Helper()
	base := t.TempDir()
	c := &confinedStandby{base: base, repo: filepath.Join(base, "standby"), target: filepath.Join(base, "target")}
	src, tree := filepath.Join(base, "src"), filepath.Join(base, "tree")
	c.secret = []byte("top secret: " + rand.Text() + "\n")
	c.secretID = index.ID(sha256.Sum256(c.secret))
	if err := os.WriteFile(filepath.Join(base, "secret"), c.secret, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(c.target, 0o755); err != nil {
		t.Fatal(err)
	}
	runOK(t, "-r", src, "init")
	runOK(t, "-r", c.repo, "init")
	writeFiles(t, tree, map[string]string{"srv/motd": "standby\n", "srv/hostname": "primary\n"})
	runOK(t, "-r", src, "snapshot", "--root", tree, "/srv")

	c.s = sshdtest.Start(t)
	c.s.StockConfig(t)
	c.s.Authorize(fmt.Sprintf(`command="%s serve --repo %s --allow-target %s",restrict %s`, binary, c.repo, c.target, c.s.ClientPub))
	runOK(t, append([]string{"-r", src, "push", "--to", c.s.URL(c.repo)}, sshFlags(c.s)...)...)
	id, err := index.ParseID(listSnapshots(t, c.repo)[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	c.snapshot = id
	for b := range heldBlobs(t, c.repo) {
		c.held = b
		break
	}
	r := openShared(t, c.repo)
	c.repoID = r.Config().ID
	r.Close()
	return c
}

// dial logs in as a hostile client holding the key: golang.org/x/crypto/ssh
// directly, free to ask for anything the SSH protocol lets a client ask.
func (c *confinedStandby) dial(t *testing.T) *ssh.Client {
	t.Helper()
	pem, err := os.ReadFile(c.s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ssh.Dial("tcp", net.JoinHostPort(c.s.Host, strconv.Itoa(c.s.Port)), &ssh.ClientConfig{
		User:              c.s.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   ssh.FixedHostKey(c.s.HostPub),
		HostKeyAlgorithms: []string{c.s.HostPub.Type()},
		Timeout:           30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// lockedBuffer is a bytes.Buffer that the ssh package's copying goroutine
// and the test may use at once.
type lockedBuffer struct {
	mu stdsync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

// hostileConn is one session channel of a hostile client, as the
// usync.Conn a replication session runs on; it keeps everything the
// standby sent, on standard output and standard error.
type hostileConn struct {
	sess      *ssh.Session
	stdin     io.WriteCloser
	stdout    io.Reader
	seen      lockedBuffer  // standard output and standard error, as received
	stderrEOF chan struct{} // closed when standard error ends
}

// openHostile opens a session channel on cl and starts it with start (an
// exec, a shell or a subsystem request).
func openHostile(t *testing.T, cl *ssh.Client, start func(*ssh.Session) error) *hostileConn {
	t.Helper()
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	h := &hostileConn{sess: sess, stderrEOF: make(chan struct{})}
	if h.stdin, err = sess.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.stdout = io.TeeReader(out, &h.seen)
	stderr, err := sess.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		io.Copy(&h.seen, stderr)
		close(h.stderrEOF)
	}()
	if err := start(sess); err != nil {
		t.Fatalf("the standby refused to start the session: %v", err)
	}
	return h
}

func (h *hostileConn) Read(p []byte) (int, error)  { return h.stdout.Read(p) }
func (h *hostileConn) Write(p []byte) (int, error) { return h.stdin.Write(p) }
func (h *hostileConn) CloseWrite() error           { return h.stdin.Close() }
func (h *hostileConn) Close() error                { return h.sess.Close() }

// Wait waits for the end of standard error and for the exit status. The ssh
// package knows no exit status of a session it did not start itself (a
// subsystem request): that one ends with its output.
func (h *hostileConn) Wait() error {
	<-h.stderrEOF
	err := h.sess.Wait()
	if err != nil && err.Error() == "ssh: session not started" {
		return nil
	}
	return err
}

var _ usync.Conn = (*hostileConn)(nil)

// spyVerifier accepts every copy the standby sends, keeping its bytes, so
// that the test sees whatever arrives, verified or not.
type spyVerifier struct{ got [][]byte }

func (v *spyVerifier) VerifyStored(b chunkstore.StoredBlob, _ []byte) ([]byte, error) {
	v.got = append(v.got, bytes.Clone(b.Data))
	return b.Data, nil
}

// hostileStarts are the ways a client can ask sshd to run something on a
// session channel.
var hostileStarts = []struct {
	name  string
	start func(base string) func(*ssh.Session) error
}{
	{"exec cat secret", func(base string) func(*ssh.Session) error {
		return func(s *ssh.Session) error { return s.Start("cat " + filepath.Join(base, "secret")) }
	}},
	{"exec sh -c touch", func(base string) func(*ssh.Session) error {
		return func(s *ssh.Session) error {
			return s.Start("sh -c 'touch " + filepath.Join(base, "pwned") + "'; touch " + filepath.Join(base, "pwned2"))
		}
	}},
	{"exec serve another repository", func(base string) func(*ssh.Session) error {
		return func(s *ssh.Session) error {
			return s.Start(binary + " serve --repo " + filepath.Join(base, "other") + " --allow-target /")
		}
	}},
	{"exec init another repository", func(base string) func(*ssh.Session) error {
		return func(s *ssh.Session) error { return s.Start(binary + " -r " + filepath.Join(base, "other") + " init") }
	}},
	{"shell", func(string) func(*ssh.Session) error { return (*ssh.Session).Shell }},
	{"sftp subsystem", func(string) func(*ssh.Session) error {
		return func(s *ssh.Session) error { return s.RequestSubsystem("sftp") }
	}},
}

// TestSSHKeyRunsOnlyServe: whatever a client holding the key asks sshd to
// run (a command reading a secret file, one creating files, serve or init
// of another repository, a shell, the sftp subsystem), what runs is the
// forced serve of its repository: the answer to a hello is that
// repository's Welcome; the secret is not sent, neither by a command nor by
// Get or Have frames naming its SHA-256 or random IDs (not held), while a
// blob the repository holds is; nothing is created and nothing outside the
// repository changes.
func TestSSHKeyRunsOnlyServe(t *testing.T) {
	c := startConfinedStandby(t)
	cl := c.dial(t)
	before := treeState(t, c.base, c.repo)
	var random []index.ID
	for range 8 {
		var id index.ID
		rand.Read(id[:])
		random = append(random, id)
	}
	for _, hs := range hostileStarts {
		t.Run(hs.name, func(t *testing.T) {
			h := openHostile(t, cl, hs.start(c.base))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			sess, err := usync.NewSession(ctx, h)
			if err != nil {
				if bytes.Contains(h.seen.Bytes(), c.secret) {
					t.Errorf("the secret was sent to the client")
				}
				t.Fatalf("no Welcome: %v\nreceived: %q", err, h.seen.Bytes())
			}
			w := sess.Welcome()
			if got := hex.EncodeToString(w.RepoID[:]); got != c.repoID || !w.CanFetch() {
				t.Errorf("Welcome from repository %s (fetch %v), want the forced one, %s", got, w.CanFetch(), c.repoID)
			}
			var want []usync.Want
			for _, id := range append([]index.ID{c.secretID, c.held}, random...) {
				want = append(want, usync.Want{ID: id})
			}
			spy := &spyVerifier{}
			var fetched []usync.Fetched
			if err := sess.Fetch(ctx, spy, want, func(f usync.Fetched) error {
				fetched = append(fetched, f)
				return nil
			}); err != nil {
				t.Fatalf("Get: %v", err)
			}
			for i, f := range fetched {
				if lacks := errors.Is(f.Missing, usync.ErrPeerLacks); lacks != (f.ID != c.held) {
					t.Errorf("Get %d, blob %s: %v, want not held only for a blob other than %s", i, f.ID.Short(), f.Missing, c.held.Short())
				}
			}
			if len(fetched) != len(want) || len(spy.got) != 1 {
				t.Errorf("Get of %d blobs, one held: %d answers, %d copies sent", len(want), len(fetched), len(spy.got))
			}
			holds, err := sess.Holds([]index.ID{c.secretID, c.held})
			if err != nil || len(holds) != 2 || holds[0] || !holds[1] {
				t.Errorf("Have of the secret's ID and a held blob: %v, %v; want [false true]", holds, err)
			}
			if err := sess.Close(); err != nil {
				t.Errorf("end of session: %v", err)
			}
			for _, p := range spy.got {
				if bytes.Contains(p, c.secret) {
					t.Errorf("a Got frame carried the secret")
				}
			}
			if bytes.Contains(h.seen.Bytes(), c.secret) {
				t.Errorf("the secret was sent to the client:\n%q", h.seen.Bytes())
			}
		})
	}
	for _, p := range []string{"pwned", "pwned2", "other"} {
		if _, err := os.Lstat(filepath.Join(c.base, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s was created: %v", p, err)
		}
	}
	sameTreeState(t, before, treeState(t, c.base, c.repo))
	runOK(t, "-r", c.repo, "check", "--read-data")
}

// TestSSHKeyCannotForward: restrict refuses what sshd would otherwise grant
// the key: a direct-tcpip channel to a listener on 127.0.0.1 (which never
// sees a connection), a remote forward, a pty, X11 and agent forwarding;
// and whatever environment and command the client sends, what runs is the
// forced serve (UNDERSTUDY_REPO does not move it to another repository).
func TestSSHKeyCannotForward(t *testing.T) {
	c := startConfinedStandby(t)
	cl := c.dial(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- conn
		}
	}()

	if conn, err := cl.Dial("tcp", ln.Addr().String()); err == nil {
		conn.Close()
		t.Errorf("direct-tcpip to %s was opened", ln.Addr())
	} else {
		t.Logf("direct-tcpip: %v", err)
	}
	if rl, err := cl.Listen("tcp", "127.0.0.1:0"); err == nil {
		rl.Close()
		t.Errorf("a remote forward was granted on %s", rl.Addr())
	}

	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err == nil {
		t.Errorf("a pty was allocated")
	}
	x11 := ssh.Marshal(struct {
		Single   bool
		Protocol string
		Cookie   string
		Screen   uint32
	}{false, "MIT-MAGIC-COOKIE-1", strings.Repeat("ab", 16), 0})
	if ok, err := sess.SendRequest("x11-req", true, x11); ok || err != nil {
		t.Errorf("x11-req: granted %v, %v", ok, err)
	}
	if ok, err := sess.SendRequest("auth-agent-req@openssh.com", true, nil); ok || err != nil {
		t.Errorf("auth-agent-req: granted %v, %v", ok, err)
	}
	// Accepted or not (LANG is, by a stock sshd), the environment changes
	// nothing of what runs: still the forced serve of the forced repository.
	_ = sess.Setenv("LANG", "C")
	_ = sess.Setenv("UNDERSTUDY_REPO", filepath.Join(c.base, "other"))
	stdin, _ := sess.StdinPipe()
	var out lockedBuffer
	sess.Stdout, sess.Stderr = &out, &out
	if err := sess.Start("nc 127.0.0.1 " + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	// serve ends at the end of its input; anything else (nc, or a shell on
	// a pty, which never sees that end) is cut after a while.
	waited := make(chan error, 1)
	go func() { waited <- sess.Wait() }()
	select {
	case err = <-waited:
	case <-time.After(30 * time.Second):
		sess.Close()
		err = <-waited
		t.Errorf("exec nc still ran 30 s after the end of its input")
	}
	if !bytes.Contains(out.Bytes(), []byte("read hello")) {
		t.Errorf("exec nc: exit %v, output %q; want serve's complaint about a missing hello", err, out.Bytes())
	}

	ln.Close()
	for conn := range accepted {
		conn.Close()
		t.Errorf("the listener got a connection from %s", conn.RemoteAddr())
	}
	if _, err := os.Lstat(filepath.Join(c.base, "other")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("UNDERSTUDY_REPO from the client created a repository: %v", err)
	}
}

// TestSSHKeyApplyOnlyToAllowedTarget: through the protocol, an Apply
// naming anything but the allowed target is refused and writes nothing:
// a sibling, a sibling sharing its prefix, a path below it, a symlink to
// it, "/" (allow-list refusals, code 3), and paths that are not absolute
// and clean, which Session.Apply refuses to send and serve refuses as bad
// input (code 4) when a client sends them anyway; then the allowed target
// itself is applied, so the refusals are not those of a serve that cannot
// apply.
func TestSSHKeyApplyOnlyToAllowedTarget(t *testing.T) {
	c := startConfinedStandby(t)
	cl := c.dial(t)
	exec := func(s *ssh.Session) error { return s.Start("anything") }
	link := filepath.Join(c.base, "link")
	if err := os.Symlink(c.target, link); err != nil {
		t.Fatal(err)
	}
	before := treeState(t, c.base, c.repo)
	var unheld index.ID
	rand.Read(unheld[:])
	for _, tc := range []struct {
		target string
		snap   index.ID
	}{
		{filepath.Join(c.base, "elsewhere"), c.snapshot},
		{c.target + "2", c.snapshot},
		{filepath.Join(c.target, "srv"), c.snapshot},
		{link, c.snapshot},
		{c.base, c.snapshot},
		// A snapshot the standby does not hold: were "/" ever allowed,
		// there would be nothing to apply to it.
		{"/", unheld},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		sess, err := usync.NewSession(ctx, openHostile(t, cl, exec))
		if err != nil {
			t.Fatal(err)
		}
		_, err = sess.Apply(ctx, tc.snap, tc.target)
		want := "serve does not allow applying to " + tc.target
		if !errors.Is(err, usync.ErrRefused) || !strings.Contains(fmt.Sprint(err), want) {
			t.Errorf("apply to %s: %v, want a refusal %q", tc.target, err, want)
		}
		sess.Close()
		cancel()
	}
	for _, target := range []string{
		c.target + "/../elsewhere", c.target + "/", c.target + "/.", "/" + c.target,
		"target", "./target", "../" + filepath.Base(c.base) + "/target", "", c.target + "\x00",
	} {
		sess, err := usync.NewSession(context.Background(), openHostile(t, cl, exec))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sess.Apply(context.Background(), c.snapshot, target); err == nil || errors.Is(err, usync.ErrRefused) {
			t.Errorf("Session.Apply(%q) sent it: %v", target, err)
		}
		sess.Close()
		code, text := rawApply(t, cl, c.snapshot, target)
		if code != 4 || !strings.Contains(text, "apply") {
			t.Errorf("a hand-built Apply to %q: error code %d %q, want 4 (bad input)", target, code, text)
		}
	}
	sameTreeState(t, before, treeState(t, c.base, c.repo))
	isEmptyDir(t, c.target)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sess, err := usync.NewSession(ctx, openHostile(t, cl, exec))
	if err != nil {
		t.Fatal(err)
	}
	reply, err := sess.Apply(ctx, c.snapshot, c.target)
	if err != nil || reply.Status != usync.ApplyApplied {
		t.Fatalf("apply to the allowed target %s: %+v, %v", c.target, reply, err)
	}
	if err := sess.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(c.target, "srv/motd")); string(b) != "standby\n" {
		t.Errorf("the allowed target after the apply: srv/motd %q, %v", b, err)
	}
}

// rawApply sends, on a new session channel of cl, a Hello announcing the
// apply capability and one Apply frame naming target, byte by byte as
// docs/design.md gives them, and returns the code and text of the Error
// frame that serve answers with (code 0 if there is none).
func rawApply(t *testing.T, cl *ssh.Client, snap index.ID, target string) (uint16, string) {
	t.Helper()
	frame := func(b []byte, typ byte, payload []byte) []byte {
		b = append(b, typ)
		b = bin.BigEndian.AppendUint32(b, uint32(len(payload)))
		return append(b, payload...)
	}
	hello := bin.BigEndian.AppendUint16([]byte("understudy-sync"), usync.ProtocolVersion)
	hello = bin.BigEndian.AppendUint64(hello, 1<<1) // capability: apply
	apply := append(append(snap[:0:0], snap[:]...), 0)
	apply = bin.BigEndian.AppendUint16(apply, uint16(len(target)))
	apply = append(apply, target...)
	in := frame(frame(nil, 0x01, hello), 0x40, apply)

	h := openHostile(t, cl, func(s *ssh.Session) error { return s.Start("anything") })
	if _, err := h.Write(in); err != nil {
		t.Fatal(err)
	}
	h.CloseWrite()
	out, err := io.ReadAll(h)
	if err != nil {
		t.Fatal(err)
	}
	h.Wait()
	h.Close()
	for len(out) >= 5 {
		typ, n := out[0], int(bin.BigEndian.Uint32(out[1:]))
		if len(out) < 5+n {
			break
		}
		p := out[5 : 5+n]
		out = out[5+n:]
		if typ == 0x03 && len(p) >= 4 {
			return bin.BigEndian.Uint16(p), string(p[4:])
		}
		if typ != 0x02 {
			t.Errorf("serve answered an Apply to %q with a frame of type 0x%02x", target, typ)
		}
	}
	return 0, ""
}

// TestPushRefusesOpenKeyAndOtherHostKey: push refuses an identity file that
// group or others may read (exit 1, naming the file and chmod 600), and a
// host whose key is not the one known_hosts lists for it; the standby
// receives nothing either way.
func TestPushRefusesOpenKeyAndOtherHostKey(t *testing.T) {
	base := t.TempDir()
	src, standby, tree := filepath.Join(base, "src"), filepath.Join(base, "standby"), filepath.Join(base, "tree")
	s := sshdtest.Start(t)
	s.Authorize(forcedCommand(s.ClientPub, standby))
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")
	writeFiles(t, tree, map[string]string{"a": "one\n"})
	runOK(t, "-r", src, "snapshot", tree)
	key, err := os.ReadFile(s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660} {
		file := filepath.Join(base, fmt.Sprintf("key%04o", mode))
		if err := os.WriteFile(file, key, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(file, mode); err != nil {
			t.Fatal(err)
		}
		r := run(t, nil, "-r", src, "push", "--to", s.URL(standby), "-i", file, "--known-hosts", s.KnownHosts)
		if r.code != exitError || !strings.Contains(r.stderr, "chmod 600 "+file) || !strings.Contains(r.stderr, fmt.Sprintf("permissions %#o for %s", mode, file)) {
			t.Errorf("push with a key of mode %04o: exit %d, want %d naming the file and chmod 600\nstderr: %s", mode, r.code, exitError, r.stderr)
		}
	}

	otherPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ssh.NewPublicKey(otherPub)
	if err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(base, "known_hosts.other")
	line := fmt.Sprintf("[%s]:%d %s", s.Host, s.Port, ssh.MarshalAuthorizedKey(other))
	if err := os.WriteFile(hosts, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	var pushed []listedSnapshot
	for i := range 2 { // every push checks, also after one that passed
		r := run(t, nil, "-r", src, "push", "--to", s.URL(standby), "-i", s.ClientKey, "--known-hosts", hosts)
		if r.code != exitError || !strings.Contains(r.stderr, "CHANGED") || !strings.Contains(r.stderr, ssh.FingerprintSHA256(s.HostPub)) {
			t.Errorf("push to a host known with another key: exit %d, want %d and the presented key's fingerprint\nstderr: %s", r.code, exitError, r.stderr)
		}
		if l := listSnapshots(t, standby); fmt.Sprint(l) != fmt.Sprint(pushed) {
			t.Fatalf("the standby received something from a refused push: %v, was %v", l, pushed)
		}
		if i == 0 {
			runOK(t, append([]string{"-r", src, "push", "--to", s.URL(standby)}, sshFlags(s)...)...)
			pushed = listSnapshots(t, standby)
			writeFiles(t, tree, map[string]string{"a": "two\n"})
			runOK(t, "-r", src, "snapshot", tree)
		}
	}
	runOK(t, "-r", standby, "check", "--read-data")
}

// fileState is what treeState records of one path.
type fileState struct {
	mode    fs.FileMode
	size    int64
	content string // SHA-256 of a regular file, target of a symlink
}

// treeState records every path under root, except those under skip (the
// repositories serve writes to).
func treeState(t *testing.T, root string, skip ...string) map[string]fileState {
	t.Helper()
	st := map[string]fileState{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		for _, s := range skip {
			if p == s {
				return filepath.SkipDir
			}
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		f := fileState{mode: fi.Mode(), size: fi.Size()}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			f.content = fmt.Sprintf("%x", sha256.Sum256(b))
		case fi.Mode()&fs.ModeSymlink != 0:
			if f.content, err = os.Readlink(p); err != nil {
				return err
			}
		}
		st[p] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// sameTreeState fails t for every path created, removed or changed.
func sameTreeState(t *testing.T, before, after map[string]fileState) {
	t.Helper()
	for p, b := range before {
		if a, ok := after[p]; !ok {
			t.Errorf("%s was removed", p)
		} else if a != b {
			t.Errorf("%s changed: %+v, was %+v", p, a, b)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s was created", p)
		}
	}
}
