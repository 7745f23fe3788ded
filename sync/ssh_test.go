package sync

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/understudy/understudy/sync/sshdtest"
)

func TestParseSSHURL(t *testing.T) {
	cur, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	me := cur.Username
	good := []struct {
		in    string
		want  SSHURL
		canon string
	}{
		{"ssh://alice@host/r", SSHURL{"alice", "host", 22, "/r"}, "ssh://alice@host/r"},
		{"ssh://alice@host:22/r", SSHURL{"alice", "host", 22, "/r"}, "ssh://alice@host/r"},
		{"ssh://host:2222/var/lib/x", SSHURL{me, "host", 2222, "/var/lib/x"}, "ssh://" + me + "@host:2222/var/lib/x"},
		{"SSH://bob@h.example.com/r/", SSHURL{"bob", "h.example.com", 22, "/r/"}, "ssh://bob@h.example.com/r/"},
		{"ssh://bob@192.0.2.1:65535/", SSHURL{"bob", "192.0.2.1", 65535, "/"}, "ssh://bob@192.0.2.1:65535/"},
		{"ssh://bob@[::1]:2200/r", SSHURL{"bob", "::1", 2200, "/r"}, "ssh://bob@[::1]:2200/r"},
		{"ssh://bob@[2001:db8::1]/r", SSHURL{"bob", "2001:db8::1", 22, "/r"}, "ssh://bob@[2001:db8::1]/r"},
		{"ssh://bob@[fe80::1%25eth0]:1/r", SSHURL{"bob", "fe80::1%eth0", 1, "/r"}, "ssh://bob@[fe80::1%25eth0]:1/r"},
		{"ssh://bob@host/a%20b", SSHURL{"bob", "host", 22, "/a b"}, "ssh://bob@host/a%20b"},
		{"ssh://back_up@my-host/r", SSHURL{"back_up", "my-host", 22, "/r"}, "ssh://back_up@my-host/r"},
	}
	for _, tc := range good {
		got, err := ParseSSHURL(tc.in)
		if err != nil {
			t.Errorf("ParseSSHURL(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseSSHURL(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if s := got.String(); s != tc.canon {
			t.Errorf("ParseSSHURL(%q).String() = %q, want %q", tc.in, s, tc.canon)
		}
		if again, err := ParseSSHURL(got.String()); err != nil || again != got {
			t.Errorf("ParseSSHURL(%q) = %+v, %v; want it to round-trip", got.String(), again, err)
		}
	}
	bad := []string{
		"",
		"host:/r",
		"/r",
		"scp://host/r",
		"http://host/r",
		"ssh:host/r",
		"ssh:///r",
		"ssh://host",
		"ssh://bob@host",
		"ssh://host:0/r",
		"ssh://host:65536/r",
		"ssh://host:-1/r",
		"ssh://host:/r",
		"ssh://host:x/r",
		"ssh://bob:secret@host/r",
		"ssh://@host/r",
		"ssh://host/r?x=1",
		"ssh://host/r?",
		"ssh://host/r#frag",
		"ssh://host/r#",
		"ssh://-oProxyCommand=x/r",
		"ssh://::1/r",
		"ssh://[host]/r",
		"ssh://[::1/r",
		"ssh://a!b/r",
		"ssh://host/a%00b",
		"ssh://host/a%zz",
	}
	for _, in := range bad {
		if got, err := ParseSSHURL(in); err == nil {
			t.Errorf("ParseSSHURL(%q) = %+v, want an error", in, got)
		}
	}
}

// TestShellQuote runs quoted words through a real sh and expects them back.
func TestSSHShellQuote(t *testing.T) {
	words := []string{"plain", "/a/b-c_d.e,f:g@h+i", "a=b", "=a", "", "a b", "it's", "'", "''",
		`"`, `\`, "$(echo no)", "`echo no`", "$HOME", "*", "a\nb", "~", "-n", "--x=y", "a;b", "|&<>", "é"}
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = shellQuote(w)
	}
	if quoted[0] != "plain" || quoted[1] != "/a/b-c_d.e,f:g@h+i" || quoted[6] != `'it'\''s'` {
		t.Errorf("quoting: %q", quoted[:7])
	}
	out, err := exec.Command("sh", "-c", `printf '%s\0' `+strings.Join(quoted, " ")).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if strings.Join(got, "|") != strings.Join(words, "|") || len(got) != len(words) {
		t.Errorf("sh gave back %q, want %q", got, words)
	}
}

// sshServer starts an sshd whose authorized_keys holds the test client key
// behind options (such as `command="cat",restrict`), and returns options
// that reach it.
func sshServer(t *testing.T, options string) (*sshdtest.Server, SSHURL, SSHOptions) {
	t.Helper()
	s := sshdtest.Start(t)
	s.Authorize(options + " " + s.ClientPub)
	u, err := ParseSSHURL(s.URL("/repo"))
	if err != nil {
		t.Fatal(err)
	}
	return s, u, SSHOptions{
		KnownHosts:     []string{s.KnownHosts},
		Identity:       []string{s.ClientKey},
		Keepalive:      -1,
		ConnectTimeout: 5 * time.Second,
	}
}

func sshDial(t *testing.T, u SSHURL, opts SSHOptions) *SSHConn {
	t.Helper()
	c, err := DialSSH(context.Background(), u, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The sshd also holds an ECDSA host key that known_hosts lacks, so each
// successful dial shows that the known key type was asked for.
func TestDialSSHCat(t *testing.T) {
	_, u, opts := sshServer(t, `command="cat",restrict`)
	c := sshDial(t, u, opts)
	data := make([]byte, 4<<20)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes that differ from the %d written", len(got), len(data))
	}
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestDialSSHRemoteArgs passes arguments through the remote login shell.
func TestDialSSHRemoteArgs(t *testing.T) {
	_, u, opts := sshServer(t, `restrict`)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"%s|", "a b", "it's"}, "a b|it's|"},
		{[]string{`%s\n`, "$(echo no)", "`echo no`", "*", "a\nb", "", "~", `\'"`},
			"$(echo no)\n`echo no`\n*\na\nb\n\n~\n\\'\"\n"},
	} {
		opts.RemoteCommand = "printf"
		opts.RemoteArgs = tc.args
		c := sshDial(t, u, opts)
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("printf %q printed %q, want %q", tc.args, got, tc.want)
		}
		if err := c.Wait(); err != nil {
			t.Error(err)
		}
	}
}

