// Package sshdtest runs a real OpenSSH sshd on 127.0.0.1 for tests, with
// throwaway host and client keys.
//
// The server listens itself and starts one `sshd -i` (inetd mode) per
// accepted connection, with the connection as the daemon's stdin and stdout.
// So the port is held for the server's whole life (no race for a free port,
// no waiting for the daemon to listen), a new host key takes effect on the
// next connection without a restart, and every sshd process is a child of
// the test, killed with its process group on Stop.
//
// Besides the ed25519 host key written to KnownHosts, the daemon holds an
// ECDSA host key that is in no known_hosts file, as real servers hold
// several: a client must ask for the key type it knows.
package sshdtest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Server is a running sshd for one test. Its fields are set by Start and,
// for the host key, NewHostKey; treat them as read-only.
type Server struct {
	Host       string // "127.0.0.1"
	Port       int
	User       string        // the current user's name, the only account tests use
	KnownHosts string        // known_hosts file holding the host key as first started
	ClientKey  string        // client private key: ed25519, OpenSSH format, mode 0600, no passphrase
	ClientPub  string        // the client key's authorized_keys line, without options
	HostKey    string        // the ed25519 host private key file
	HostPub    ssh.PublicKey // its public key, the one in KnownHosts until NewHostKey
	// HostPubECDSA is the server's second host key, in no known_hosts file.
	HostPubECDSA ssh.PublicKey
	Dir          string // where the keys, config and log live

	sshd           string // absolute path of the daemon
	config         string
	authorizedKeys string
	logPath        string
	ln             net.Listener
	acceptDone     chan struct{}

	mu      sync.Mutex
	procs   map[*exec.Cmd]struct{} // live daemons, one per connection
	stopped bool
	wg      sync.WaitGroup // one per daemon, for its reaper
}

// Start starts an sshd for t and stops it at t's cleanup. Each of
// authorizedKeys is written verbatim as a line of the authorized_keys file,
// for example `command="cat",restrict ` + s.ClientPub; since ClientPub is
// known only after Start, Authorize sets them later.
//
// Start skips the test when no sshd is installed.
func Start(t testing.TB, authorizedKeys ...string) *Server {
	t.Helper()
	sshd := findSSHD()
	if sshd == "" {
		t.Skip("sshd not found (apt-get install openssh-server)")
	}
	cur, err := user.Current()
	if err != nil {
		t.Fatalf("sshdtest: current user: %v", err)
	}
	if os.Geteuid() == 0 {
		// The privilege separation directory; sshd refuses to run without it.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
	}
	dir := t.TempDir()
	s := &Server{
		Host:           "127.0.0.1",
		User:           cur.Username,
		Dir:            dir,
		KnownHosts:     filepath.Join(dir, "known_hosts"),
		ClientKey:      filepath.Join(dir, "id_ed25519"),
		HostKey:        filepath.Join(dir, "ssh_host_ed25519_key"),
		sshd:           sshd,
		config:         filepath.Join(dir, "sshd_config"),
		authorizedKeys: filepath.Join(dir, "authorized_keys"),
		logPath:        filepath.Join(dir, "sshd.log"),
		acceptDone:     make(chan struct{}),
		procs:          make(map[*exec.Cmd]struct{}),
	}
	clientPub, err := writeKey(s.ClientKey, newEd25519())
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	s.ClientPub = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(clientPub)))
	if s.HostPub, err = writeKey(s.HostKey, newEd25519()); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	ecdsaHostKey := filepath.Join(dir, "ssh_host_ecdsa_key")
	if s.HostPubECDSA, err = writeKey(ecdsaHostKey, ecKey); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	s.Authorize(authorizedKeys...)

	if err := s.writeConfig(false); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	s.ln = ln
	s.Port = ln.Addr().(*net.TCPAddr).Port
	line := knownhosts.Line([]string{s.addr()}, s.HostPub)
	if err := os.WriteFile(s.KnownHosts, []byte(line+"\n"), 0o644); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	go s.acceptLoop()

	// Cleanups run last-registered first: stop, then show the log.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sshdtest: tail of %s:\n%s", s.logPath, s.logTail(4096))
		}
	})
	t.Cleanup(s.Stop)
	return s
}

// StockConfig makes the daemon run, from the next connection on, with the
// permissions of a stock sshd instead of the harness's own refusals: TCP,
// agent and X11 forwarding and ttys allowed (the defaults), the sftp
// subsystem configured and LANG and LC_* accepted from the client (as
// distributions ship it). What a client is then refused, the options of its
// authorized_keys line refuse (command=, restrict), not the harness.
func (s *Server) StockConfig(t testing.TB) {
	t.Helper()
	if err := s.writeConfig(true); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
}

