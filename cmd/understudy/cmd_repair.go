package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	usync "github.com/understudy/understudy/sync"
)

type repairOptions struct {
	from   string
	dryRun bool
	blobs  []string
	ssh    remoteFlags
}

func newRepairCmd(g *globals) *cobra.Command {
	var o repairOptions
	cmd := &cobra.Command{
		Use:   "repair --from DEST [--dry-run] | repair index",
		Short: "Repair a damaged repository: bad blobs from the peer, or the index from the packs",
		Long: `With --from DEST, replace the bad blobs of this repository by good copies
from its peer: the standby's repository when run on the primary, the
primary's when run on the standby. DEST is a repository path on this host or
ssh://[user@]host[:port]/path, reached as push reaches a standby (the remote
command is "understudy serve --repo PATH", or the forced command of the key).

A read-data check finds the blobs that do not verify and the packs holding
them. Each good copy arrives in its stored form over the replication
protocol and is decompressed and hashed against its ID before it is used;
a copy that does not verify is refused. Each damaged pack is then rewritten:
a new pack holds its good blobs and the copies, durable and indexed before
one transaction drops the old pack, whose file is removed last, so a repair
killed at any point leaves a repository that check passes as before (and
the next repair finishes the job). A bad blob the peer lacks stays bad:
repair names it and the snapshots that need it, which forget can drop, and
exits 1. --dry-run lists what it would fetch and whether the peer holds it.
Takes the repository's exclusive lock (shared with --dry-run), waiting up to
a minute; serve on the peer takes the peer's.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.from == "" {
				return usageErrorf("give --from DEST to repair bad blobs from the peer, or run `understudy repair index`")
			}
			return runRepairFrom(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.from, "from", "", "the peer's repository: `DEST` is a path or ssh://[user@]host[:port]/path")
	f.BoolVar(&o.dryRun, "dry-run", false, "list the bad blobs and whether the peer holds them; change nothing")
	f.StringSliceVar(&o.blobs, "blobs", nil, "take these blob `IDs` as bad instead of running a read-data check (tests)")
	f.MarkHidden("blobs")
	o.ssh.add(f)
	cmd.AddCommand(&cobra.Command{
		Use:   "index",
		Short: "Rebuild index.db from the pack files alone",
		Long: `Rebuild index.db from the pack files alone: every pack is read whole and must
hash to its name and carry a valid trailer; each snapshot record found in the
packs is indexed if every tree and data blob it reaches is present. Packs and
snapshots that fail are named and left out. The old index is kept as
index.db.old. Takes the repository's exclusive lock.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRepairIndex(cmd.Context(), g)
		},
	})
	return cmd
}

func runRepairIndex(ctx context.Context, g *globals) error {
	// The index is not opened: it may be what is damaged.
	repo, err := g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "repair index", NoIndex: true})
	if err != nil {
		return err
	}
	defer repo.Close()
	st, err := repo.RebuildIndex(ctx, snapshot.ClosureChecker(ctx), func(p chunkstore.Problem) {
		fmt.Fprintf(g.stderr, "understudy: %v\n", p)
	})
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(g.stdout, st)
	}
	g.printf("rebuilt the index of %s: %d packs, %d blobs, %d snapshots; %d left out\n",
		repo.Dir(), st.Packs, st.Blobs, st.Snapshots, st.Skipped)
	if st.Skipped > 0 {
		return &codedError{code: exitError, err: fmt.Errorf("%d packs or snapshots were left out, each named above", st.Skipped)}
	}
	return nil
}

// repairReport is what repair --from did, and its --json form.
type repairReport struct {
	From   string `json:"from"`
	DryRun bool   `json:"dry_run"`
	chunkstore.RepairStats
	Repaired   []repairedBlob `json:"repaired"`
	Lost       []lostBlob     `json:"lost"`                  // still bad
	WouldFetch []wouldFetch   `json:"would_fetch,omitempty"` // --dry-run
	Other      []checkProblem `json:"other"`                 // not repairable from a peer
	WireOut    int64          `json:"wire_bytes_out"`
	WireIn     int64          `json:"wire_bytes_in"`
	Duration   float64        `json:"duration_seconds"`
}

type repairedBlob struct {
	Blob string `json:"blob"`
	Type string `json:"type"`
	Pack string `json:"pack"` // the damaged pack it was in
}

type lostBlob struct {
	Blob      string   `json:"blob"`
	Type      string   `json:"type"`
	Pack      string   `json:"pack"` // where it is now
	Path      string   `json:"path,omitempty"`
	Snapshots []string `json:"snapshots"` // that need it
	Error     string   `json:"error"`
}

