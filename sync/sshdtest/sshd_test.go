package sshdtest

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func clientConfig(t *testing.T, s *Server) *ssh.ClientConfig {
	t.Helper()
	pem, err := os.ReadFile(s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	hostKeys, err := knownhosts.New(s.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	return &ssh.ClientConfig{
		User:              s.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   hostKeys,
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519},
	}
}

func TestServerRunsCommand(t *testing.T) {
	s := Start(t)
	s.Authorize(`command="echo forced",restrict ` + s.ClientPub)
	if fi, err := os.Stat(s.ClientKey); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("client key %s: %v, mode %v; want 0600", s.ClientKey, err, fi.Mode())
	}
	for range 2 { // a second connection gets a second sshd
		c, err := ssh.Dial("tcp", s.addr(), clientConfig(t, s))
		if err != nil {
			t.Fatal(err)
		}
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		out, err := sess.Output("ignored")
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != "forced\n" {
			t.Errorf("output %q, want %q", out, "forced\n")
		}
		c.Close()
	}
}

func TestServerNewHostKey(t *testing.T) {
	s := Start(t, "") // an empty line is allowed
	s.Authorize("restrict " + s.ClientPub)
	old := s.HostPub
	s.NewHostKey(t)
	if string(old.Marshal()) == string(s.HostPub.Marshal()) {
		t.Fatal("NewHostKey kept the key")
	}
	_, err := ssh.Dial("tcp", s.addr(), clientConfig(t, s))
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) || len(ke.Want) == 0 {
		t.Fatalf("dial after NewHostKey: %v; want a key mismatch", err)
	}
}

func TestStopKillsDaemons(t *testing.T) {
	s := Start(t)
	s.Authorize(`command="cat",restrict ` + s.ClientPub)
	c, err := ssh.Dial("tcp", s.addr(), clientConfig(t, s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start(""); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if err := sess.Wait(); err == nil {
		t.Fatal("session survived Stop")
	}
	s.Stop() // idempotent
}
