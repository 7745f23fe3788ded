package snapshot

import (
	"errors"
	"fmt"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// BlobLoader loads a blob's verified content.
type BlobLoader interface {
	LoadBlob(id index.ID, buf []byte) ([]byte, error)
}

// LoadTree loads and decodes tree id.
func LoadTree(l BlobLoader, id index.ID) (*tree.Tree, error) {
	data, err := l.LoadBlob(id, nil)
	if err != nil {
		return nil, fmt.Errorf("load tree %s: %w", id.Short(), err)
	}
	t, err := tree.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	return t, nil
}

// Selection rebuilds the selection a snapshot was taken with, which is its
// scope for restore --delete and apply.
func (r *Record) Selection() (*selection.Selection, error) {
	return selection.New(r.Paths, r.Excludes, r.OneFileSystem)
}

// ErrNotFound is wrapped when a path is not in a snapshot.
var ErrNotFound = errors.New("not in the snapshot")

// Resolve finds absolute path p in the snapshot whose root tree is root. It
// returns the node (nil for "/") and, for a directory, its tree.
func Resolve(l BlobLoader, root index.ID, p string) (*tree.Node, *tree.Tree, error) {
	t, err := LoadTree(l, root)
	if err != nil {
		return nil, nil, err
	}
	var n *tree.Node
	for _, c := range splitPath(p) {
		if t == nil {
			return nil, nil, fmt.Errorf("%s: %w (a parent is not a directory)", displayPath(p), ErrNotFound)
		}
		if n = t.Find(c); n == nil {
			return nil, nil, fmt.Errorf("%s: %w", displayPath(p), ErrNotFound)
		}
		t = nil
		if n.Type == tree.Dir {
			if t, err = LoadTree(l, n.Subtree); err != nil {
				return nil, nil, err
			}
		}
	}
	return n, t, nil
}
