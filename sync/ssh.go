package sync

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	stdsync "sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHURL is a replication destination ssh://[user@]host[:port]/path: the
// standby's account and address, and the repository path on it.
//
// ParseSSHURL fills in the defaults, so a parsed SSHURL always has a User, a
// Port and an absolute Path.
type SSHURL struct {
	User string // remote account; defaults to the local user's name
	Host string // host name or IP address, without brackets for IPv6
	Port int    // TCP port, 1..65535; defaults to 22
	Path string // absolute path on the remote host
}

// ParseSSHURL parses s as ssh://[user@]host[:port]/path.
//
// It is strict: the scheme must be ssh, the host must be present and must not
// begin with "-", the port (default 22) must be 1..65535, the path must be
// present and absolute, and there may be no password, query or fragment. An
// IPv6 address is written in brackets: ssh://[::1]:2222/r. Without a user the
// current user's name is used.
func ParseSSHURL(s string) (SSHURL, error) {
	bad := func(why string) (SSHURL, error) {
		return SSHURL{}, fmt.Errorf("ssh URL %q: %s; want ssh://[user@]host[:port]/path", s, why)
	}
	pu, err := url.Parse(s)
	if err != nil {
		return bad(err.Error())
	}
	switch {
	case pu.Scheme != "ssh":
		return bad("scheme is not ssh")
	case pu.Opaque != "":
		return bad("missing // after ssh:")
	case pu.RawQuery != "" || pu.ForceQuery:
		return bad("a query (?...) is not allowed")
	case pu.Fragment != "" || strings.Contains(s, "#"):
		return bad("a fragment (#...) is not allowed")
	}
	var u SSHURL
	if pu.User != nil {
		if _, ok := pu.User.Password(); ok {
			return bad("a password is not allowed; use a key")
		}
		u.User = pu.User.Username()
		if u.User == "" {
			return bad("empty user name before @")
		}
	}
	u.Host = pu.Hostname()
	if u.Host == "" {
		return bad("no host")
	}
	if strings.HasPrefix(u.Host, "-") {
		return bad("host begins with -")
	}
	if !validHost(u.Host, strings.HasPrefix(pu.Host, "[")) {
		return bad("bad host " + strconv.Quote(u.Host))
	}
	u.Port = 22
	if strings.HasSuffix(pu.Host, ":") {
		return bad("empty port after :")
	}
	if p := pu.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return bad("port " + p + " is not in 1..65535")
		}
		u.Port = n
	}
	u.Path = pu.Path
	if u.Path == "" {
		return bad("no path")
	}
	if !strings.HasPrefix(u.Path, "/") {
		return bad("path is not absolute")
	}
	if strings.ContainsRune(u.Path, 0) {
		return bad("path contains NUL")
	}
	if u.User == "" {
		cur, err := user.Current()
		if err != nil {
			return SSHURL{}, fmt.Errorf("ssh URL %q has no user and the current user is unknown: %w", s, err)
		}
		u.User = cur.Username
	}
	return u, nil
}

// validHost reports whether h is a host name of letters, digits, '-', '_'
// and '.', or an IP address; an IPv6 address must have been in brackets.
func validHost(h string, bracketed bool) bool {
	if strings.Contains(h, ":") {
		addr, _, _ := strings.Cut(h, "%") // zone, as in fe80::1%eth0
		return bracketed && net.ParseIP(addr) != nil
	}
	if bracketed {
		return false
	}
	for _, r := range h {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == '-' || r == '_' || r == '.'
		if !ok {
			return false
		}
	}
	return true
}

// String returns u in canonical form: ssh://user@host[:port]/path, with the
// port left out when it is 22 and the path escaped as in a URL.
func (u SSHURL) String() string {
	host := u.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if u.Port != 22 {
		host = net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
	}
	pu := url.URL{Scheme: "ssh", Host: host, Path: u.Path}
	if u.User != "" {
		pu.User = url.User(u.User)
	}
	return pu.String()
}

