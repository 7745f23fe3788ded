package fsmeta

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/testtree"
	"github.com/understudy/understudy/snapshot/tree"
)

// openDir opens the directory p for the *at calls, closed at cleanup.
func openDir(t *testing.T, p string) int {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// readNode lstats and reads name in dirfd.
func readNode(t *testing.T, dirfd int, name string, owners *Owners) tree.Node {
	t.Helper()
	st, err := Lstat(dirfd, name)
	if err != nil {
		t.Fatalf("lstat %q: %v", name, err)
	}
	var n tree.Node
	if err := ReadNode(dirfd, name, &st, -1, owners, &n); err != nil {
		t.Fatalf("ReadNode %q: %v", name, err)
	}
	return n
}

// testOwners knows root, alice (1234) and staff (5678), nothing else.
func testOwners(t *testing.T) *Owners {
	t.Helper()
	dir := t.TempDir()
	o := &Owners{passwdPath: filepath.Join(dir, "passwd"), groupPath: filepath.Join(dir, "group")}
	if err := os.WriteFile(o.passwdPath, []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:1234:5678::/home/alice:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(o.groupPath, []byte("root:x:0:\nstaff:x:5678:alice\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return o
}

// testACL is the ACL Every puts on its ACL directory.
var testACL = testtree.EveryACL()

// flagsSupported reports whether the filesystem of dir keeps the given inode
// flags.
func flagsSupported(t *testing.T, dir string, flags uint32) bool {
	t.Helper()
	f, err := os.CreateTemp(dir, "flags-probe-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	defer setFlags(int(f.Fd()), 0) //nolint:errcheck // lets the probe be removed
	cur, ok, err := getFlags(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return false
	}
	err = setFlags(int(f.Fd()), cur|flags)
	if err != nil && (errors.Is(err, unix.EOPNOTSUPP) || noFlags(err)) {
		return false
	}
	if err != nil {
		t.Fatalf("probe flags %#x in %s: %v", flags, dir, err)
	}
	return true
}

// mountFS mounts a fresh filesystem of type fstype (ramfs, tmpfs) on a
// temporary directory, unmounted at cleanup, or skips t.
func mountFS(t *testing.T, fstype string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount(fstype, dir, fstype, 0, ""); err != nil {
		t.Skipf("cannot mount %s on %s (%v): needs root outside a restricted container", fstype, dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// describe prints a node for failure messages.
func describe(n *tree.Node) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{%s mode %#o owner %d:%d (%q:%q) mtime %d.%09d flags %#x rdev %#x target %q xattrs [",
		n.Type, n.Mode, n.UID, n.GID, n.User, n.Group, n.MtimeSec, n.MtimeNsec, n.Flags, n.Rdev, n.Target)
	for i, x := range n.Xattrs {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%q", x.Name, x.Value)
	}
	b.WriteString("]}")
	return b.String()
}
