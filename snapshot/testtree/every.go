package testtree

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Paths and sizes in the tree Every builds, for tests that look at one case.
const (
	EveryHuge           = "sparse/huge" // 100 GiB, 1 MiB of data at 50 GiB, holes around
	EveryHugeSize       = 100 << 30     //
	EveryHugeDataOffset = 50 << 30      //
	EveryHugeDataLength = 1 << 20       //
	EveryTrailingHole   = "sparse/trailing-hole"
	EveryACLDir         = "acl"        // system.posix_acl_access and _default
	EveryCaps           = "files/caps" // security.capability cap_net_bind_service+ep
	EveryLong           = "long"       // a chain of directories deeper than 5000 bytes
	EveryLongDepth      = 26           // directories in the chain, names of 200 bytes
)

// Times in the tree Every builds.
var (
	OddNanos  = time.Unix(1234567890, 123456789)
	Before70  = time.Unix(-1234567890, 987654321) // 1930
	After2038 = time.Unix(4102444800, 1)          // 2100-01-01
)

// CapNetBindService is the raw security.capability value (struct
// vfs_cap_data, revision 2, little endian) of cap_net_bind_service+ep:
// magic VFS_CAP_REVISION_2|VFS_CAP_FLAGS_EFFECTIVE, then permitted and
// inheritable for capabilities 0-31 and 32-63.
var CapNetBindService = func() []byte {
	const (
		capRevision2      = 0x02000000
		capFlagsEffective = 0x000001
		capNetBindService = 10
	)
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, capRevision2|capFlagsEffective)
	b = binary.LittleEndian.AppendUint32(b, 1<<capNetBindService) // permitted 0-31
	b = binary.LittleEndian.AppendUint32(b, 0)                    // inheritable 0-31
	b = binary.LittleEndian.AppendUint32(b, 0)                    // permitted 32-63
	b = binary.LittleEndian.AppendUint32(b, 0)                    // inheritable 32-63
	return b
}()