// address is host:port as dialled and as looked up in known_hosts.
func (u SSHURL) address() string {
	return net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
}

// SSHOptions configures DialSSH. The zero value uses the user's known_hosts,
// the ssh-agent or default key files, and runs "understudy" on the remote host.
type SSHOptions struct {
	// KnownHosts lists known_hosts files. Empty means ~/.ssh/known_hosts and
	// /etc/ssh/ssh_known_hosts, those that exist. Host keys are always checked.
	KnownHosts []string

	// Identity lists private key files. Empty means the ssh-agent at
	// SSH_AUTH_SOCK if any, then those of ~/.ssh/id_ed25519, id_ecdsa and
	// id_rsa that exist. Keys with a passphrase cannot be used from files.
	Identity []string

	// RemoteCommand is the program run on the remote host, "understudy" if
	// empty. Like rsync's --rsync-path it goes to the remote shell as written,
	// so it may be "sudo -u backup understudy".
	RemoteCommand string

	// RemoteArgs follow RemoteCommand, each shell-quoted, for example
	// {"serve", "--repo", "/var/lib/understudy/repo"}.
	RemoteArgs []string

	// Keepalive is the interval of keepalive@openssh.com requests, 15s if
	// zero; a negative value turns them off. After three intervals without a
	// reply the connection is closed and Read and Write fail.
	Keepalive time.Duration

	// ConnectTimeout bounds the TCP connect, the SSH handshake and starting
	// the remote command; 30s if zero.
	ConnectTimeout time.Duration

	// Stderr receives the remote command's stderr; nil discards it.
	Stderr io.Writer

	// Logger receives notes such as a skipped key file; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Defaults used when the SSHOptions field is zero.
const (
	DefaultRemoteCommand  = "understudy"
	DefaultKeepalive      = 15 * time.Second
	DefaultConnectTimeout = 30 * time.Second

	// keepaliveMisses is how many keepalive intervals may pass without a
	// reply before the connection is declared dead.
	keepaliveMisses = 3
)

func (o SSHOptions) withDefaults() SSHOptions {
	if o.RemoteCommand == "" {
		o.RemoteCommand = DefaultRemoteCommand
	}
	if o.Keepalive == 0 {
		o.Keepalive = DefaultKeepalive
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// commandLine is the remote shell command: RemoteCommand as written, then
// each RemoteArgs element quoted.
func (o SSHOptions) commandLine() string {
	parts := []string{o.RemoteCommand}
	for _, a := range o.RemoteArgs {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

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

// HostKeyError is returned by DialSSH when the server's host key is not in
// the known_hosts files (Changed is false) or differs from the key recorded
// there (Changed is true). The connection is refused in both cases.
type HostKeyError struct {
	Host        string   // as written in known_hosts: "host" or "[host]:port"
	Fingerprint string   // ssh.FingerprintSHA256 of the key the server presented
	KeyType     string   // type of that key, e.g. "ssh-ed25519"
	Changed     bool     // the host is known with other keys: possibly an attack
	KnownHosts  []string // the known_hosts files consulted (none: no file exists)
	Want        []string // when Changed: the known keys, "SHA256:... TYPE FILE:LINE"

	hostname  string   // for the suggested commands
	port      int      //
	wantFiles []string // files holding the known keys
	lookedFor []string // the default files, when none exists
}

// Error says what was presented, why it is refused and what to do, naming
// the host and the SHA256 fingerprint.
func (e *HostKeyError) Error() string {
	file := "~/.ssh/known_hosts"
	switch {
	case len(e.KnownHosts) > 0:
		file = shellQuote(e.KnownHosts[0])
	case len(e.lookedFor) > 0:
		file = shellQuote(e.lookedFor[0])
	}
	keyscan := "ssh-keyscan -t " + shellQuote(e.KeyType)
	if e.port != 22 {
		keyscan += " -p " + strconv.Itoa(e.port)
	}
	keyscan += " " + shellQuote(e.hostname) + " >> " + file
	var b strings.Builder
	switch {
	case e.Changed:
		fmt.Fprintf(&b, "ssh: the host key of %s has CHANGED: it presented %s %s but known_hosts has %s. "+
			"This may be an attack (someone intercepting the connection), so it is refused. "+
			"If the change is expected, verify the new fingerprint out of band, then run ",
			e.Host, e.KeyType, e.Fingerprint, strings.Join(e.Want, ", "))
		files := e.wantFiles
		for _, f := range files {
			fmt.Fprintf(&b, "ssh-keygen -R %s -f %s; ", shellQuote(e.Host), shellQuote(f))
		}
		fmt.Fprintf(&b, "%s", keyscan)
	case len(e.KnownHosts) == 0:
		looked := "any known_hosts file"
		if len(e.lookedFor) > 0 {
			looked = strings.Join(e.lookedFor, " or ")
		}
		fmt.Fprintf(&b, "ssh: cannot check the host key of %s (%s %s): there is no %s. "+
			"Verify the fingerprint out of band, then add it: %s",
			e.Host, e.KeyType, e.Fingerprint, looked, keyscan)
	default:
		fmt.Fprintf(&b, "ssh: host %s is not in %s (it presented %s %s). "+
			"Verify the fingerprint out of band, then add it: %s",
			e.Host, strings.Join(e.KnownHosts, ", "), e.KeyType, e.Fingerprint, keyscan)
	}
	return b.String()
}

// hostKeyChecker checks server host keys against known_hosts files.
type hostKeyChecker struct {
	db        ssh.HostKeyCallback // nil when no file exists
	files     []string            // files read
	lookedFor []string            // the default files, when none exists
	hostname  string
	port      int
}

// newHostKeyChecker reads the known_hosts files. A listed file that does not
// exist is left out, so that the refusal can suggest adding the host to it.
func newHostKeyChecker(files []string, hostname string, port int) (*hostKeyChecker, error) {
	h := &hostKeyChecker{hostname: hostname, port: port}
	if len(files) == 0 {
		if home, err := os.UserHomeDir(); err == nil {
			files = append(files, filepath.Join(home, ".ssh", "known_hosts"))
		}
		files = append(files, "/etc/ssh/ssh_known_hosts")
	}
	for _, f := range files {
		_, err := os.Stat(f)
		switch {
		case err == nil:
			h.files = append(h.files, f)
		case errors.Is(err, os.ErrNotExist):
		default:
			return nil, fmt.Errorf("ssh: known_hosts: %w", err)
		}
	}
	if len(h.files) == 0 {
		h.lookedFor = files
		return h, nil
	}
	db, err := knownhosts.New(h.files...)
	if err != nil {
		return nil, fmt.Errorf("ssh: reading known_hosts: %w", err)
	}
	h.db = db
	return h, nil
}

// check is the ssh.HostKeyCallback.
func (h *hostKeyChecker) check(address string, remote net.Addr, key ssh.PublicKey) error {
	hke := &HostKeyError{
		Host:        knownhosts.Normalize(address),
		Fingerprint: ssh.FingerprintSHA256(key),
		KeyType:     key.Type(),
		KnownHosts:  h.files,
		hostname:    h.hostname,
		port:        h.port,
		lookedFor:   h.lookedFor,
	}
	if h.db == nil {
		return hke
	}
	err := h.db(address, remote, key)
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ke):
		for _, w := range ke.Want {
			hke.Changed = true
			hke.Want = append(hke.Want, fmt.Sprintf("%s %s %s:%d",
				ssh.FingerprintSHA256(w.Key), w.Key.Type(), w.Filename, w.Line))
			hke.wantFiles = appendUnique(hke.wantFiles, w.Filename)
		}
		return hke
	case errors.As(err, &re):
		return fmt.Errorf("ssh: the host key %s %s of %s is marked @revoked in %s:%d; refused",
			key.Type(), ssh.FingerprintSHA256(key), hke.Host, re.Revoked.Filename, re.Revoked.Line)
	default:
		return fmt.Errorf("ssh: checking host key of %s: %w", hke.Host, err)
	}
}

// algorithms returns the host key algorithms of the keys known for address,
// so that the server presents one of those. Without this a server holding
// several keys may present a type we do not know and look "changed". It
// returns nil (the library's default) when no plain key is known.
func (h *hostKeyChecker) algorithms(address string, remote net.Addr) []string {
	if h.db == nil {
		return nil
	}
	// The known_hosts package has no look-up; checking a random key that
	// cannot match lists the known ones.
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil
	}
	probe, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if !errors.As(h.db(address, remote, probe), &ke) {
		return nil
	}
	var algos []string
	for _, w := range ke.Want {
		switch t := w.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			algos = appendUnique(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			algos = appendUnique(algos, t)
		}
	}
	return algos
}

func appendUnique(list []string, items ...string) []string {
	for _, it := range items {
		found := false
		for _, l := range list {
			if l == it {
				found = true
				break
			}
		}
		if !found {
			list = append(list, it)
		}
	}
	return list
}

// authMethod builds the single publickey method from the agent and the key
// files (the library tries each method name only once). With identity empty
// it uses the agent and the default key files. closeAgent must be called
// after the handshake.
func authMethod(identity []string, log *slog.Logger) (auth ssh.AuthMethod, closeAgent func(), err error) {
	closeAgent = func() {}
	var (
		ag    agent.ExtendedAgent
		notes []string // why each candidate was not usable
	)
	files := identity
	if len(identity) == 0 {
		if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
			conn, err := net.Dial("unix", sock)
			if err != nil {
				notes = append(notes, fmt.Sprintf("ssh-agent at %s: %v", sock, err))
			} else {
				ag = agent.NewClient(conn)
				closeAgent = func() { conn.Close() }
				if keys, err := ag.List(); err != nil || len(keys) == 0 {
					notes = append(notes, "ssh-agent has no keys")
					ag = nil
				}
			}
		} else {
			notes = append(notes, "no ssh-agent (SSH_AUTH_SOCK is not set)")
		}
		if home, err := os.UserHomeDir(); err == nil {
			for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
				f := filepath.Join(home, ".ssh", n)
				if _, err := os.Stat(f); err == nil {
					files = append(files, f)
				}
			}
		}
	}
	var signers []ssh.Signer
	var encrypted []string
	for _, f := range files {
		s, err := loadKey(f)
		var pm *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pm):
			encrypted = append(encrypted, f)
		case err != nil:
			closeAgent()
			return nil, nil, err
		default:
			signers = append(signers, s)
		}
	}
	if len(signers) == 0 && ag == nil {
		closeAgent()
		for _, f := range encrypted {
			notes = append(notes, f+" has a passphrase (load it into ssh-agent instead)")
		}
		if len(files) == 0 {
			notes = append(notes, "no key file (~/.ssh/id_ed25519, id_ecdsa, id_rsa)")
		}
		return nil, nil, fmt.Errorf("ssh: no usable identity: %s", strings.Join(notes, "; "))
	}
	for _, f := range encrypted {
		log.Info("ssh: skipping key file with a passphrase; load it into ssh-agent to use it", "file", f)
	}
	auth = ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
		var all []ssh.Signer
		if ag != nil {
			if s, err := ag.Signers(); err == nil {
				all = append(all, s...)
			} else {
				log.Info("ssh: ssh-agent gave no keys", "err", err)
			}
		}
		return append(all, signers...), nil
	})
	return auth, closeAgent, nil
}

// loadKey reads a private key file, refusing one that others may read as
// ssh does.
func loadKey(file string) (ssh.Signer, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("ssh: identity: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("ssh: identity %s refused: permissions %#o for %s are too open; "+
			"a private key must not be accessible by others: chmod 600 %s",
			file, perm, file, shellQuote(file))
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("ssh: identity: %w", err)
	}
	s, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		var pm *ssh.PassphraseMissingError
		if errors.As(err, &pm) {
			return nil, err
		}
		return nil, fmt.Errorf("ssh: identity %s: %w", file, err)
	}
	return s, nil
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
