package snapshot

import (
	"bytes"
	"context"
	"slices"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/tree"
)

// Change is one difference between two snapshots.
type Change struct {
	Path string
	// Kind: '+' added, '-' removed, 'T' type changed, 'M' content (and
	// perhaps metadata) changed, 'U' metadata only.
	Kind byte
	// Attrs names the metadata that changed: mode, owner, mtime, xattrs,
	// flags, target, device, link.
	Attrs []string
}

// Diff reports the differences between the trees a and b, calling fn for
// each in path order. Subtrees with equal IDs are skipped without reading.
func Diff(ctx context.Context, l BlobLoader, a, b index.ID, fn func(Change) error) error {
	return diffTrees(ctx, l, "/", a, b, fn)
}

// DiffRecords is Diff of two snapshots, including the metadata of "/"
// itself, which is reported first.
func DiffRecords(ctx context.Context, l BlobLoader, a, b *Record, fn func(Change) error) error {
	ra, err := a.RootNode()
	if err != nil {
		return err
	}
	rb, err := b.RootNode()
	if err != nil {
		return err
	}
	if attrs := MetadataChanges(ra, rb); len(attrs) > 0 {
		if err := fn(Change{Path: "/", Kind: 'U', Attrs: attrs}); err != nil {
			return err
		}
	}
	return Diff(ctx, l, a.Root, b.Root, fn)
}

func diffTrees(ctx context.Context, l BlobLoader, p string, a, b index.ID, fn func(Change) error) error {
	if a == b {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ta, err := loadOrEmpty(l, a)
	if err != nil {
		return err
	}
	tb, err := loadOrEmpty(l, b)
	if err != nil {
		return err
	}
	i, j := 0, 0
	for i < len(ta.Nodes) || j < len(tb.Nodes) {
		var na, nb *tree.Node
		switch {
		case j >= len(tb.Nodes) || (i < len(ta.Nodes) && ta.Nodes[i].Name < tb.Nodes[j].Name):
			na = &ta.Nodes[i]
			i++
		case i >= len(ta.Nodes) || tb.Nodes[j].Name < ta.Nodes[i].Name:
			nb = &tb.Nodes[j]
			j++
		default:
			na, nb = &ta.Nodes[i], &tb.Nodes[j]
			i++
			j++
		}
		if err := diffNode(ctx, l, p, na, nb, fn); err != nil {
			return err
		}
	}
	return nil
}

func loadOrEmpty(l BlobLoader, id index.ID) (*tree.Tree, error) {
	if id.IsZero() {
		return &tree.Tree{}, nil
	}
	return LoadTree(l, id)
}

func diffNode(ctx context.Context, l BlobLoader, p string, a, b *tree.Node, fn func(Change) error) error {
	var sub index.ID
	switch {
	case b == nil:
		cp := childPath(p, a.Name)
		if err := fn(Change{Path: cp, Kind: '-'}); err != nil {
			return err
		}
		if a.Type == tree.Dir {
			return diffTrees(ctx, l, cp, a.Subtree, sub, fn)
		}
		return nil
	case a == nil:
		cp := childPath(p, b.Name)
		if err := fn(Change{Path: cp, Kind: '+'}); err != nil {
			return err
		}
		if b.Type == tree.Dir {
			return diffTrees(ctx, l, cp, sub, b.Subtree, fn)
		}
		return nil
	}
	cp := childPath(p, a.Name)
	if a.Type != b.Type {
		if err := fn(Change{Path: cp, Kind: 'T'}); err != nil {
			return err
		}
		var sa, sb index.ID
		if a.Type == tree.Dir {
			sa = a.Subtree
		}
		if b.Type == tree.Dir {
			sb = b.Subtree
		}
		return diffTrees(ctx, l, cp, sa, sb, fn)
	}
	attrs := MetadataChanges(a, b)
	kind := byte('U')
	if a.Type == tree.File && !slices.Equal(a.Content, b.Content) {
		kind = 'M'
	}
	if kind == 'M' || len(attrs) > 0 {
		if err := fn(Change{Path: cp, Kind: kind, Attrs: attrs}); err != nil {
			return err
		}
	}
	if a.Type == tree.Dir {
		return diffTrees(ctx, l, cp, a.Subtree, b.Subtree, fn)
	}
	return nil
}

// MetadataChanges names the restorable attributes, other than content and
// subtree, in which two nodes of the same type differ.
func MetadataChanges(a, b *tree.Node) []string {
	var attrs []string
	if a.Mode != b.Mode {
		attrs = append(attrs, "mode")
	}
	if a.UID != b.UID || a.GID != b.GID || a.User != b.User || a.Group != b.Group {
		attrs = append(attrs, "owner")
	}
	if a.MtimeSec != b.MtimeSec || a.MtimeNsec != b.MtimeNsec {
		attrs = append(attrs, "mtime")
	}
	if !slices.EqualFunc(a.Xattrs, b.Xattrs, func(x, y tree.Xattr) bool { return x.Name == y.Name && bytes.Equal(x.Value, y.Value) }) {
		attrs = append(attrs, "xattrs")
	}
	if a.Flags != b.Flags {
		attrs = append(attrs, "flags")
	}
	if a.Target != b.Target {
		attrs = append(attrs, "target")
	}
	if a.Rdev != b.Rdev {
		attrs = append(attrs, "device")
	}
	if a.LinkTo != b.LinkTo {
		attrs = append(attrs, "link")
	}
	return attrs
}
