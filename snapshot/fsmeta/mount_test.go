package fsmeta

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mountinfo is a made-up /proc/self/mountinfo: /srv/data mounted twice
// (the second on top), a mount point with a space, a bind mount of the
// same device elsewhere, and a line without the separator.
const mountinfo = `21 26 0:20 / /proc rw,relatime - proc proc rw
26 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 26 8:2 / /srv/data rw,relatime shared:7 - xfs /dev/sda2 rw
31 30 8:3 / /srv/data rw,relatime - ext4 /dev/sda3 rw
32 26 0:40 / /mnt/with\040space rw - tmpfs tmpfs rw,size=6144k
33 26 0:41 / /mnt/a rw - tmpfs tmpfs rw
34 26 8:1 /home /srv/data/home rw - ext4 /dev/sda1 rw
35 26 0:42 / /broken rw shared:9
`

func TestMountOfMountinfo(t *testing.T) {
	dev := func(maj, min uint32) uint64 { return unix.Mkdev(maj, min) }
	for _, c := range []struct {
		path      string
		dev       uint64
		point, fs string
	}{
		{"/", dev(8, 1), "/", "ext4"},
		{"/etc/passwd", dev(8, 1), "/", "ext4"},
		{"/proc/self", dev(0, 20), "/proc", "proc"},
		{"/procfs", dev(8, 1), "/", "ext4"}, // not below /proc
		{"/srv/data", dev(8, 3), "/srv/data", "ext4"},
		{"/srv/data/x/y", dev(8, 3), "/srv/data", "ext4"},                      // the mount on top
		{"/srv/data/home/u", dev(8, 1), "/srv/data/home", "ext4"},              // a bind mount below it
		{"/srv/data/x", dev(8, 2), "/srv/data", "xfs"},                         // the device decides
		{"/srv/data/x", dev(0, 99), "/srv/data", "ext4"},                       // no device matches: the deepest, last
		{"/mnt/with space/repo/packs", dev(0, 40), "/mnt/with space", "tmpfs"}, // unescaped
		{"/mnt/ab", dev(8, 1), "/", "ext4"},                                    // /mnt/a is not its ancestor
		{"/mnt/a/b", dev(0, 41), "/mnt/a", "tmpfs"},
		{"/broken/x", dev(0, 42), "/", "ext4"}, // a line without " - " is skipped
	} {
		point, fsType, err := mountOf(strings.NewReader(mountinfo), c.path, c.dev)
		if err != nil || point != c.point || fsType != c.fs {
			t.Errorf("mountOf(%q, %d) = %q, %q, %v; want %q, %q", c.path, c.dev, point, fsType, err, c.point, c.fs)
		}
	}
	if _, _, err := mountOf(strings.NewReader("21 26 0:20 / /proc rw - proc proc rw\n"), "/etc", 0); err == nil {
		t.Error("a path no mount holds: no error")
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:           "/plain",
		`/a\040b`:          "/a b",
		`/t\011n\012`:      "/t\tn\n",
		`/back\134slash`:   `/back\slash`,
		`/short\04`:        `/short\04`,
		`/not\8octal\0401`: "/not\\8octal 1",
		`\040\040`:         "  ",
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMountOf asks the running system: /proc is procfs on every Linux
// this runs on; a path that does not exist yet, or goes through a
// symlink, is on the filesystem of what it would resolve to.
func TestMountOf(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/proc/self", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/proc", "/proc/self/status", "/proc/no/such/file", filepath.Join(dir, "link", "status")} {
		point, fsType, err := MountOf(p)
		if err != nil || point != "/proc" || fsType != "proc" {
			t.Errorf("MountOf(%s) = %q, %q, %v; want /proc, proc", p, point, fsType, err)
		}
	}
	point, _, err := MountOf(filepath.Join(dir, "not", "yet"))
	if err != nil || !within(dir, point) {
		t.Errorf("MountOf(a missing path in %s) = %q, %v; want an ancestor of the directory", dir, point, err)
	}
}

// mountTmpfs mounts a tmpfs of 1 MiB at dir, or skips the test where
// mounting is not allowed.
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root; run as root as CI does")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("this machine forbids mounting a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}

