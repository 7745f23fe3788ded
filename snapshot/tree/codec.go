package tree

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/understudy/understudy/index"
)

// FormatVersion is the first byte of every tree blob.
const FormatVersion = 1

// Decoder bounds. Each is at least the Linux limit for the thing it bounds, so
// no real tree is refused, and small enough that a hostile blob cannot make the
// decoder allocate much more than the blob's own size.
const (
	MaxNameLen      = 1024    // Linux NAME_MAX is 255
	MaxTargetLen    = 1 << 16 // Linux PATH_MAX is 4096
	MaxLinkToLen    = 1 << 20 // relative path between two links in a deep tree
	MaxOwnerNameLen = 256
	MaxXattrs       = 1 << 16
	MaxXattrNameLen = 255     // XATTR_NAME_MAX
	MaxXattrValue   = 1 << 16 // XATTR_SIZE_MAX
)

// ErrCorrupt is wrapped by every decoding error.
var ErrCorrupt = errors.New("corrupt tree blob")

// extent kinds on the wire
const (
	extentData = 0
	extentHole = 1
)

// CheckName returns an error if name cannot be a single path component: it is
// empty, "." or "..", or holds '/' or NUL.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case name == "." || name == "..":
		return fmt.Errorf("name %q is not allowed", name)
	case strings.ContainsRune(name, '/'):
		return fmt.Errorf("name %q contains '/'", name)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("name %q contains NUL", name)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name of %d bytes is longer than %d", len(name), MaxNameLen)
	}
	return nil
}

// Encode sorts the tree's nodes by name and each node's xattrs by name, then
// returns the tree's deterministic encoding. Equal trees encode to equal bytes.
func Encode(t *Tree) ([]byte, error) {
	slices.SortFunc(t.Nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	size := 8
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if err := CheckName(n.Name); err != nil {
			return nil, err
		}
		if i > 0 && t.Nodes[i-1].Name == n.Name {
			return nil, fmt.Errorf("duplicate name %q", n.Name)
		}
		slices.SortFunc(n.Xattrs, func(a, b Xattr) int { return strings.Compare(a.Name, b.Name) })
		for j := 1; j < len(n.Xattrs); j++ {
			if n.Xattrs[j-1].Name == n.Xattrs[j].Name {
				return nil, fmt.Errorf("%q: duplicate xattr %q", n.Name, n.Xattrs[j].Name)
			}
		}
		size += 64 + len(n.Name) + len(n.Target) + len(n.LinkTo) + len(n.Content)*40
		for _, x := range n.Xattrs {
			size += 8 + len(x.Name) + len(x.Value)
		}
	}
	buf := make([]byte, 0, size)
	buf = append(buf, FormatVersion)
	buf = binary.AppendUvarint(buf, uint64(len(t.Nodes)))
	for i := range t.Nodes {
		var err error
		if buf, err = appendNode(buf, &t.Nodes[i]); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

func appendBytes(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

func appendNode(buf []byte, n *Node) ([]byte, error) {
	if n.Mode&^ModeMask != 0 {
		return nil, fmt.Errorf("%q: mode %o has bits outside %o", n.Name, n.Mode, ModeMask)
	}
	if n.MtimeNsec >= 1e9 {
		return nil, fmt.Errorf("%q: mtime nanoseconds %d out of range", n.Name, n.MtimeNsec)
	}
	buf = appendBytes(buf, n.Name)
	buf = append(buf, byte(n.Type))
	buf = binary.AppendUvarint(buf, uint64(n.Mode))
	buf = binary.AppendUvarint(buf, uint64(n.UID))
	buf = binary.AppendUvarint(buf, uint64(n.GID))
	buf = appendBytes(buf, n.User)
	buf = appendBytes(buf, n.Group)
	buf = binary.AppendVarint(buf, n.MtimeSec)
	buf = binary.AppendUvarint(buf, uint64(n.MtimeNsec))
	buf = binary.AppendUvarint(buf, uint64(n.Flags))
	buf = binary.AppendUvarint(buf, uint64(len(n.Xattrs)))
	for _, x := range n.Xattrs {
		buf = appendBytes(buf, x.Name)
		buf = appendBytes(buf, string(x.Value))
	}
	if n.Type == Dir && n.LinkTo != "" {
		return nil, fmt.Errorf("%q: a directory cannot be a hard link", n.Name)
	}
	buf = appendBytes(buf, n.LinkTo)
	switch n.Type {
	case File:
		buf = binary.AppendUvarint(buf, uint64(len(n.Content)))
		for _, e := range n.Content {
			if e.IsHole() {
				buf = append(buf, extentHole)
			} else {
				buf = append(buf, extentData)
				buf = append(buf, e.Blob[:]...)
			}
			buf = binary.AppendUvarint(buf, e.Length)
		}
	case Dir:
		buf = append(buf, n.Subtree[:]...)
	case Symlink:
		buf = appendBytes(buf, n.Target)
	case BlockDev, CharDev:
		buf = binary.AppendUvarint(buf, n.Rdev)
	case FIFO, Socket:
	default:
		return nil, fmt.Errorf("%q: unknown node type %d", n.Name, n.Type)
	}
	return buf, nil
}

// decoder reads a tree blob, remembering the first error.
type decoder struct {
	data []byte
	err  error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.data) == 0 {
		d.fail("truncated")
		return 0
	}
	b := d.data[0]
	d.data = d.data[1:]
	return b
}

func (d *decoder) uvarint(max uint64, what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.data)
	if n <= 0 {
		d.fail("bad %s", what)
		return 0
	}
	if n > 1 && d.data[n-1] == 0 {
		d.fail("overlong %s", what)
		return 0
	}
	d.data = d.data[n:]
	if v > max {
		d.fail("%s %d exceeds %d", what, v, max)
		return 0
	}
	return v
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.data)
	if n <= 0 {
		d.fail("bad %s", what)
		return 0
	}
	if n > 1 && d.data[n-1] == 0 {
		d.fail("overlong %s", what)
		return 0
	}
	d.data = d.data[n:]
	return v
}