// Every builds under root (an existing, empty directory) a tree with every
// file type and every metadata case understudy must restore:
//
//   - regular files: empty, small, 3 MiB random, 3 MiB compressible
//   - directories nested 3 deep, and a chain deeper than 5000 bytes
//   - symlinks: relative, absolute, dangling, to a directory, with an xattr
//   - hard links: three names in two directories, and a hard-linked FIFO
//   - block and character devices, a FIFO, a bound unix socket
//   - modes 4755, 2755 (file and directory), 1777, 0000, 0600
//   - owners 1234:5678, 0:0, 65534:65534
//   - mtimes with odd nanoseconds, before 1970 and after 2038
//   - xattrs user.* (text, binary, empty), trusted.*, security.selinux,
//     security.capability,
//     and system.posix_acl_access/_default on a directory (setfacl when
//     installed, else the raw ACL xattrs)
//   - flags immutable, append-only and nodump on files, nodump on a directory
//   - sparse files: 1 MiB of data in the middle of 100 GiB, a trailing hole
//   - names with non-UTF-8 bytes, a newline, spaces and a leading dash
//
// The content is deterministic, so two calls give trees that Compare equal.
func Every(t testing.TB, root string) {
	t.Helper()
	rnd := rand.NewChaCha8([32]byte{'u', 'n', 'd', 'e', 'r', 's', 't', 'u', 'd', 'y'})
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rnd.Read(b)
		return b
	}
	script := []byte("#!/bin/sh\necho understudy\n")

	d := Dir{
		"files": Directory{Mode: 0o755, Mtime: OddNanos, Xattrs: map[string][]byte{"user.dir": []byte("on a directory")}, Entries: Dir{
			"empty":             File{},
			"small":             File{Content: []byte("hello, understudy\n"), Mtime: OddNanos},
			"random-3m":         File{Content: random(3 << 20)},
			"text-3m":           File{Content: compressible(3 << 20)},
			"setuid":            File{Content: script, Mode: 0o4755, UID: 1234, GID: 5678},
			"setgid":            File{Content: script, Mode: 0o2755, GID: 5678},
			"no-perm":           File{Content: []byte("secret\n"), Mode: NoPerm},
			"private":           File{Content: []byte("mine\n"), Mode: 0o600, UID: 65534, GID: 65534},
			"caps":              File{Content: script, Mode: 0o755, UID: 1234, GID: 5678, Xattrs: map[string][]byte{"security.capability": CapNetBindService}},
			"before-1970":       File{Content: []byte("old\n"), Mtime: Before70},
			"after-2038":        File{Content: []byte("new\n"), Mtime: After2038},
			"bad-\xff\xfe":      File{Content: []byte("not UTF-8\n")},
			"new\nline":         File{Content: []byte("newline\n")},
			"-dash and spaces ": File{Content: []byte("dash\n")},
			"xattrs": File{Content: []byte("x\n"), Xattrs: map[string][]byte{
				"user.text":      []byte("hello"),
				"user.binary":    {0, 1, 0xff, 0xfe, 0, '\n'},
				"user.empty":     {},
				"trusted.secret": []byte("trusted value"),
				// An SELinux label, stored as a plain xattr on a kernel
				// without SELinux, as here; with the NUL the tools write.
				"security.selinux": []byte("system_u:object_r:etc_t:s0\x00"),
			}},
		}},
		"tree": Dir{"a": Directory{UID: 1234, GID: 5678, Entries: Dir{"b": Dir{"c": Dir{
			"leaf": File{Content: []byte("deep\n"), Mtime: OddNanos},
		}}}}},
		"links": Directory{Mtime: Before70, Entries: Dir{
			"relative": Symlink{Target: "../files/small"},
			"absolute": Symlink{Target: "/etc/passwd", UID: 1234, GID: 5678, Mtime: OddNanos,
				Xattrs: map[string][]byte{"trusted.link": []byte("on a symlink")}},
			"dangling": Symlink{Target: "does/not/exist", Mtime: After2038},
			"to-dir":   Symlink{Target: "../tree/a", UID: 65534, GID: 65534},
		}},
		"hard": Dir{
			"one": File{Content: []byte("three names\n"), Mode: 0o640, UID: 1234, GID: 5678, Mtime: OddNanos},
			"two": Hardlink{To: "hard/one"},
		},
		"hard2": Dir{"three": Hardlink{To: "hard/one"}},
		"special": Directory{Mtime: OddNanos, Entries: Dir{
			"block":     Dev{Block: true, Major: 8, Minor: 1, Mode: 0o660, GID: 6},
			"char":      Dev{Major: 1, Minor: 3, Mode: 0o666, Mtime: Before70, Xattrs: map[string][]byte{"trusted.dev": []byte("on a device")}},
			"fifo":      FIFO{Mode: 0o600, UID: 1234, GID: 5678, Mtime: OddNanos, Xattrs: map[string][]byte{"trusted.fifo": {}}},
			"fifo-link": Hardlink{To: "special/fifo"},
			"socket":    Socket{Mode: 0o755, UID: 65534, Mtime: After2038},
		}},
		"modes": Dir{
			"sticky":     Directory{Mode: 0o1777},
			"setgid-dir": Directory{Mode: 0o2755, GID: 5678, Entries: Dir{"inside": File{}}},
			"nobody":     Directory{Mode: 0o700, UID: 65534, GID: 65534},
			"root-only":  Directory{Mode: NoPerm},
		},
		EveryACLDir: Directory{Mode: 0o750, UID: 1234, GID: 5678},
		"flags": Dir{
			"immutable":   File{Content: []byte("cannot change\n"), Flags: FlagImmutable},
			"append-only": File{Content: []byte("can only grow\n"), Flags: FlagAppend},
			"nodump":      File{Content: []byte("not dumped\n"), Flags: FlagNoDump},
			"nodump-dir":  Directory{Flags: FlagNoDump, Entries: Dir{"inside": File{}}},
		},
		"sparse": Dir{
			"huge":          File{Sparse: []At{{Offset: EveryHugeDataOffset, Data: random(EveryHugeDataLength)}}, Size: EveryHugeSize},
			"trailing-hole": File{Content: random(64 << 10), Size: 16 << 20},
		},
		EveryLong: longChain(EveryLongDepth),
	}

	if _, err := exec.LookPath("setfacl"); err != nil {
		e := d[EveryACLDir].(Directory)
		e.Xattrs = map[string][]byte{
			"system.posix_acl_access":  EveryACL(),
			"system.posix_acl_default": EveryACL(),
		}
		d[EveryACLDir] = e
		t.Logf("testtree: setfacl not installed, writing the raw ACL xattrs")
	}
	Build(t, root, d)
	if _, err := exec.LookPath("setfacl"); err == nil {
		p := filepath.Join(root, EveryACLDir)
		for _, args := range [][]string{
			{"-m", "u:1234:rwx,g:5678:r-x,m:rwx,o::---", p},
			{"-d", "-m", "u::rwx,u:1234:rwx,g::r-x,g:5678:r-x,m:rwx,o::---", p},
		} {
			if out, err := exec.Command("setfacl", args...).CombinedOutput(); err != nil {
				t.Fatalf("testtree.Every: setfacl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	}
	checkACL(t, root)
}

// checkACL logs when the filesystem did not keep the ACLs (no ACL support).
func checkACL(t testing.TB, root string) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("testtree.Every: %v", err)
	}
	defer unix.Close(fd)
	x, err := xattrs(fd, EveryACLDir)
	if err != nil {
		t.Fatalf("testtree.Every: %v", err)
	}
	if _, ok := x["system.posix_acl_default"]; !ok {
		t.Logf("testtree: the filesystem keeps no POSIX ACLs; %s has none", EveryACLDir)
	}
}

// compressible returns n bytes of numbered text lines, "line %07d: the
// quick brown fox jumps over the lazy dog\n", formatted by hand: fmt takes a
// third of a second for 3 MiB under the race detector.
func compressible(n int) []byte {
	const text = ": the quick brown fox jumps over the lazy dog\n"
	b := make([]byte, 0, n+len(text)+16)
	var num [7]byte
	for i := 0; len(b) < n; i++ {
		for k, v := len(num)-1, i; k >= 0; k, v = k-1, v/10 {
			num[k] = byte('0' + v%10)
		}
		b = append(b, "line "...)
		b = append(b, num[:]...)
		b = append(b, text...)
	}
	return b[:n]
}

// longChain returns depth nested directories of 200-byte names, so that the
// deepest path is longer than PATH_MAX; the last holds a file and a symlink.
func longChain(depth int) Dir {
	leaf := Dir{
		"file":    File{Content: []byte("far down\n"), Mtime: OddNanos, UID: 1234},
		"symlink": Symlink{Target: "file", Mtime: Before70},
	}
	for i := depth - 1; i >= 0; i-- {
		name := fmt.Sprintf("%02d-%s", i, strings.Repeat("L", 197))
		leaf = Dir{name: leaf}
	}
	return leaf
}

// POSIX ACL xattr format (include/uapi/linux/posix_acl_xattr.h): a little
// endian uint32 version 2, then entries of tag uint16, perm uint16, id
// uint32, sorted by tag and id; id is undefined (0xffffffff) but for named
// users and groups.
const (
	aclVersion  = 2
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
	aclNoID     = 0xffffffff
)

type aclEntry struct {
	tag, perm uint16
	id        uint32
}

func aclXattr(entries ...aclEntry) []byte {
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

// EveryACL is the raw POSIX ACL xattr u::rwx,u:1234:rwx,g::r-x,g:5678:r-x,
// m::rwx,o::---: what setfacl makes of the mode 0750 of Every's ACL
// directory and the entries Every adds, as its access and default ACL.
func EveryACL() []byte {
	return aclXattr(
		aclEntry{aclUserObj, 7, aclNoID},
		aclEntry{aclUser, 7, 1234},
		aclEntry{aclGroupObj, 5, aclNoID},
		aclEntry{aclGroup, 5, 5678},
		aclEntry{aclMask, 7, aclNoID},
		aclEntry{aclOther, 0, aclNoID},
	)
}
