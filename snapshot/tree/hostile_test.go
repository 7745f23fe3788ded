package tree

import (
	"encoding/binary"
	"errors"
	"runtime"
	"strings"
	"testing"
)

// allocated returns the bytes the heap gave out while f ran.
func allocated(f func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// hostileHead encodes, without Encode's checks, a tree of count entries
// whose first entry is a node of type typ named name, up to and including
// its link path: what follows is the node's type-specific part.
func hostileHead(count uint64, name string, typ Type) []byte {
	b := []byte{FormatVersion}
	b = binary.AppendUvarint(b, count)
	b = appendBytes(b, name)
	b = append(b, byte(typ))
	b = binary.AppendUvarint(b, 0o644) // mode
	b = binary.AppendUvarint(b, 0)     // uid
	b = binary.AppendUvarint(b, 0)     // gid
	b = appendBytes(b, "")             // user
	b = appendBytes(b, "")             // group
	b = binary.AppendVarint(b, 1)      // mtime
	b = binary.AppendUvarint(b, 0)     // nsec
	b = binary.AppendUvarint(b, 0)     // flags
	b = binary.AppendUvarint(b, 0)     // xattrs
	return appendBytes(b, "")          // link path
}

// TestDecodeHugeDeclarationsAllocateLittle: counts and lengths far beyond
// the blob (2^60 entries, a name of 2^40 bytes, 2^60 xattrs or extents, a
// symlink target of 2^40 bytes) are refused as corrupt, and the decoder
// allocates nothing in proportion to what they declare.
func TestDecodeHugeDeclarationsAllocateLittle(t *testing.T) {
	const huge60, huge40 = 1 << 60, 1 << 40
	withName := func(n uint64) []byte {
		b := []byte{FormatVersion, 1}
		b = append(binary.AppendUvarint(b, n), "x"...)
		return append(b, make([]byte, 32)...) // room for the entry count
	}
	head := hostileHead(1, "f", File)
	noLinkPath := head[:len(head)-1] // the file's head up to its link path length
	xattrs := func() []byte {
		b := hostileHead(1, "f", FIFO)
		b = b[:len(b)-2] // drop the xattr count and the empty link path
		return binary.AppendUvarint(b, huge60)
	}
	for _, tc := range []struct {
		name string
		blob []byte
		want string
	}{
		{"entry count 2^60", binary.AppendUvarint([]byte{FormatVersion}, huge60), "entry count"},
		{"entry count 2^64-1", binary.AppendUvarint([]byte{FormatVersion}, ^uint64(0)), "entry count"},
		{"name length 2^40", withName(huge40), "name length"},
		{"name length 2^64-1", withName(^uint64(0)), "name length"},
		{"xattr count 2^60", xattrs(), "xattr count"},
		{"extent count 2^60", binary.AppendUvarint(hostileHead(1, "f", File), huge60), "extent count"},
		{"extent length 2^64-1", append(binary.AppendUvarint(hostileHead(1, "f", File), 1), extentHole, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), "extent length"},
		{"symlink target 2^40", binary.AppendUvarint(hostileHead(1, "s", Symlink), huge40), "symlink target length"},
		{"link path 2^40", binary.AppendUvarint(noLinkPath, huge40), "link path length"},
		{"overlong varint", []byte{FormatVersion, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, "entry count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			n := allocated(func() { _, err = Decode(tc.blob) })
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a corrupt tree error about the %s", err, tc.want)
			}
			if n > 64<<10 {
				t.Errorf("decoding %d bytes allocated %d bytes", len(tc.blob), n)
			}
		})
	}
}

// TestDecodeDeclaredCountsAreNotPreallocated: a count that the rest of a
// large blob could hold, followed by garbage, costs memory in proportion
// to the entries actually decoded, not to the count: a tree blob may be
// 256 MiB (and compress to kilobytes), and an extent or a node takes
// 20 or 15 times its smallest encoding in memory.
func TestDecodeDeclaredCountsAreNotPreallocated(t *testing.T) {
	const size = 4 << 20
	pad := func(b []byte) []byte { return append(b, make([]byte, size-len(b))...) }
	for _, tc := range []struct {
		name string
		blob []byte
		want string
	}{
		// One file that declares as many extents as the rest can hold;
		// its first extent is a data extent with a zero blob ID.
		{"extents", pad(binary.AppendUvarint(hostileHead(1, "f", File), (size-64)/2)), "zero blob ID"},
		// As many entries as the blob can hold; the first is of no
		// known type.
		{"entries", pad(binary.AppendUvarint([]byte{FormatVersion}, size/13-1)), "unknown node type 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			n := allocated(func() { _, err = Decode(tc.blob) })
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a corrupt tree error (%s)", err, tc.want)
			}
			if n > 1<<20 {
				t.Errorf("decoding a %d-byte blob that fails at its first entry allocated %d bytes", len(tc.blob), n)
			}
		})
	}
}

// TestDecodeRefusesHostileNamesEverywhere: a name that could leave its
// directory is refused at any position, also after valid entries, and so
// is a second entry of the same name (a symlink "etc" then a directory
// "etc", which a restore could follow).
func TestDecodeRefusesHostileNamesEverywhere(t *testing.T) {
	for _, name := range []string{"..", ".", "", "a/b", "/", "x\x00y", "/etc", "etc/passwd", strings.Repeat("n", MaxNameLen+1)} {
		for _, nodes := range [][]Node{
			{{Name: name, Type: File}},
			{{Name: "-", Type: FIFO}, {Name: name, Type: Symlink, Target: "/"}},
			{{Name: name, Type: Dir}, {Name: "\xff", Type: FIFO}},
		} {
			blob := encodeRaw(nodes...)
			if _, err := Decode(blob); !errors.Is(err, ErrCorrupt) {
				t.Errorf("name %q among %d entries: got %v, want ErrCorrupt", name, len(nodes), err)
			}
		}
	}
	dup := encodeRaw(Node{Name: "etc", Type: Symlink, Target: "/"}, Node{Name: "etc", Type: Dir})
	if _, err := Decode(dup); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a symlink and a directory of the same name: got %v, want ErrCorrupt", err)
	}
}