func (d *decoder) bytes(max uint64, what string) []byte {
	n := d.uvarint(max, what+" length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.data)) {
		d.fail("%s of %d bytes runs past the end", what, n)
		return nil
	}
	b := d.data[:n:n]
	d.data = d.data[n:]
	return b
}

func (d *decoder) string(max uint64, what string) string { return string(d.bytes(max, what)) }

func (d *decoder) id(what string) (id index.ID) {
	if d.err != nil {
		return id
	}
	if len(d.data) < index.IDSize {
		d.fail("truncated %s", what)
		return id
	}
	copy(id[:], d.data)
	d.data = d.data[index.IDSize:]
	return id
}

// Decode parses a tree blob. It rejects unknown versions and types, names that
// are not single path components, unsorted or duplicate names, and lengths that
// exceed the decoder bounds or the blob.
func Decode(data []byte) (*Tree, error) {
	d := &decoder{data: data}
	if v := d.byte(); d.err == nil && v != FormatVersion {
		return nil, fmt.Errorf("%w: unknown format version %d", ErrCorrupt, v)
	}
	// The smallest entry (a FIFO with a one-byte name) is 13 bytes, so the
	// count is bounded by the blob.
	count := d.uvarint(uint64(len(data)/13), "entry count")
	if d.err != nil {
		return nil, d.err
	}
	t := &Tree{Nodes: make([]Node, 0, min(count, preallocMax))}
	for i := uint64(0); i < count; i++ {
		t.Nodes = room(t.Nodes, count)
		var n Node
		d.node(&n)
		if d.err != nil {
			return nil, d.err
		}
		if err := CheckName(n.Name); err != nil {
			return nil, fmt.Errorf("%w: entry %d: %w", ErrCorrupt, i, err)
		}
		if i > 0 && t.Nodes[i-1].Name >= n.Name {
			return nil, fmt.Errorf("%w: entry %q not after %q", ErrCorrupt, n.Name, t.Nodes[i-1].Name)
		}
		t.Nodes = append(t.Nodes, n)
	}
	if len(d.data) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last entry", ErrCorrupt, len(d.data))
	}
	return t, nil
}

// preallocMax bounds the entries or extents allocated before any is
// decoded. A count is bounded by the bytes left in the blob, but a node
// takes about 15 times its smallest encoding in memory and an extent 20, so
// a blob of MaxTreeBlob bytes that declares the most it could hold and then
// fails would cost gigabytes; beyond preallocMax, room doubles as entries
// actually decode.
const preallocMax = 1024

// room returns s with space for one more element, doubling its capacity
// when full but never beyond count elements.
func room[S ~[]E, E any](s S, count uint64) S {
	if len(s) < cap(s) {
		return s
	}
	return slices.Grow(s, int(min(count-uint64(len(s)), uint64(max(len(s), 1)))))
}

