package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// Difference is one way a live tree differs from a snapshot.
type Difference struct {
	Path string `json:"path"`
	// Kind: '-' in the snapshot but missing from the target, '+' in the
	// target inside the snapshot's scope but not in the snapshot, 'T' of
	// another type, 'M' other content, 'U' other metadata only.
	Kind byte `json:"-"`
	// Attrs names what differs: content, size, mode, owner, mtime,
	// xattrs, flags, target, device, link.
	Attrs []string `json:"attrs,omitempty"`
}

// KindName returns the JSON name of Kind.
func (d Difference) KindName() string {
	switch d.Kind {
	case '-':
		return "missing"
	case '+':
		return "extra"
	case 'T':
		return "type"
	case 'M':
		return "content"
	}
	return "metadata"
}

// VerifyStats count what Verify looked at.
type VerifyStats struct {
	Entries     int64 `json:"entries"`
	BytesRead   int64 `json:"bytes_read"`
	Differences int64 `json:"differences"`
}

// Verify compares the live tree under target with snapshot rec, calling fn
// for every difference inside the snapshot's scope, in path order: every
// entry's type, content (each data extent hashed against its blob ID, each
// hole read as zeros), mode, numeric owner, mtime, xattrs, flags, symlink
// target, device number and hard links; and the entries the target has
// inside the scope that the snapshot lacks. It reads the target only,
// through directory descriptors opened without following symlinks, and
// loads only trees from loader.
func Verify(ctx context.Context, loader snapshot.BlobLoader, rec *snapshot.Record, target string, fn func(Difference) error) (VerifyStats, error) {
	var st VerifyStats
	sel, err := rec.Selection()
	if err != nil {
		return st, fmt.Errorf("snapshot's selection: %w", err)
	}
	rootfd, err := unix.Open(target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return st, fmt.Errorf("open target %s: %w", target, err)
	}
	defer unix.Close(rootfd)
	root, err := snapshot.LoadTree(loader, rec.Root)
	if err != nil {
		return st, err
	}
	v := &verifier{ctx: ctx, loader: loader, sel: sel, fn: fn, st: &st, links: make(map[string]inode), buf: make([]byte, 1<<20)}
	if sel.Root() == selection.InScope {
		n, err := rec.RootNode()
		if err != nil {
			return st, err
		}
		var rst unix.Stat_t
		if err := unix.Fstat(rootfd, &rst); err != nil {
			return st, err
		}
		if err := v.meta(rootfd, ".", "/", n, &rst); err != nil {
			return st, err
		}
	}
	err = v.dir(rootfd, "/", root, sel.Root())
	return st, err
}

type inode struct{ dev, ino uint64 }

type verifier struct {
	ctx    context.Context
	loader snapshot.BlobLoader
	sel    *selection.Selection
	fn     func(Difference) error
	st     *VerifyStats
	// links: inodes of the non-directories met so far with more than one
	// link, by snapshot path, to check LinkTo.
	links map[string]inode
	buf   []byte
}

func (v *verifier) report(d Difference) error {
	v.st.Differences++
	return v.fn(d)
}

