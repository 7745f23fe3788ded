package sync

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os/user"
	"strconv"
	"strings"
	"time"
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
