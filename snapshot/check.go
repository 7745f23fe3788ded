package snapshot

import (
	"context"
	"errors"
	"fmt"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/tree"
)

// TreeProblem is a snapshot whose trees cannot be read completely: a tree
// that does not load or decode, or a blob it names that is missing or bad.
type TreeProblem struct {
	Snapshot index.ID
	Path     string   // where in the snapshot
	Blob     index.ID // the tree or data blob at fault
	Err      error
}

func (p TreeProblem) Error() string {
	return fmt.Sprintf("snapshot %s, %s: blob %s: %v", p.Snapshot.Short(), displayPath(p.Path), p.Blob, p.Err)
}

// CheckTrees walks every snapshot's trees: each must load, verify and
// decode, and every blob it names must be indexed and not in bad (blobs that
// check found corrupt). A tree found good is not read again for later
// snapshots, so the cost is that of the distinct trees; a tree with problems
// is read again so that every snapshot reaching it is reported.
func CheckTrees(ctx context.Context, idx *index.DB, loader BlobLoader, bad map[index.ID]bool, report func(TreeProblem)) error {
	snaps, badRecs, err := List(idx, "")
	if err != nil {
		return err
	}
	for _, e := range badRecs {
		report(TreeProblem{Err: e})
	}
	seen := make(map[index.ID]bool)
	for _, s := range snaps {
		c := &treeChecker{ctx: ctx, idx: idx, loader: loader, bad: bad, report: report, snap: s.ID, seen: seen}
		if err := c.walk("/", s.Root); err != nil {
			return err
		}
	}
	return nil
}

type treeChecker struct {
	ctx    context.Context
	idx    *index.DB
	loader BlobLoader
	bad    map[index.ID]bool
	report func(TreeProblem)
	snap   index.ID
	seen   map[index.ID]bool // trees fully checked and found good
}

func (c *treeChecker) walk(p string, id index.ID) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	if c.seen[id] && !c.bad[id] {
		return nil
	}
	t, err := LoadTree(c.loader, id)
	if err != nil {
		c.report(TreeProblem{Snapshot: c.snap, Path: p, Blob: id, Err: errors.Unwrap(err)})
		return nil
	}
	good := true
	for i := range t.Nodes {
		n := &t.Nodes[i]
		cp := childPath(p, n.Name)
		switch n.Type {
		case tree.Dir:
			if err := c.walk(cp, n.Subtree); err != nil {
				return err
			}
			if !c.seen[n.Subtree] {
				good = false
			}
		case tree.File:
			for _, e := range n.Content {
				if e.IsHole() {
					continue
				}
				ok, err := c.idx.Has(e.Blob)
				if err != nil {
					return err
				}
				switch {
				case !ok:
					c.report(TreeProblem{Snapshot: c.snap, Path: cp, Blob: e.Blob, Err: errors.New("data blob is not in the index")})
					good = false
				case c.bad[e.Blob]:
					c.report(TreeProblem{Snapshot: c.snap, Path: cp, Blob: e.Blob, Err: errors.New("data blob is corrupt")})
					good = false
				}
			}
		}
	}
	if good {
		c.seen[id] = true
	}
	return nil
}

// ClosureChecker returns the test RebuildIndex applies to each snapshot
// record found in the packs: the record decodes, and every tree it reaches
// loads, verifies and decodes, and every data blob they name is indexed
// (the closure rule). Trees found good are not read again for later
// snapshots.
func ClosureChecker(ctx context.Context) chunkstore.KeepSnapshot {
	seen := make(map[index.ID]bool)
	return func(idx *index.DB, load func(index.ID) ([]byte, error), id index.ID, record []byte) error {
		rec, err := DecodeRecord(record)
		if err != nil {
			return err
		}
		var first error
		c := &treeChecker{ctx: ctx, idx: idx, loader: loaderFunc(load), snap: id, seen: seen,
			report: func(p TreeProblem) {
				if first == nil {
					first = p
				}
			}}
		if err := c.walk("/", rec.Root); err != nil {
			return err
		}
		return first
	}
}

type loaderFunc func(index.ID) ([]byte, error)

func (f loaderFunc) LoadBlob(id index.ID, _ []byte) ([]byte, error) { return f(id) }
