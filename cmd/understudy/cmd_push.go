package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
	usync "github.com/understudy/understudy/sync"
)

type pushOptions struct {
	to      []string
	set     string
	ssh     remoteFlags
	noDelta bool
	apply   bool
	target  string
}

// remoteFlags are the flags of a command that reaches a standby.
type remoteFlags struct {
	identity      []string
	knownHosts    []string
	remoteCommand string
	keepalive     time.Duration
	connectTime   time.Duration
}

func (o *remoteFlags) add(f *pflag.FlagSet) {
	f.StringArrayVarP(&o.identity, "identity", "i", nil, "ssh private key `FILE` (repeatable; default: the ssh-agent, then ~/.ssh/id_*)")
	f.StringArrayVar(&o.knownHosts, "known-hosts", nil, "known_hosts `FILE` (repeatable; default ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts)")
	f.StringVar(&o.remoteCommand, "remote-command", "understudy", "the understudy program on the standby, like rsync's --rsync-path")
	f.DurationVar(&o.keepalive, "keepalive", 15*time.Second, "ssh keepalive interval; the connection is dropped after 3 unanswered")
	f.DurationVar(&o.connectTime, "connect-timeout", 30*time.Second, "time allowed for the ssh connection and handshake")
}

func (o *remoteFlags) options() usync.SSHOptions {
	return usync.SSHOptions{
		KnownHosts: o.knownHosts, Identity: o.identity, RemoteCommand: o.remoteCommand,
		Keepalive: o.keepalive, ConnectTimeout: o.connectTime,
	}
}