// writeConfig writes the daemon's configuration, the harness's locked-down
// one or, if stock, one with a stock sshd's permissions, and checks it.
func (s *Server) writeConfig(stock bool) error {
	lines := []string{
		"HostKey " + s.HostKey,
		"HostKey " + filepath.Join(s.Dir, "ssh_host_ecdsa_key"),
		"AuthorizedKeysFile " + s.authorizedKeys,
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"PermitRootLogin prohibit-password",
		"PrintMotd no",
		"PrintLastLog no",
		"UseDNS no",
		"PidFile none",
		"LogLevel VERBOSE",
		"LoginGraceTime 10",
	}
	if stock {
		lines = append(lines,
			"X11Forwarding yes",
			"AcceptEnv LANG LC_*",
			"Subsystem sftp internal-sftp",
		)
	} else {
		lines = append(lines,
			"AllowTcpForwarding no",
			"AllowAgentForwarding no",
			"X11Forwarding no",
			"PermitTunnel no",
			"", // no Subsystem: no sftp
		)
	}
	if err := writeFileAtomic(s.config, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		return err
	}
	// Check the configuration once, so that a mistake shows here and not as
	// a closed connection in the test.
	if out, err := exec.Command(s.sshd, "-t", "-f", s.config).CombinedOutput(); err != nil {
		return fmt.Errorf("%s -t -f %s: %w\n%s", s.sshd, s.config, err, out)
	}
	return nil
}

// findSSHD returns the absolute path of sshd, or "" if there is none. sshd
// must be run by absolute path.
func findSSHD() string {
	if fi, err := os.Stat("/usr/sbin/sshd"); err == nil && !fi.IsDir() {
		return "/usr/sbin/sshd"
	}
	p, err := exec.LookPath("sshd")
	if err != nil {
		return ""
	}
	if p, err = filepath.Abs(p); err != nil {
		return ""
	}
	return p
}

func (s *Server) addr() string {
	return net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
}

// Authorize replaces the authorized_keys file with lines, each written
// verbatim. sshd reads the file at each login.
func (s *Server) Authorize(lines ...string) {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	if err := writeFileAtomic(s.authorizedKeys, []byte(b.String()), 0o600); err != nil {
		panic(fmt.Sprintf("sshdtest: %v", err))
	}
}

// NewHostKey replaces the ed25519 host key with a new one, effective from the
// next connection on the same port. KnownHosts keeps the old key, so that a
// client using it sees a changed host key; HostPub is the new key.
func (s *Server) NewHostKey(t testing.TB) {
	t.Helper()
	pub, err := writeKey(s.HostKey, newEd25519())
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	s.HostPub = pub
}

// URL returns "ssh://USER@127.0.0.1:PORT" followed by path.
func (s *Server) URL(path string) string {
	return "ssh://" + s.User + "@" + s.addr() + path
}

// Stop closes the listener and kills every sshd still running, with its
// process group. It is called at the test's cleanup and may be called
// earlier; later calls do nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	s.mu.Unlock()
	s.ln.Close()
	<-s.acceptDone
	s.mu.Lock()
	for cmd := range s.procs {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// acceptLoop starts one `sshd -i` per connection until the listener closes.
func (s *Server) acceptLoop() {
	defer close(s.acceptDone)
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		if err := s.serve(conn.(*net.TCPConn)); err != nil {
			s.logf("sshdtest: %v", err)
		}
	}
}

// serve hands conn to a new sshd in inetd mode.
func (s *Server) serve(conn *net.TCPConn) error {
	defer conn.Close()
	f, err := conn.File() // a dup of the socket, blocking, for the child
	if err != nil {
		return err
	}
	defer f.Close()
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.sshd, "-i", "-e", "-f", s.config)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = f, f, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.procs[cmd] = struct{}{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = cmd.Wait()
		s.mu.Lock()
		delete(s.procs, cmd)
		s.mu.Unlock()
	}()
	return nil
}

// logf appends a line of the harness's own to the sshd log.
func (s *Server) logf(format string, args ...any) {
	f, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, format+"\n", args...)
}

// logTail returns at most the last n bytes of the sshd log.
func (s *Server) logTail(n int64) string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := max(fi.Size()-n, 0)
	buf := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return err.Error()
	}
	return string(buf)
}

func newEd25519() ed25519.PrivateKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return priv
}

// writeKey writes key to file in OpenSSH format, mode 0600, and returns its
// public key.
func writeKey(file string, key any) (ssh.PublicKey, error) {
	block, err := ssh.MarshalPrivateKey(key, "")
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(file, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return signer.PublicKey(), nil
}

// writeFileAtomic replaces file by renaming a complete temporary file over
// it, so that a concurrently starting sshd reads the old or the new content.
func writeFileAtomic(file string, data []byte, mode os.FileMode) error {
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return errors.Join(err, os.Remove(tmp))
	}
	return os.Rename(tmp, file)
}
