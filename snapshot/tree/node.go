// Package tree defines the node of a snapshot tree and its deterministic
// encoding as a tree blob.
//
// A tree blob describes one directory: its entries sorted by name, each with
// only restorable metadata (no inode numbers, no ctime, no atime). Encoding the
// same directory twice, on any host, gives the same bytes and so the same ID.
// The decoder distrusts its input: every length is bounded before it is used
// and names that could escape a directory are rejected as corruption.
package tree

import (
	"fmt"

	"github.com/understudy/understudy/index"
)

// Type is the kind of filesystem object a node describes. The numbers are part
// of the on-disk format.
type Type uint8

// Node types.
const (
	File     Type = 1
	Dir      Type = 2
	Symlink  Type = 3
	BlockDev Type = 4
	CharDev  Type = 5
	FIFO     Type = 6
	Socket   Type = 7
)

func (t Type) String() string {
	switch t {
	case File:
		return "file"
	case Dir:
		return "dir"
	case Symlink:
		return "symlink"
	case BlockDev:
		return "blockdev"
	case CharDev:
		return "chardev"
	case FIFO:
		return "fifo"
	case Socket:
		return "socket"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Letter is the one-character type used in listings, as ls -l prints it.
func (t Type) Letter() byte {
	switch t {
	case Dir:
		return 'd'
	case Symlink:
		return 'l'
	case BlockDev:
		return 'b'
	case CharDev:
		return 'c'
	case FIFO:
		return 'p'
	case Socket:
		return 's'
	}
	return '-'
}

// ModeMask is the part of st_mode a node keeps: permissions plus setuid,
// setgid and sticky. The file type is in Node.Type.
const ModeMask = 0o7777

// Xattr is one extended attribute. POSIX ACLs, file capabilities and SELinux
// labels are xattrs too and travel as their raw bytes.
type Xattr struct {
	Name  string
	Value []byte
}

// Extent is a run of a regular file's content: either the data blob that holds
// it, or a hole of Length zero bytes that is not allocated on disk.
type Extent struct {
	Blob   index.ID // zero for a hole
	Length uint64
}

// IsHole reports whether the extent is a hole.
func (e Extent) IsHole() bool { return e.Blob.IsZero() }

// Node is one directory entry with everything needed to recreate it.
type Node struct {
	Name  string // one path component: never "", ".", "..", nor containing '/' or NUL
	Type  Type
	Mode  uint32 // permission, setuid, setgid, sticky bits (ModeMask)
	UID   uint32
	GID   uint32
	User  string // name of UID on the host that took the snapshot, "" if unknown
	Group string // name of GID likewise

	MtimeSec  int64
	MtimeNsec uint32

	// Flags are the inode flags of chattr(1) (FS_IOC_GETFLAGS), only those a
	// user can set; see fsmeta.SettableFlags.
	Flags uint32

	Xattrs []Xattr // sorted by name, names unique

	// LinkTo, for a non-directory that is a hard link to an entry met earlier
	// in the same snapshot (depth-first, names in byte order), is the path of
	// that entry relative to this node's directory, e.g. "../bin/a" or "b".
	// Empty for the first link of a group and for inodes with one link.
	LinkTo string

	Content []Extent // File: data and holes in order; Size() is their sum
	Subtree index.ID // Dir: the ID of the directory's tree blob
	Target  string   // Symlink: the link's target, verbatim
	Rdev    uint64   // BlockDev, CharDev: device number as unix.Mkdev makes it
}

// Size returns the length in bytes of a file's content.
func (n *Node) Size() uint64 {
	var size uint64
	for _, e := range n.Content {
		size += e.Length
	}
	return size
}

// Xattr returns the value of the named attribute and whether it is present.
func (n *Node) Xattr(name string) ([]byte, bool) {
	for _, x := range n.Xattrs {
		if x.Name == name {
			return x.Value, true
		}
	}
	return nil, false
}

// Tree is a decoded directory: its entries sorted by name.
type Tree struct {
	Nodes []Node
}

// Find returns the node with the given name, or nil.
func (t *Tree) Find(name string) *Node {
	lo, hi := 0, len(t.Nodes)
	for lo < hi {
		mid := (lo + hi) / 2
		if t.Nodes[mid].Name < name {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(t.Nodes) && t.Nodes[lo].Name == name {
		return &t.Nodes[lo]
	}
	return nil
}
