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
		Long: `Compare the tree under DIR (standing for "/") with SNAP, inside the snapshot's
scope, one difference a line. Without SNAP: the snapshot applied to DIR (of
--set if given), or else the latest (of --set if given).
  -  missing from DIR        +  in DIR, inside the scope, not in SNAP
  T  of another type         M  other content (hashed against the snapshot)
  U  other metadata: mode, owner, mtime, xattrs, flags, target, device, link
Every file in the scope is read. Exit status 1 when anything differs: this
is the failover drill for a standby.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref := ""
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
	if ref == "" {
		if ref, err = appliedTo(repo.Index(), target, set); err != nil {
			return err
		}
	}
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

// appliedTo returns the snapshot the standby state says is applied to
// target (in set, if not empty), or "latest" when none or several are.
func appliedTo(idx *index.DB, target, set string) (string, error) {
	key, err := restore.TargetKey(target)
	if err != nil {
		return "", err
	}
	states, err := idx.StandbyStates()
	if err != nil {
		return "", err
	}
	var found []index.ID
	for name, st := range states {
		if ts := st.Targets[key]; ts != nil && !ts.Applied.IsZero() && (set == "" || name == set) {
			found = append(found, ts.Applied)
		}
	}
	if len(found) != 1 {
		return "latest", nil
	}
	return found[0].String(), nil
}
