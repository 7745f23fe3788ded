package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/tree"
)

// defaultMaxUnused is prune's --max-unused when none is given (also
// forget --prune's).
const (
	defaultMaxUnusedText = "10%"
	defaultMaxUnused     = 0.10
)

type pruneOptions struct {
	maxUnused string
	dryRun    bool
}

func newPruneCmd(g *globals) *cobra.Command {
	var o pruneOptions
	cmd := &cobra.Command{
		Use:   "prune [--max-unused PCT] [--dry-run]",
		Short: "Remove the blobs no snapshot in the repository uses",
		Long: `Remove every blob that no snapshot in the index reaches (forget removes
snapshots; prune then frees their space). A pack holding only such blobs is
deleted; a pack in which they hold more than --max-unused of the bytes is
repacked: its other blobs are copied, as stored, into new packs, and the old
pack is deleted. Pack files the index does not know (left by an interrupted
write) are deleted too. New packs are durable and indexed before the index
drops the old ones, and files are deleted only after that: a prune killed at
any point leaves a repository that check passes, and the next prune finishes
the job. Snapshots a standby has applied, is applying or delays are records
in the index like any other, so prune keeps their blobs. Takes the
repository's exclusive lock, waiting up to a minute for it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPrune(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.maxUnused, "max-unused", defaultMaxUnusedText, "repack a pack when unused blobs hold more than `PCT` of its bytes (0 to 100)")
	f.BoolVar(&o.dryRun, "dry-run", false, "say what would be deleted and repacked; change nothing")
	return cmd
}

// pruneReport is the --json form of prune's result.
type pruneReport struct {
	DryRun bool `json:"dry_run"`
	chunkstore.PruneStats
	DurationSec float64 `json:"duration_seconds"`
}

func runPrune(ctx context.Context, g *globals, o pruneOptions) error {
	maxUnused, err := parsePercent(o.maxUnused)
	if err != nil {
		return usageErrorf("--max-unused: %v", err)
	}
	start := time.Now()
	repo, err := g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "prune", Wait: time.Minute})
	if err != nil {
		return err
	}
	defer repo.Close()
	rep, err := prune(ctx, g, repo, maxUnused, o.dryRun, start)
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(g.stdout, rep)
	}
	g.printPrune(repo, rep, o.maxUnused)
	return nil
}

// prune prunes repo, open exclusively, showing progress; start is when the
// command started, for the report's duration.
func prune(ctx context.Context, g *globals, repo *chunkstore.Repo, maxUnused float64, dryRun bool, start time.Time) (pruneReport, error) {
	prog := g.newProgress()
	st, err := repo.Prune(ctx, chunkstore.PruneOptions{
		MaxUnused: maxUnused,
		DryRun:    dryRun,
		Links:     blobLinks,
		Progress: func(phase string, done, total int64) {
			if total > 0 {
				prog.show("%s: %d of %d blobs", phase, done, total)
			} else {
				prog.show("%s: %d trees read", phase, done)
			}
		},
	})
	prog.done()
	if err != nil {
		return pruneReport{}, err
	}
	return pruneReport{DryRun: dryRun, PruneStats: st, DurationSec: time.Since(start).Seconds()}, nil
}

// printPrune prints rep, the prune of repo with --max-unused maxUnused, as
// text.
func (g *globals) printPrune(repo *chunkstore.Repo, rep pruneReport, maxUnused string) {
	st := rep.PruneStats
	would := ""
	if rep.DryRun {
		would = "would have "
	}
	g.printf("%s: %d snapshots reach %d blobs (%d trees read)\n", repo.Dir(), st.Snapshots, st.BlobsUsed, st.Trees)
	g.printf("%sdeleted %d packs of unused blobs only and %d pack files the index did not know\n", would, st.PacksDeleted, st.PacksUnindexed)
	if rep.DryRun {
		g.printf("would have repacked %d packs: %d blobs, %s copied\n", st.PacksRepacked, st.BlobsRepacked, humanBytes(st.BytesRepacked))
	} else {
		g.printf("repacked %d packs into %d: %d blobs, %s copied\n", st.PacksRepacked, st.PacksWritten, st.BlobsRepacked, humanBytes(st.BytesRepacked))
	}
	g.printf("%sremoved %d blobs from the index and freed %s of %s; %s unused left in packs under %s\n", would,
		st.BlobsRemoved, humanBytes(st.BytesFreed), humanBytes(st.BytesBefore), humanBytes(st.UnusedKept), maxUnused)
	g.printf("took %s\n", fmtDuration(rep.DurationSec))
}

// parsePercent reads "10", "10%" or "2.5 %" as a share between 0 and 1.
func parsePercent(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "%")), 64)
	if err != nil || v < 0 || v > 100 {
		return 0, fmt.Errorf("%q is not a percentage between 0 and 100", s)
	}
	return v / 100, nil
}

// blobLinks tells prune what a snapshot record or a tree names: the record
// its root tree (its root_dir is a tree of one entry kept inside the
// record, whose only link is that same root, checked by DecodeRecord), a
// tree its subtrees and the data blobs of its files.
func blobLinks(t index.BlobType, raw []byte, fn func(index.ID, index.BlobType)) error {
	switch t {
	case index.SnapshotBlob:
		rec, err := snapshot.DecodeRecord(raw)
		if err != nil {
			return err
		}
		fn(rec.Root, index.TreeBlob)
		return nil
	case index.TreeBlob:
		tr, err := tree.Decode(raw)
		if err != nil {
			return err
		}
		for i := range tr.Nodes {
			n := &tr.Nodes[i]
			switch n.Type {
			case tree.Dir:
				fn(n.Subtree, index.TreeBlob)
			case tree.File:
				for _, e := range n.Content {
					if !e.IsHole() {
						fn(e.Blob, index.DataBlob)
					}
				}
			}
		}
		return nil
	}
	return fmt.Errorf("%s blobs name no blobs", t)
}