func newPushCmd(g *globals) *cobra.Command {
	var opts pushOptions
	cmd := &cobra.Command{
		Use:   "push [SNAP...] --to DEST [--to DEST...] [--apply --target DIR]",
		Short: "Replicate snapshots to standbys",
		Long: `Send SNAP (default: the latest, of --set if given) and everything it needs
that the standby lacks to each DEST, and commit it there. DEST is a
repository path on this host or ssh://[user@]host[:port]/path, where the
remote command is "understudy serve --repo PATH" (or the forced command of
the key). Host keys are checked against known_hosts; an unknown or changed
key is refused.

Only trees the standby lacks are walked, and data blobs travel compressed as
stored. An interrupted push resumes: what the standby committed is not sent
again. Several --to are served from one read of the source repository, at
the same time.

With --apply --target DIR, each standby is then asked to run its automatic
apply of the pushed snapshot's set into DIR, a path on the standby: the
newest snapshot of the set that is due (hold, apply delay, promotion and the
mass-change guard count there), which is not necessarily the one pushed.
serve must allow DIR (serve --allow-target DIR); for a local DEST push
allows it itself. A refused apply exits 4, the snapshot stays stored.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPush(cmd.Context(), g, args, opts)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&opts.to, "to", nil, "standby repository: `DEST` is a path or ssh://[user@]host[:port]/path (repeatable)")
	f.StringVar(&opts.set, "set", "", "resolve latest within this set")
	opts.ssh.add(f)
	f.BoolVar(&opts.noDelta, "no-delta", false, "send changed chunks whole, not as deltas against their predecessors (for measuring)")
	f.BoolVar(&opts.apply, "apply", false, "then ask each standby to apply the pushed snapshot's set to --target")
	f.StringVar(&opts.target, "target", "", "with --apply: the live tree `DIR` on the standby, an absolute path")
	cmd.MarkFlagRequired("to")
	return cmd
}

// destResult is what pushing to one standby did.
type destResult struct {
	Dest      string            `json:"dest"`
	Snapshots []usync.PushStats `json:"snapshots"`
	WireOut   int64             `json:"wire_bytes_out"`
	WireIn    int64             `json:"wire_bytes_in"`
	Duration  float64           `json:"duration_seconds"`
	// Apply are the standby's answers to --apply, one per set pushed.
	Apply []applyReport `json:"apply,omitempty"`
	Error string        `json:"error,omitempty"`
	// Refused: the standby refused by its state (a promoted set, a held
	// set, a target serve does not allow, the mass-change guard), exit 4.
	Refused bool `json:"refused,omitempty"`
	// pushed: every snapshot was pushed and committed.
	pushed bool
	// committed: how many of the snapshots, in order, were committed
	// there; finished: when the push ended. recordPush keeps them.
	committed int
	finished  time.Time
}

// applyReport is the answer to --apply for one set.
type applyReport struct {
	Set    string `json:"set"`
	Target string `json:"target"`
	usync.ApplyReply
}

func runPush(ctx context.Context, g *globals, refs []string, opts pushOptions) error {
	dests := make([]usync.Dest, len(opts.to))
	remote := false
	for i, s := range opts.to {
		d, err := usync.ParseDest(s)
		if err != nil {
			return usageErrorf("--to: %v", err)
		}
		dests[i] = d
		remote = remote || d.SSH != nil
	}
	switch {
	case opts.apply && opts.target == "":
		return usageErrorf("--apply needs --target DIR: the live tree on the standby to apply to")
	case !opts.apply && opts.target != "":
		return usageErrorf("--target is for --apply: add --apply, or leave --target out")
	case opts.apply && !filepath.IsAbs(opts.target):
		if remote {
			return usageErrorf("--target %s: give an absolute path on the standby", opts.target)
		}
		abs, err := filepath.Abs(opts.target)
		if err != nil {
			return usageErrorf("--target %s: %v", opts.target, err)
		}
		opts.target = abs
	case opts.apply:
		opts.target = filepath.Clean(opts.target)
	}
	repo, err := g.openRepo(chunkstore.Shared, "push")
	if err != nil {
		return err
	}
	closeRepo := sync.OnceValue(repo.Close)
	defer closeRepo()
	if len(refs) == 0 {
		refs = []string{"latest"}
	}
	var snaps []snapshot.Listed
	for _, ref := range refs {
		l, err := snapshot.Find(repo.Index(), ref, opts.set)
		if err != nil {
			return err
		}
		snaps = append(snaps, l)
	}
	results := make([]destResult, len(dests))
	var eg errgroup.Group
	for i, d := range dests {
		eg.Go(func() error {
			results[i] = pushTo(ctx, g, repo, d, snaps, opts)
			return nil
		})
	}
	eg.Wait()
	closeRepo() // recording the outcome needs the exclusive lock
	recordPushes(g, snaps, results)
	failed, refused := 0, 0
	for _, r := range results {
		if r.Error != "" {
			failed++
		}
		if r.Refused {
			refused++
		}
	}
	code := exitError
	if refused == failed {
		code = exitRefused // a guard, not a failure
	}
	if g.json {
		if err := printJSON(g.stdout, results); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			printPushResult(g, r)
		}
	}
	if failed > 0 {
		if !g.json {
			for _, r := range results {
				switch {
				case r.Refused:
					fmt.Fprintf(g.stderr, "understudy: %s\n", r.Error)
				case r.Error != "":
					fmt.Fprintf(g.stderr, "understudy: push to %s: %s\n", r.Dest, r.Error)
				}
			}
			return &codedError{code: code, err: errReported}
		}
		return &codedError{code: code, err: fmt.Errorf("push failed for %d of %d standbys", failed, len(results))}
	}
	return nil
}

func pushTo(ctx context.Context, g *globals, repo *chunkstore.Repo, d usync.Dest, snaps []snapshot.Listed, opts pushOptions) destResult {
	start := time.Now()
	res := destResult{Dest: d.String()}
	fail := func(err error) destResult {
		res.Error = err.Error()
		var re *usync.RemoteError
		if errors.Is(err, usync.ErrRefused) && errors.As(err, &re) {
			res.Refused = true
			res.Error = d.String() + " " + re.Text // "DEST has been promoted at …"
		}
		res.Duration = time.Since(start).Seconds()
		res.finished = time.Now()
		return res
	}
	stderr := &prefixWriter{w: g.stderr, prefix: "standby " + d.String() + ": "}
	var allow []string
	if opts.apply && d.SSH == nil {
		allow = []string{opts.target} // the user can write there directly anyway
	}
	conn, err := usync.Dial(ctx, d, usync.DialOptions{
		SSH:          opts.ssh.options(),
		Stderr:       stderr,
		AllowTargets: allow,
	})
	if err != nil {
		return fail(err)
	}
	sess, err := usync.NewSession(ctx, conn)
	if err != nil {
		return fail(err)
	}
	if opts.apply {
		if err := sess.CheckApply(); err != nil {
			sess.Abort()
			return fail(fmt.Errorf("--apply: %w", err))
		}
	}
	sess.NoDelta = opts.noDelta
	for _, l := range snaps {
		st, err := sess.Push(ctx, repo, l.ID)
		res.Snapshots = append(res.Snapshots, st)
		if err != nil {
			sess.Abort()
			res.WireOut, res.WireIn = sess.Wire()
			return fail(fmt.Errorf("snapshot %s: %w", l.ID.Short(), err))
		}
		res.committed++
	}
	res.pushed = true
	if opts.apply {
		if err := applyPushed(ctx, sess, d, snaps, opts.target, &res); err != nil {
			sess.Abort()
			res.WireOut, res.WireIn = sess.Wire()
			return fail(err)
		}
	}
	err = sess.Close()
	res.WireOut, res.WireIn = sess.Wire()
	if err != nil {
		return fail(err)
	}
	res.Duration = time.Since(start).Seconds()
	res.finished = time.Now()
	return res
}

// recordWait is how long push waits for the repository's exclusive lock
// to record its outcome: readers started meanwhile (a status, a restore)
// hold it up.
const recordWait = 30 * time.Second

// recordPushes records the outcome of the push of snaps to each standby
// for status (recordPush), keyed by DEST. index.db is read-only under the
// shared lock that push holds while it pushes, so the caller releases it
// first and this takes the exclusive lock, waiting up to recordWait. A
// failure is a warning: the pushes are done and stay done.
func recordPushes(g *globals, snaps []snapshot.Listed, results []destResult) {
	warn := func(err error) {
		fmt.Fprintf(g.stderr, "understudy: warning: status will not show this push: %v\n", err)
	}
	repo, err := g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "push (recording it)", Wait: recordWait})
	if err != nil {
		warn(err)
		return
	}
	defer repo.Close()
	for _, r := range results {
		if err := recordPush(repo.Index(), r.Dest, snaps, r); err != nil {
			warn(fmt.Errorf("push to %s: %w", r.Dest, err))
		}
	}
}

// recordPush records in the primary state of each set of snaps what the
// push of snaps to one standby did (res), under key: the configuration's
// name of the standby, or its DEST. For a set, the newest of its
// snapshots committed there is recorded as pushed; if one of them was not
// committed, the push's error is recorded too. idx must be writable.
func recordPush(idx *index.DB, key string, snaps []snapshot.Listed, res destResult) error {
	type outcome struct {
		pushed *snapshot.Listed
		failed bool
	}
	bySet := map[string]*outcome{}
	var sets []string
	for i := range snaps {
		l := &snaps[i]
		o := bySet[l.Set]
		if o == nil {
			o = &outcome{}
			bySet[l.Set] = o
			sets = append(sets, l.Set)
		}
		switch {
		case i >= res.committed:
			o.failed = true
		case o.pushed == nil || !l.Time.Before(o.pushed.Time):
			o.pushed = l
		}
	}
	at := res.finished
	if at.IsZero() { // a result made without pushTo
		at = time.Now()
	}
	at = at.UTC()
	var errs []error
	for _, set := range sets {
		o := bySet[set]
		err := idx.UpdatePrimary(set, func(st *index.PrimaryState) error {
			p := st.Push(key, res.Dest)
			p.Dest = res.Dest
			if o.pushed != nil {
				p.Pushed(o.pushed.ID, o.pushed.Time, at)
			}
			if o.failed {
				p.Failed(cmp.Or(res.Error, "push failed"), at)
			}
			return nil
		})
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// applyPushed asks the standby of sess to apply, for each set of snaps,
// its last snapshot there (the automatic apply takes the newest due
// snapshot of the set). A refusal by a guard is noted in res as refused;
// an error ends the session.
func applyPushed(ctx context.Context, sess *usync.Session, d usync.Dest, snaps []snapshot.Listed, target string, res *destResult) error {
	var sets []string
	last := map[string]index.ID{}
	for _, l := range snaps {
		if _, ok := last[l.Set]; !ok {
			sets = append(sets, l.Set)
		}
		last[l.Set] = l.ID
	}
	var problems []string
	refusedOnly := true
	for _, set := range sets {
		id := last[set]
		reply, err := sess.Apply(ctx, id, target)
		if err != nil {
			var re *usync.RemoteError
			if errors.Is(err, usync.ErrRefused) && errors.As(err, &re) {
				// The allow list: serve ended the session.
				res.Refused = refusedOnly
				err = fmt.Errorf("%s: snapshot %s stored; not applied: %s", d, id.Short(), re.Text)
			} else {
				res.Refused = false
				err = fmt.Errorf("snapshot %s stored; apply of set %s to %s: %w", id.Short(), set, target, err)
			}
			if len(problems) > 0 {
				err = fmt.Errorf("%s\n%w", strings.Join(problems, "\n"), err)
			}
			return err
		}
		res.Apply = append(res.Apply, applyReport{Set: set, Target: target, ApplyReply: reply})
		switch reply.Status {
		case usync.ApplyRefused:
			problems = append(problems, fmt.Sprintf("%s: snapshot %s stored; not applied: %s", d, id.Short(), strings.Join(reply.Reasons, "; ")))
		case usync.ApplyIncomplete:
			refusedOnly = false
			problems = append(problems, fmt.Sprintf("apply of snapshot %s to %s incomplete: %s", reply.Snapshot.Short(), target, reply.Error))
		}
	}
	if len(problems) > 0 {
		res.Error = strings.Join(problems, "\n")
		res.Refused = refusedOnly
	}
	return nil
}

func printPushResult(g *globals, r destResult) {
	for i, st := range r.Snapshots {
		switch {
		case st.AlreadyThere:
			g.printf("%s: snapshot %s already there\n", r.Dest, st.Snapshot.Short())
		case r.pushed || r.Error == "" || st.StandbyBlobsAdded > 0 || st.DataSent > 0:
			base := "no common snapshot"
			if st.Base != nil {
				base = "against " + st.Base.Short()
			}
			if !r.pushed && i >= r.committed {
				// The session failed on this one: what the standby
				// received is kept there, and the next push resumes.
				g.printf("%s: snapshot %s not committed, stopped after %s (%s); the standby keeps what it received\n", r.Dest, st.Snapshot.Short(), fmtDuration(st.DurationSec), base)
			} else {
				g.printf("%s: snapshot %s pushed in %s (%s)\n", r.Dest, st.Snapshot.Short(), fmtDuration(st.DurationSec), base)
			}
			g.printf("  walked %d trees; sent %d trees, %d data blobs (%d as deltas), %s stored (%s raw); asked about %d IDs in %d round trips\n",
				st.TreesWalked, st.TreesSent, st.DataSent, st.DeltasSent, humanBytes(st.BytesSent), humanBytes(st.RawSent), st.IDsAsked, st.RoundTrips)
		}
	}
	if r.pushed {
		g.printf("  wire: %s out, %s in, %s in all\n", humanBytes(r.WireOut), humanBytes(r.WireIn), fmtDuration(r.Duration))
	}
	for _, a := range r.Apply {
		switch a.Status {
		case usync.ApplyApplied, usync.ApplyIncomplete:
			how := ""
			if a.Status == usync.ApplyIncomplete {
				how = " incompletely"
			}
			var st restore.ApplyStats
			if len(a.Stats) > 0 {
				json.Unmarshal(a.Stats, &st) // checked to be an object; unknown fields of a newer standby are skipped
			}
			g.printf("%s: applied snapshot %s to %s%s (%d created, %d replaced, %d deleted, %d metadata, %d linked; %s written, %s reused; %d subtrees unchanged; %s)\n",
				r.Dest, a.Snapshot.Short(), a.Target, how, st.Created, st.Replaced, st.Deleted, st.Metadata, st.Linked,
				humanBytes(st.BytesWritten), humanBytes(st.BytesReused), st.SubtreesSkipped, fmtDuration(a.Duration))
		case usync.ApplyWaiting:
			g.printf("%s: stored; apply waiting: snapshot %s is due at %s\n", r.Dest, a.Snapshot.Short(), a.DueAt.Local().Format(time.RFC3339))
		case usync.ApplyUpToDate:
			g.printf("%s: up to date\n", r.Dest)
		}
	}
}

// prefixWriter prefixes each line written through it, so that messages of
// several standbys stay apart.
type prefixWriter struct {
	mu      sync.Mutex
	w       io.Writer
	prefix  string
	partial []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(b)
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimPrefix(string(p.partial[:i+1]), "understudy: ")
		if _, err := io.WriteString(p.w, p.prefix+line); err != nil {
			return 0, err
		}
		p.partial = p.partial[i+1:]
	}
	return n, nil
}