func TestDialSSHStderrAndExitStatus(t *testing.T) {
	_, u, opts := sshServer(t, `restrict`)
	var stderr bytes.Buffer
	opts.Stderr = &stderr
	opts.RemoteCommand = "sh"
	opts.RemoteArgs = []string{"-c", "echo out; echo oops >&2; exit 3"}
	c := sshDial(t, u, opts)
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Wait()
	var exit *ssh.ExitError
	if !errors.As(err, &exit) || exit.ExitStatus() != 3 || !strings.Contains(err.Error(), "status 3") {
		t.Fatalf("Wait: %v; want exit status 3", err)
	}
	if string(out) != "out\n" || stderr.String() != "oops\n" {
		t.Errorf("stdout %q, stderr %q; want %q, %q", out, stderr.String(), "out\n", "oops\n")
	}
}

func TestDialSSHChangedHostKey(t *testing.T) {
	s, u, opts := sshServer(t, `command="true",restrict`)
	c := sshDial(t, u, opts)
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	oldFP := ssh.FingerprintSHA256(s.HostPub)

	s.NewHostKey(t)
	_, err := DialSSH(context.Background(), u, opts)
	var hke *HostKeyError
	if !errors.As(err, &hke) {
		t.Fatalf("dial after the host key changed: %v; want a *HostKeyError", err)
	}
	newFP := ssh.FingerprintSHA256(s.HostPub)
	host := "[127.0.0.1]:" + strconv.Itoa(s.Port)
	if !hke.Changed || hke.Fingerprint != newFP || hke.KeyType != ssh.KeyAlgoED25519 || hke.Host != host {
		t.Errorf("got %+v; want Changed, Fingerprint %s, Host %s", hke, newFP, host)
	}
	if len(hke.Want) != 1 || !strings.HasPrefix(hke.Want[0], oldFP+" ") {
		t.Errorf("Want %q; want the old key %s", hke.Want, oldFP)
	}
	msg := err.Error()
	t.Log(msg)
	for _, w := range []string{newFP, oldFP, "attack", "ssh-keygen -R '" + host + "' -f " + s.KnownHosts} {
		if !strings.Contains(msg, w) {
			t.Errorf("message %q does not contain %q", msg, w)
		}
	}
	if _, err := exec.LookPath("ssh-keygen"); err == nil {
		sshRunSuggestion(t, msg, "then run ")
		c = sshDial(t, u, opts)
		if err := c.Wait(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDialSSHUnknownHost(t *testing.T) {
	s, u, opts := sshServer(t, `command="true",restrict`)
	empty := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "none")
	for _, tc := range []struct {
		file string
		want []string // in the message besides the fingerprint
	}{
		{empty, []string{"not in " + empty, "ssh-keyscan -t ", " -p " + strconv.Itoa(s.Port) + " 127.0.0.1 >> " + empty}},
		{missing, []string{"no " + missing, "ssh-keyscan"}},
	} {
		opts.KnownHosts = []string{tc.file}
		_, err := DialSSH(context.Background(), u, opts)
		var hke *HostKeyError
		if !errors.As(err, &hke) {
			t.Fatalf("dial with %s: %v; want a *HostKeyError", tc.file, err)
		}
		// Nothing known: the server may present either of its keys.
		fps := map[string]string{
			ssh.FingerprintSHA256(s.HostPub):      s.HostPub.Type(),
			ssh.FingerprintSHA256(s.HostPubECDSA): s.HostPubECDSA.Type(),
		}
		if hke.Changed || fps[hke.Fingerprint] != hke.KeyType || len(hke.Want) != 0 {
			t.Errorf("got %+v; want an unknown host with one of the server's keys", hke)
		}
		msg := err.Error()
		t.Log(msg)
		for _, w := range append(tc.want, hke.Fingerprint, hke.KeyType, "out of band") {
			if !strings.Contains(msg, w) {
				t.Errorf("message %q does not contain %q", msg, w)
			}
		}
		if tc.file == empty {
			sshRunSuggestion(t, msg, "add it: ")
			c := sshDial(t, u, opts)
			if err := c.Wait(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// sshRunSuggestion runs the shell command that follows marker in msg, if
// ssh-keyscan is installed: a message's advice must work.
func sshRunSuggestion(t *testing.T, msg, marker string) {
	t.Helper()
	if _, err := exec.LookPath("ssh-keyscan"); err != nil {
		t.Log("ssh-keyscan not installed; the suggested command is not run")
		return
	}
	_, cmd, ok := strings.Cut(msg, marker)
	if !ok {
		t.Fatalf("message %q has no %q", msg, marker)
	}
	if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
		t.Fatalf("suggested command %s: %v\n%s", cmd, err, out)
	}
}

// sshLockedKey is an ed25519 key with the passphrase "secret", made once
// with ssh-keygen (bcrypt makes encrypting one slow).
const sshLockedKey = `-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABDJ6smHxp
iNbOEzobN9lglvAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIL62XEEpzw6QZiMj
ajjierPValzH8CD+iLKehX9GcgfDAAAAkKxWX3hglAq91LO270ou6iX7VQwM67CPv+wuUd
sAGFEGCjlWzKJ+HDHExAD8eHAX6CP9uhX3vgjyMdWc2JLRTFqnzO8yj/wWoIEZ4sx5W3Yl
U4N+sOYP7pjUgviUOz3qNMj1mAsO+4VMMsWRLOs+uAv1YvpSpVl2Ereq3PBAL1xY3O4arp
jpLVKb9JbzYPNN1Q==
-----END OPENSSH PRIVATE KEY-----
`

func TestDialSSHIdentity(t *testing.T) {
	s, u, opts := sshServer(t, `command="true",restrict`)
	dir := t.TempDir()
	key, err := os.ReadFile(s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open_key")
	if err := os.WriteFile(open, key, 0o644); err != nil {
		t.Fatal(err)
	}
	locked := filepath.Join(dir, "locked_key")
	if err := os.WriteFile(locked, []byte(sshLockedKey), 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	opts.Logger = slog.New(slog.NewTextHandler(&log, nil))
	for _, tc := range []struct {
		identity []string
		want     []string // in the error; nil: success
	}{
		{[]string{open}, []string{"permissions 0644 for " + open + " are too open", "chmod 600 " + open}},
		{[]string{locked}, []string{"no usable identity", locked, "passphrase"}},
		{[]string{locked, s.ClientKey}, nil}, // the locked key is skipped
	} {
		log.Reset()
		opts.Identity = tc.identity
		c, err := DialSSH(context.Background(), u, opts)
		if tc.want == nil {
			if err != nil {
				t.Errorf("identity %q: %v", tc.identity, err)
			} else {
				c.Close()
			}
			if !strings.Contains(log.String(), "file="+locked) {
				t.Errorf("identity %q: log %q does not note the skipped key", tc.identity, log.String())
			}
			continue
		}
		if err == nil {
			c.Close()
			t.Errorf("identity %q: dial succeeded, want an error", tc.identity)
			continue
		}
		t.Log(err)
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("identity %q: error %q does not contain %q", tc.identity, err, w)
			}
		}
	}
}

// TestDialSSHAgent uses an in-process agent through SSH_AUTH_SOCK when no
// Identity is given, and refuses when neither an agent nor a key file exists.
func TestDialSSHAgent(t *testing.T) {
	s, u, opts := sshServer(t, `command="true",restrict`)
	opts.Identity = nil
	t.Setenv("HOME", t.TempDir()) // no ~/.ssh/id_*
	t.Setenv("SSH_AUTH_SOCK", "")
	if _, err := DialSSH(context.Background(), u, opts); err == nil ||
		!strings.Contains(err.Error(), "no usable identity") {
		t.Fatalf("dial without agent or key: %v; want no usable identity", err)
	}

	pemBytes, err := os.ReadFile(s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.ParseRawPrivateKey(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: key}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg stdsync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = agent.ServeAgent(keyring, conn)
			conn.Close()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)
	c := sshDial(t, u, opts)
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestDialSSHContextCancel(t *testing.T) {
	_, u, opts := sshServer(t, `command="cat",restrict`)
	ctx, cancel := context.WithCancel(context.Background())
	c, err := DialSSH(ctx, u, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel()
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Read after cancel: %v; want context.Canceled", err)
	}
	if err := c.Wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel: %v; want context.Canceled", err)
	}
}

func TestDialSSHClose(t *testing.T) {
	_, u, opts := sshServer(t, `command="cat",restrict`)
	c := sshDial(t, u, opts)
	done := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); done <- err }()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read interrupted by Close: %v; want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

// TestDialSSHHandshakeTimeout dials a port that accepts and never speaks.
func TestDialSSHHandshakeTimeout(t *testing.T) {
	_, u, opts := sshServer(t, `restrict`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	u.Port = ln.Addr().(*net.TCPAddr).Port
	opts.ConnectTimeout = 200 * time.Millisecond
	start := time.Now()
	_, err = DialSSH(context.Background(), u, opts)
	if !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("dial a silent server: %v after %v; want a timeout after 200ms", err, time.Since(start))
	}

	ctx, cancel := context.WithCancel(context.Background())
	opts.ConnectTimeout = time.Minute
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = DialSSH(ctx, u, opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("dial a silent server, then cancel: %v; want context.Canceled", err)
	}
}

// TestDialSSHKeepalive idles past several keepalive intervals, then stops a
// proxy in the middle from forwarding anything: the connection must close
// within a few intervals and Read must say why.
func TestDialSSHKeepalive(t *testing.T) {
	const interval = 200 * time.Millisecond
	s, u, opts := sshServer(t, `command="cat",restrict`)
	p := startFreezeProxy(t, net.JoinHostPort(s.Host, strconv.Itoa(s.Port)))
	known := filepath.Join(t.TempDir(), "known_hosts")
	line := knownhosts.Line([]string{p.addr()}, s.HostPub)
	if err := os.WriteFile(known, []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u.Port = p.ln.Addr().(*net.TCPAddr).Port
	opts.KnownHosts = []string{known}
	opts.Keepalive = interval
	c := sshDial(t, u, opts)

	echo := func() error {
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		_, err := io.ReadFull(c, make([]byte, 1))
		return err
	}
	time.Sleep(5 * interval) // replies (OpenSSH refuses the request) keep it open
	if err := echo(); err != nil {
		t.Fatalf("after idling with keepalives: %v", err)
	}

	p.freeze()
	start := time.Now()
	done := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); done <- err }()
	select {
	case err := <-done:
		took := time.Since(start)
		if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "keepalive") {
			t.Errorf("Read on a frozen connection: %v; want a keepalive error", err)
		}
		if took < interval || took > 10*interval {
			t.Errorf("connection closed after %v; want within a few intervals of %v", took, interval)
		}
		if _, err := c.Write([]byte("x")); err == nil {
			t.Error("Write on the closed connection succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("frozen connection still open after 5s")
	}
}

// freezeProxy forwards TCP connections to a target until freeze is called;
// from then on it drops everything, like a peer that vanished.
type freezeProxy struct {
	ln       net.Listener
	target   string
	frozen   chan struct{}
	freezeMu stdsync.Once
	mu       stdsync.Mutex
	conns    []net.Conn
	wg       stdsync.WaitGroup
}

func startFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target, frozen: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *freezeProxy) addr() string { return p.ln.Addr().String() }

func (p *freezeProxy) freeze() { p.freezeMu.Do(func() { close(p.frozen) }) }

func (p *freezeProxy) accept() {
	defer p.wg.Done()
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, down, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pump(up, down)
		go p.pump(down, up)
	}
}

func (p *freezeProxy) pump(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		select {
		case <-p.frozen:
			continue // dropped
		default:
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}
