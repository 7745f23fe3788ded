package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/tree"
)

func newCatCmd(g *globals) *cobra.Command {
	var set string
	cmd := &cobra.Command{
		Use:   "cat SNAP PATH",
		Short: "Write a file of a snapshot to standard output",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCat(cmd.Context(), g, args[0], set, args[1])
		},
	}
	cmd.Flags().StringVar(&set, "set", "", "resolve latest within this set")
	return cmd
}

func runCat(ctx context.Context, g *globals, ref, set, p string) error {
	repo, err := g.openRepo(chunkstore.Shared, "cat")
	if err != nil {
		return err
	}
	defer repo.Close()
	snap, err := snapshot.Find(repo.Index(), ref, set)
	if err != nil {
		return err
	}
	p = cleanSnapPath(p)
	n, _, err := snapshot.Resolve(repo, snap.Root, p)
	if err != nil {
		return err
	}
	if n == nil || n.Type != tree.File {
		return fmt.Errorf("%s is not a regular file in snapshot %s", showPath(p), snap.ID.Short())
	}
	return writeContent(ctx, repo, n, g.stdout)
}

// writeContent writes a file's content to w, holes as zeros.
func writeContent(ctx context.Context, l snapshot.BlobLoader, n *tree.Node, w io.Writer) error {
	var buf []byte
	zeros := make([]byte, 64<<10)
	for _, e := range n.Content {
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.IsHole() {
			for left := e.Length; left > 0; {
				k := min(left, uint64(len(zeros)))
				if _, err := w.Write(zeros[:k]); err != nil {
					return err
				}
				left -= k
			}
			continue
		}
		data, err := l.LoadBlob(e.Blob, buf)
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
		buf = data[:0]
	}
	return nil
}
