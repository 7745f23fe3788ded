package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
)

func newCheckCmd(g *globals) *cobra.Command {
	var readData bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Verify the index, the packs and every snapshot's trees",
		Long: `Verify that every indexed blob is in its pack, that pack trailers agree with
the index, that every tree decodes and every blob a tree names is indexed.
With --read-data also re-read every pack and verify every blob's SHA-256.
Each problem names the pack, the blob and the snapshots that reference it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCheck(cmd.Context(), g, readData)
		},
	}
	cmd.Flags().BoolVar(&readData, "read-data", false, "read and verify every blob")
	return cmd
}

// checkReport is the --json form of check's result.
type checkReport struct {
	OK       bool           `json:"ok"`
	Problems []checkProblem `json:"problems"`
	Notes    []checkProblem `json:"notes"` // harmless findings
}

type checkProblem struct {
	Pack      string   `json:"pack,omitempty"`
	Blob      string   `json:"blob,omitempty"`
	Path      string   `json:"path,omitempty"`
	Snapshots []string `json:"snapshots,omitempty"`
	Error     string   `json:"error"`
}

func runCheck(ctx context.Context, g *globals, readData bool) error {
	repo, err := g.openRepo(chunkstore.Shared, "check")
	if err != nil {
		return err
	}
	defer repo.Close()
	rep := checkReport{Problems: []checkProblem{}, Notes: []checkProblem{}}
	bad := make(map[index.ID]bool)
	badPack := make(map[index.ID]index.ID) // bad blob -> its pack
	prog := g.newProgress()
	err = repo.Check(ctx, chunkstore.CheckOptions{ReadData: readData, Progress: func(done, total int) {
		prog.show("checked %d of %d packs", done, total)
	}}, func(p chunkstore.Problem) {
		cp := checkProblem{Error: p.Err.Error()}
		if !p.Pack.IsZero() {
			cp.Pack = p.Pack.String()
		}
		if !p.Blob.IsZero() {
			cp.Blob = p.Blob.String()
			bad[p.Blob] = true
			badPack[p.Blob] = p.Pack
			return // reported below with the snapshots that reference it
		}
		if p.Harmless {
			rep.Notes = append(rep.Notes, cp)
		} else {
			rep.Problems = append(rep.Problems, cp)
		}
	})
	prog.done()
	if err != nil {
		return err
	}
	// Walk the trees: finds undecodable trees and missing blobs, and names
	// the snapshots that reference each bad blob.
	refs := make(map[index.ID][]string)
	paths := make(map[index.ID]string)
	err = snapshot.CheckTrees(ctx, repo.Index(), repo, bad, func(p snapshot.TreeProblem) {
		if !p.Blob.IsZero() && bad[p.Blob] {
			if !slices.Contains(refs[p.Blob], p.Snapshot.Short()) {
				refs[p.Blob] = append(refs[p.Blob], p.Snapshot.Short())
			}
			if _, ok := paths[p.Blob]; !ok {
				paths[p.Blob] = showPath(p.Path)
			}
			return
		}
		cp := checkProblem{Path: showPath(p.Path), Error: p.Err.Error()}
		if !p.Blob.IsZero() {
			cp.Blob = p.Blob.String()
		}
		if !p.Snapshot.IsZero() {
			cp.Snapshots = []string{p.Snapshot.Short()}
		}
		rep.Problems = append(rep.Problems, cp)
	})
	if err != nil {
		return err
	}
	for id := range bad {
		cp := checkProblem{Pack: badPack[id].String(), Blob: id.String(), Path: paths[id], Snapshots: refs[id],
			Error: "blob content does not verify"}
		if badPack[id].IsZero() {
			cp.Pack = ""
		}
		rep.Problems = append(rep.Problems, cp)
	}
	rep.OK = len(rep.Problems) == 0
	if g.json {
		if err := printJSON(g.stdout, rep); err != nil {
			return err
		}
	} else {
		for _, n := range rep.Notes {
			fmt.Fprintf(g.stderr, "note: %s\n", describeProblem(n))
		}
		for _, p := range rep.Problems {
			fmt.Fprintf(g.stdout, "problem: %s\n", describeProblem(p))
		}
	}
	if !rep.OK {
		return &codedError{code: exitError, err: fmt.Errorf("check found %d problems in %s", len(rep.Problems), repo.Dir())}
	}
	what := "index, packs and trees"
	if readData {
		what += " and all data"
	}
	g.printf("no problems found (%s verified)\n", what)
	return nil
}

func describeProblem(p checkProblem) string {
	var parts []string
	if p.Pack != "" {
		parts = append(parts, "pack "+p.Pack)
	}
	if p.Blob != "" {
		parts = append(parts, "blob "+p.Blob)
	}
	if p.Path != "" {
		parts = append(parts, "path "+p.Path)
	}
	if len(p.Snapshots) > 0 {
		parts = append(parts, "referenced by snapshots "+strings.Join(p.Snapshots, ", "))
	} else if p.Blob != "" {
		parts = append(parts, "referenced by no snapshot")
	}
	return strings.Join(parts, ", ") + ": " + p.Error
}