func (d *decoder) node(n *Node) {
	n.Name = d.string(MaxNameLen, "name")
	n.Type = Type(d.byte())
	n.Mode = uint32(d.uvarint(ModeMask, "mode"))
	n.UID = uint32(d.uvarint(math.MaxUint32, "uid"))
	n.GID = uint32(d.uvarint(math.MaxUint32, "gid"))
	n.User = d.string(MaxOwnerNameLen, "user name")
	n.Group = d.string(MaxOwnerNameLen, "group name")
	n.MtimeSec = d.varint("mtime")
	n.MtimeNsec = uint32(d.uvarint(1e9-1, "mtime nanoseconds"))
	n.Flags = uint32(d.uvarint(math.MaxUint32, "flags"))
	nx := d.uvarint(MaxXattrs, "xattr count")
	if d.err != nil {
		return
	}
	if nx > 0 {
		n.Xattrs = make([]Xattr, 0, min(nx, uint64(len(d.data)/2)))
	}
	for j := uint64(0); j < nx && d.err == nil; j++ {
		name := d.string(MaxXattrNameLen, "xattr name")
		value := d.bytes(MaxXattrValue, "xattr value")
		if d.err != nil {
			return
		}
		if name == "" || (j > 0 && n.Xattrs[j-1].Name >= name) {
			d.fail("%q: xattr names empty, unsorted or repeated", n.Name)
			return
		}
		n.Xattrs = append(n.Xattrs, Xattr{Name: name, Value: bytes.Clone(value)})
	}
	n.LinkTo = d.string(MaxLinkToLen, "link path")
	if d.err != nil {
		return
	}
	switch n.Type {
	case File:
		d.content(n)
	case Dir:
		if n.LinkTo != "" {
			d.fail("%q: a directory cannot be a hard link", n.Name)
		}
		n.Subtree = d.id("subtree")
	case Symlink:
		n.Target = d.string(MaxTargetLen, "symlink target")
	case BlockDev, CharDev:
		n.Rdev = d.uvarint(math.MaxUint64, "device number")
	case FIFO, Socket:
	default:
		d.fail("%q: unknown node type %d", n.Name, n.Type)
	}
}

func (d *decoder) content(n *Node) {
	// The smallest extent is two bytes, so the count is bounded by the blob.
	count := d.uvarint(uint64(len(d.data)/2), "extent count")
	if d.err != nil || count == 0 {
		return
	}
	n.Content = make([]Extent, 0, min(count, preallocMax))
	var size uint64
	for i := uint64(0); i < count && d.err == nil; i++ {
		n.Content = room(n.Content, count)
		var e Extent
		switch kind := d.byte(); kind {
		case extentData:
			e.Blob = d.id("data blob")
			if d.err == nil && e.Blob.IsZero() {
				d.fail("%q: zero blob ID", n.Name)
			}
		case extentHole:
		default:
			d.fail("%q: unknown extent kind %d", n.Name, kind)
		}
		e.Length = d.uvarint(math.MaxInt64, "extent length")
		if d.err != nil {
			return
		}
		if e.Length == 0 || size+e.Length > math.MaxInt64 {
			d.fail("%q: extent length %d invalid at offset %d", n.Name, e.Length, size)
			return
		}
		size += e.Length
		n.Content = append(n.Content, e)
	}
}

// AppendNode appends the encoding of one node, exactly as it appears inside
// a tree blob, to buf. It sorts the node's xattrs by name.
func AppendNode(buf []byte, n *Node) ([]byte, error) {
	if err := CheckName(n.Name); err != nil {
		return nil, err
	}
	slices.SortFunc(n.Xattrs, func(a, b Xattr) int { return strings.Compare(a.Name, b.Name) })
	for j := 1; j < len(n.Xattrs); j++ {
		if n.Xattrs[j-1].Name == n.Xattrs[j].Name {
			return nil, fmt.Errorf("%q: duplicate xattr %q", n.Name, n.Xattrs[j].Name)
		}
	}
	return appendNode(buf, n)
}

// DecodeNode parses one node encoded by AppendNode, which must fill data.
func DecodeNode(data []byte) (Node, error) {
	d := &decoder{data: data}
	var n Node
	d.node(&n)
	if d.err != nil {
		return Node{}, d.err
	}
	if err := CheckName(n.Name); err != nil {
		return Node{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if len(d.data) != 0 {
		return Node{}, fmt.Errorf("%w: %d bytes after the node", ErrCorrupt, len(d.data))
	}
	return n, nil
}

// NodeHead is the start of an encoded node, read without decoding the rest.
// Its byte slices alias the encoding.
type NodeHead struct {
	Name        []byte
	Type        Type
	UID, GID    uint32
	User, Group []byte
}

// PeekNode reads the head of an encoded node.
func PeekNode(data []byte) (NodeHead, error) {
	d := &decoder{data: data}
	var h NodeHead
	h.Name = d.bytes(MaxNameLen, "name")
	h.Type = Type(d.byte())
	d.uvarint(ModeMask, "mode")
	h.UID = uint32(d.uvarint(math.MaxUint32, "uid"))
	h.GID = uint32(d.uvarint(math.MaxUint32, "gid"))
	h.User = d.bytes(MaxOwnerNameLen, "user name")
	h.Group = d.bytes(MaxOwnerNameLen, "group name")
	return h, d.err
}