// TestMountOfTmpfs mounts a tmpfs at a path with a space and finds it, also
// through a relative path, and then a full write on it is a NoSpaceError
// that names it.
func TestMountOfTmpfs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "small fs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := filepath.EvalSymlinks(dir) // as mountinfo names it
	if err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, dir)
	point, fsType, err := MountOf(filepath.Join(dir, "repo", "packs"))
	if err != nil || point != dir || fsType != "tmpfs" {
		t.Fatalf("MountOf = %q, %q, %v; want %q, tmpfs", point, fsType, err, dir)
	}
	t.Chdir(dir)
	if point, _, err := MountOf("a/b"); err != nil || point != dir {
		t.Errorf("MountOf(a/b) in %s = %q, %v", dir, point, err)
	}

	f, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var werr error
	for buf := make([]byte, 64<<10); werr == nil; {
		_, werr = f.Write(buf)
	}
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v, want ENOSPC", werr)
	}
	err = NoSpace(fmt.Errorf("save: %w", werr), "")
	var ns *NoSpaceError
	if !errors.As(err, &ns) || ns.Mount != dir || ns.FSType != "tmpfs" || ns.File != f.Name() {
		t.Fatalf("NoSpace = %#v", err)
	}
	want := fmt.Sprintf("no space left on device on %s (tmpfs) while writing %s: free space there and run the command again", dir, f.Name())
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("message %q\nwant it to start with %q", err, want)
	}
}

func TestNoSpace(t *testing.T) {
	full := &fs.PathError{Op: "write", Path: "/proc/self/fake", Err: syscall.ENOSPC}
	other := &fs.PathError{Op: "write", Path: "/proc/self/fake", Err: syscall.EIO}
	if err := NoSpace(nil, "x"); err != nil {
		t.Errorf("NoSpace(nil) = %v", err)
	}
	if err := NoSpace(other, ""); err != other {
		t.Errorf("NoSpace(EIO) = %v, want it unchanged", err)
	}

	err := NoSpace(fmt.Errorf("write pack: %w", full), "")
	var ns *NoSpaceError
	if !errors.As(err, &ns) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("NoSpace(ENOSPC) = %#v: not a NoSpaceError matching ENOSPC", err)
	}
	if ns.File != "/proc/self/fake" || ns.Mount != "/proc" || ns.FSType != "proc" {
		t.Errorf("NoSpaceError %+v: want the file of the PathError on /proc (proc)", ns)
	}
	if again := NoSpace(fmt.Errorf("context: %w", err), "/elsewhere"); !strings.HasSuffix(again.Error(), err.Error()) {
		t.Errorf("wrapped twice: %v", again)
	}

	// The caller's file wins over a relative name in the error (a file
	// created relative to a directory descriptor).
	rel := &fs.PathError{Op: "write", Path: ".tmp-1", Err: syscall.ENOSPC}
	if err := NoSpace(rel, "/proc/1/x"); !errors.As(err, &ns) || ns.File != "/proc/1/x" || ns.Mount != "/proc" {
		t.Errorf("NoSpace(relative, /proc/1/x) = %v", err)
	}
	// Without any path the message still says what to do.
	err = NoSpace(syscall.ENOSPC, "")
	if !errors.As(err, &ns) || ns.Mount != "" || !strings.Contains(err.Error(), "free space on its filesystem") {
		t.Errorf("NoSpace(ENOSPC) without a path = %q", err)
	}
	le := &os.LinkError{Op: "rename", Old: "/proc/a", New: "/proc/b", Err: syscall.ENOSPC}
	if err := NoSpace(le, ""); !errors.As(err, &ns) || ns.File != "/proc/b" {
		t.Errorf("NoSpace(LinkError) = %v", err)
	}
}
