package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/snapshot"
)

func newDiffCmd(g *globals) *cobra.Command {
	var set string
	cmd := &cobra.Command{
		Use:   "diff SNAP1 SNAP2",
		Short: "Show what changed between two snapshots",
		Long: `Show what changed from SNAP1 to SNAP2, one path a line:
  +  added        -  removed        T  type changed
  M  content changed (metadata changes in brackets)
  U  metadata only, with the attributes that changed: mode, owner, mtime,
     xattrs, flags, target, device, link`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDiff(cmd.Context(), g, args[0], args[1], set)
		},
	}
	cmd.Flags().StringVar(&set, "set", "", "resolve latest within this set")
	return cmd
}

// changeJSON is the stable --json form of a difference.
type changeJSON struct {
	Path  string   `json:"path"`
	Kind  string   `json:"change"` // added, removed, type, content, metadata
	Attrs []string `json:"attributes,omitempty"`
}

var changeNames = map[byte]string{'+': "added", '-': "removed", 'T': "type", 'M': "content", 'U': "metadata"}

func runDiff(ctx context.Context, g *globals, ref1, ref2, set string) error {
	repo, err := g.openRepo(chunkstore.Shared, "diff")
	if err != nil {
		return err
	}
	defer repo.Close()
	a, err := snapshot.Find(repo.Index(), ref1, set)
	if err != nil {
		return err
	}
	b, err := snapshot.Find(repo.Index(), ref2, set)
	if err != nil {
		return err
	}
	out := []changeJSON{}
	counts := map[byte]int{}
	err = snapshot.DiffRecords(ctx, repo, a.Record, b.Record, func(c snapshot.Change) error {
		counts[c.Kind]++
		if g.json {
			out = append(out, changeJSON{Path: c.Path, Kind: changeNames[c.Kind], Attrs: c.Attrs})
			return nil
		}
		line := fmt.Sprintf("%c  %s", c.Kind, showPath(c.Path))
		if len(c.Attrs) > 0 {
			line += "  [" + strings.Join(c.Attrs, ",") + "]"
		}
		_, err := fmt.Fprintln(g.stdout, line)
		return err
	})
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(g.stdout, out)
	}
	if g.verbose {
		fmt.Fprintf(g.stderr, "%d added, %d removed, %d changed content, %d changed metadata, %d changed type\n",
			counts['+'], counts['-'], counts['M'], counts['U'], counts['T'])
	}
	return nil
}