type wouldFetch struct {
	Blob      string `json:"blob"`
	Type      string `json:"type"`
	Pack      string `json:"pack"`
	PeerHolds bool   `json:"peer_holds"`
}

func runRepairFrom(ctx context.Context, g *globals, o repairOptions) error {
	start := time.Now()
	dest, err := usync.ParseDest(o.from)
	if err != nil {
		return usageErrorf("--from: %v", err)
	}
	var only []index.ID
	for _, s := range o.blobs {
		id, err := index.ParseID(s)
		if err != nil {
			return usageErrorf("--blobs: %v", err)
		}
		only = append(only, id)
	}
	mode := chunkstore.Exclusive
	if o.dryRun {
		mode = chunkstore.Shared
	}
	repo, err := g.openRepoWith(chunkstore.OpenOptions{Mode: mode, What: "repair", Wait: time.Minute})
	if err != nil {
		return err
	}
	defer repo.Close()
	if self, err := filepath.Abs(repo.Dir()); err == nil && dest.SSH == nil && filepath.Clean(dest.Path) == self {
		return usageErrorf("--from %s is this repository: name its peer", o.from)
	}
	rep := repairReport{From: dest.String(), DryRun: o.dryRun, Repaired: []repairedBlob{}, Lost: []lostBlob{}, Other: []checkProblem{}}
	prog := g.newProgress()
	d, err := repo.FindDamage(ctx, chunkstore.DamageOptions{Blobs: only, Progress: func(done, total int) {
		prog.show("checked %d of %d packs", done, total)
	}})
	prog.done()
	if err != nil {
		return err
	}
	for _, p := range d.Other {
		cp := checkProblem{Error: p.Err.Error()}
		if !p.Pack.IsZero() {
			cp.Pack = p.Pack.String()
		}
		if !p.Blob.IsZero() {
			cp.Blob = p.Blob.String()
		}
		rep.Other = append(rep.Other, cp)
	}
	rep.PacksDamaged, rep.BlobsBad = len(d.Packs), d.BadBlobs()
	if rep.BlobsBad > 0 {
		if err := repairSession(ctx, g, repo, dest, d, o, prog, &rep); err != nil {
			return err
		}
	}
	if len(rep.Lost) > 0 {
		if err := namesSnapshots(ctx, repo, rep.Lost); err != nil {
			return err
		}
	}
	rep.Duration = time.Since(start).Seconds()
	if g.json {
		if err := printJSON(g.stdout, rep); err != nil {
			return err
		}
	} else {
		printRepair(g, rep)
	}
	switch {
	case len(rep.Lost) > 0:
		return &codedError{code: exitError, err: fmt.Errorf("%d bad blobs could not be repaired from %s; forget the snapshots that need them (named above), then prune", len(rep.Lost), dest)}
	case len(rep.Other) > 0:
		return &codedError{code: exitError, err: fmt.Errorf("%d problems a peer's blobs cannot repair (named above); `understudy repair index` rebuilds the index from the packs", len(rep.Other))}
	}
	return nil
}

