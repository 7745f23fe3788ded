package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
)

func newVerifyCmd(g *globals) *cobra.Command {
	var target, set string
	cmd := &cobra.Command{
		Use:   "verify --target DIR [SNAP]",
		Short: "Report every difference between a live tree and a snapshot",
		Long: `Compare the tree under DIR (standing for "/") with SNAP (default: the latest,
of --set if given), inside the snapshot's scope, one difference a line:
  -  missing from DIR        +  in DIR, inside the scope, not in SNAP
  T  of another type         M  other content (hashed against the snapshot)
  U  other metadata: mode, owner, mtime, xattrs, flags, target, device, link
Every file in the scope is read. Exit status 1 when anything differs: this
is the failover drill for a standby.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref := "latest"
			if len(args) == 1 {
				ref = args[0]
			}
			return runVerify(cmd.Context(), g, target, ref, set)
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "the live tree, standing for / (required)")
	cmd.Flags().StringVar(&set, "set", "", "resolve latest within this set")
	cmd.MarkFlagRequired("target")
	return cmd
}

func runVerify(ctx context.Context, g *globals, target, ref, set string) error {
	repo, err := g.openRepo(chunkstore.Shared, "verify")
	if err != nil {
		return err
	}
	defer repo.Close()
	snap, err := snapshot.Find(repo.Index(), ref, set)
	if err != nil {
		return err
	}
	diffs := []changeJSON{}
	st, err := restore.Verify(ctx, repo, snap.Record, target, func(d restore.Difference) error {
		if g.json {
			diffs = append(diffs, changeJSON{Path: d.Path, Kind: d.KindName(), Attrs: d.Attrs})
			return nil
		}
		line := fmt.Sprintf("%c %s", d.Kind, showPath(d.Path))
		if len(d.Attrs) > 0 {
			line += " [" + strings.Join(d.Attrs, ",") + "]"
		}
		_, err := fmt.Fprintln(g.stdout, line)
		return err
	})
	if err != nil {
		return err
	}
	if g.json {
		if err := printJSON(g.stdout, struct {
			Snapshot    index.ID     `json:"snapshot"`
			Target      string       `json:"target"`
			Differences []changeJSON `json:"differences"`
			restore.VerifyStats
		}{snap.ID, target, diffs, st}); err != nil {
			return err
		}
	} else {
		g.printf("%s against snapshot %s: %d differences in %d entries, %s read\n", target, snap.ID.Short(), st.Differences, st.Entries, humanBytes(st.BytesRead))
	}
	if st.Differences > 0 {
		return &codedError{code: exitError, err: errReported}
	}
	return nil
}