func (v *verifier) dir(fd int, p string, t *tree.Tree, class selection.Class) error {
	if err := v.ctx.Err(); err != nil {
		return err
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		cp := childPath(p, n.Name)
		cc := v.sel.Child(class, cp, n.Type == tree.Dir)
		if cc == selection.Outside {
			continue
		}
		if err := v.entry(fd, p, cp, n, cc); err != nil {
			return err
		}
	}
	if class != selection.InScope {
		return nil
	}
	names, err := readNames(fd)
	if err != nil {
		return fmt.Errorf("list %s: %w", p, err)
	}
	for _, name := range names {
		if t.Find(name) != nil {
			continue
		}
		cp := childPath(p, name)
		lst, err := fsmeta.Lstat(fd, name)
		if err != nil {
			continue
		}
		if v.sel.Child(class, cp, isDir(&lst)) == selection.InScope {
			if err := v.report(Difference{Path: cp, Kind: '+'}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (v *verifier) entry(fd int, p, cp string, n *tree.Node, class selection.Class) error {
	v.st.Entries++
	lst, err := fsmeta.Lstat(fd, n.Name)
	if errors.Is(err, unix.ENOENT) {
		return v.report(Difference{Path: cp, Kind: '-'})
	}
	if err != nil {
		return fmt.Errorf("%s: %w", cp, err)
	}
	typ, _ := fsmeta.TypeOf(lst.Mode)
	if typ != n.Type {
		return v.report(Difference{Path: cp, Kind: 'T', Attrs: []string{typ.String() + " instead of " + n.Type.String()}})
	}
	if n.Type == tree.Dir {
		if class == selection.InScope {
			if err := v.meta(fd, n.Name, cp, n, &lst); err != nil {
				return err
			}
		}
		sub, err := snapshot.LoadTree(v.loader, n.Subtree)
		if err != nil {
			return err
		}
		cfd, err := openDirAt(fd, n.Name)
		if err != nil {
			return fmt.Errorf("%s: %w", cp, err)
		}
		defer unix.Close(cfd)
		return v.dir(cfd, cp, sub, class)
	}
	return v.meta(fd, n.Name, cp, n, &lst)
}

// meta compares one entry's metadata, hard link and content.
func (v *verifier) meta(fd int, name, p string, n *tree.Node, lst *unix.Stat_t) error {
	var live tree.Node
	if err := fsmeta.ReadNode(fd, name, lst, -1, nil, &live); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	var attrs []string
	kind := byte('U')
	if n.Type == tree.File {
		if uint64(lst.Size) != n.Size() {
			kind = 'M'
			attrs = append(attrs, "size")
		} else if same, err := v.sameContent(fd, name, n); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		} else if !same {
			kind = 'M'
			attrs = append(attrs, "content")
		}
	}
	want := *n
	want.User, want.Group = "", ""
	want.LinkTo = ""
	attrs = append(attrs, snapshot.MetadataChanges(&want, &live)...)
	if n.Type != tree.Dir {
		ino := inode{uint64(lst.Dev), lst.Ino}
		if n.LinkTo != "" {
			first := path.Clean(path.Join(path.Dir(p), n.LinkTo))
			if got, ok := v.links[first]; !ok || got != ino {
				attrs = append(attrs, "link")
			}
		} else if lst.Nlink > 1 {
			v.links[p] = ino
		}
	}
	if len(attrs) == 0 {
		return nil
	}
	return v.report(Difference{Path: p, Kind: kind, Attrs: attrs})
}

// sameContent reads a regular file of the right size and checks each data
// extent against its blob ID and each hole for zeros.
func (v *verifier) sameContent(dirfd int, name string, n *tree.Node) (bool, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return false, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	h := sha256.New()
	var off int64
	for _, e := range n.Content {
		if err := v.ctx.Err(); err != nil {
			return false, err
		}
		start, end := off, off+int64(e.Length)
		off = end
		if e.IsHole() {
			ok, err := v.zeros(f, start, end)
			if err != nil || !ok {
				return false, err
			}
			continue
		}
		r := io.NewSectionReader(f, start, end-start)
		h.Reset()
		k, err := io.CopyBuffer(h, r, v.buf)
		v.st.BytesRead += k
		if err != nil {
			return false, err
		}
		var sum index.ID
		if k != int64(e.Length) || !bytes.Equal(h.Sum(sum[:0]), e.Blob[:]) {
			return false, nil
		}
	}
	return true, nil
}

// zeros reports whether bytes [start, end) of f read as zeros, reading only
// the data regions the filesystem reports there (SEEK_DATA, SEEK_HOLE).
func (v *verifier) zeros(f *os.File, start, end int64) (bool, error) {
	fd := int(f.Fd())
	for start < end {
		data, err := unix.Seek(fd, start, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || (err == nil && data >= end) {
			return true, nil // a hole up to end, or to the end of the file
		}
		if err != nil {
			data = start // no SEEK_DATA here: read it all
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil || hole > end {
			hole = end
		}
		r := io.NewSectionReader(f, data, hole-data)
		for {
			k, err := r.Read(v.buf)
			v.st.BytesRead += int64(k)
			if !allZero(v.buf[:k]) {
				return false, nil
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return false, err
			}
		}
		start = hole
	}
	return true, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