// repairSession fetches the bad blobs of d from dest and has the repository
// rewrite its damaged packs (with --dry-run: asks which the peer holds).
func repairSession(ctx context.Context, g *globals, repo *chunkstore.Repo, dest usync.Dest, d *chunkstore.Damage, o repairOptions, prog *progress, rep *repairReport) error {
	conn, err := usync.Dial(ctx, dest, usync.DialOptions{SSH: o.ssh.options(), Stderr: &prefixWriter{w: g.stderr, prefix: "peer " + dest.String() + ": "}})
	if err != nil {
		return fmt.Errorf("%s: %w", dest, err)
	}
	sess, err := usync.NewSession(ctx, conn)
	if err != nil {
		return fmt.Errorf("%s: %w", dest, err)
	}
	if id := sess.Welcome().RepoID; hex.EncodeToString(id[:]) == repo.Config().ID {
		sess.Abort()
		return usageErrorf("--from %s is this repository: name its peer", dest)
	}
	if err := sess.CheckFetch(); err != nil {
		sess.Abort()
		return fmt.Errorf("%s: %w", dest, err)
	}
	defer func() { rep.WireOut, rep.WireIn = sess.Wire() }()
	if o.dryRun {
		var ids []index.ID
		for _, p := range d.Packs {
			for _, b := range p.Bad {
				ids = append(ids, b.ID)
			}
		}
		holds, err := sess.Holds(ids)
		if err != nil {
			sess.Abort()
			return fmt.Errorf("%s: %w", dest, err)
		}
		i := 0
		for _, p := range d.Packs {
			for _, b := range p.Bad {
				rep.WouldFetch = append(rep.WouldFetch, wouldFetch{Blob: b.ID.String(), Type: b.Type.String(), Pack: p.ID.String(), PeerHolds: holds[i]})
				i++
			}
		}
		return sess.Close()
	}
	src := func(ctx context.Context, want []index.Blob, got func(index.ID, chunkstore.StoredBlob, error) error) error {
		ws := make([]usync.Want, len(want))
		for i, b := range want {
			ws[i] = usync.Want{ID: b.ID, Type: b.Type}
		}
		return sess.Fetch(ctx, repo, ws, func(f usync.Fetched) error { return got(f.ID, f.Blob, f.Missing) })
	}
	st, err := repo.Repair(ctx, d, src, chunkstore.RepairOptions{Progress: func(phase string, done, total int64) {
		prog.show("%s: %d of %d blobs", phase, done, total)
	}})
	prog.done()
	if err != nil {
		sess.Abort()
		return fmt.Errorf("repair from %s: %w", dest, err)
	}
	if err := sess.Close(); err != nil {
		fmt.Fprintf(g.stderr, "understudy: warning: the session with %s ended badly after the repair: %v\n", dest, err)
	}
	rep.RepairStats = st
	for _, b := range st.Repaired {
		rep.Repaired = append(rep.Repaired, repairedBlob{Blob: b.ID.String(), Type: b.Type.String(), Pack: b.Pack.String()})
	}
	for _, b := range st.Lost {
		msg := b.Err.Error()
		if errors.Is(b.Err, usync.ErrPeerLacks) {
			msg = dest.String() + " does not hold it either"
		}
		rep.Lost = append(rep.Lost, lostBlob{Blob: b.ID.String(), Type: b.Type.String(), Pack: b.Pack.String(), Snapshots: []string{}, Error: msg})
	}
	return nil
}

// namesSnapshots fills in the snapshots that need each lost blob, and where.
func namesSnapshots(ctx context.Context, repo *chunkstore.Repo, lost []lostBlob) error {
	bad := make(map[index.ID]bool)
	at := make(map[index.ID]int)
	for i, l := range lost {
		id, err := index.ParseID(l.Blob)
		if err != nil {
			return err
		}
		bad[id] = true
		at[id] = i
	}
	return snapshot.CheckTrees(ctx, repo.Index(), repo, bad, func(p snapshot.TreeProblem) {
		i, ok := at[p.Blob]
		if !ok || !bad[p.Blob] {
			return
		}
		l := &lost[i]
		if s := p.Snapshot.Short(); !p.Snapshot.IsZero() && !slices.Contains(l.Snapshots, s) {
			l.Snapshots = append(l.Snapshots, s)
		}
		if l.Path == "" {
			l.Path = showPath(p.Path)
		}
	})
}

func printRepair(g *globals, rep repairReport) {
	switch {
	case rep.DryRun && rep.BlobsBad > 0:
		g.printf("would fetch %d bad blobs of %d packs from %s:\n", rep.BlobsBad, rep.PacksDamaged, rep.From)
		for _, w := range rep.WouldFetch {
			holds := "the peer holds it"
			if !w.PeerHolds {
				holds = "the peer does NOT hold it"
			}
			g.printf("  blob %s (%s) in pack %s: %s\n", w.Blob, w.Type, w.Pack, holds)
		}
	case rep.BlobsBad > 0:
		for _, b := range rep.Repaired {
			g.printf("repaired blob %s (%s), was in pack %s\n", b.Blob, b.Type, b.Pack)
		}
		g.printf("repaired %d of %d bad blobs from %s: %d damaged packs rewritten as %d, %d good blobs moved with them, %s fetched\n",
			rep.BlobsRepaired, rep.BlobsBad, rep.From, rep.PacksRewritten, rep.PacksWritten, rep.BlobsCopied, humanBytes(rep.BytesFetched))
	case len(rep.Other) == 0:
		g.printf("no bad blobs: nothing to repair\n")
	}
	for _, l := range rep.Lost {
		where := "referenced by no snapshot"
		if len(l.Snapshots) > 0 {
			where = "needed by snapshots " + strings.Join(l.Snapshots, ", ")
		}
		if l.Path != "" {
			where = "path " + l.Path + ", " + where
		}
		fmt.Fprintf(g.stdout, "still bad: blob %s (%s) in pack %s, %s: %s\n", l.Blob, l.Type, l.Pack, where, l.Error)
	}
	for _, p := range rep.Other {
		fmt.Fprintf(g.stdout, "problem: %s\n", describeProblem(p))
	}
}
