package sync

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

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
