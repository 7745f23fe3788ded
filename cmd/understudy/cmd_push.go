package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	usync "github.com/understudy/understudy/sync"
)

type pushOptions struct {
	to            []string
	set           string
	identity      []string
	knownHosts    []string
	remoteCommand string
	keepalive     time.Duration
	connectTime   time.Duration
	noDelta       bool
}

func newPushCmd(g *globals) *cobra.Command {
	var opts pushOptions
	cmd := &cobra.Command{
		Use:   "push [SNAP...] --to DEST [--to DEST...]",
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
the same time.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPush(cmd.Context(), g, args, opts)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&opts.to, "to", nil, "standby repository: `DEST` is a path or ssh://[user@]host[:port]/path (repeatable)")
	f.StringVar(&opts.set, "set", "", "resolve latest within this set")
	f.StringArrayVarP(&opts.identity, "identity", "i", nil, "ssh private key `FILE` (repeatable; default: the ssh-agent, then ~/.ssh/id_*)")
	f.StringArrayVar(&opts.knownHosts, "known-hosts", nil, "known_hosts `FILE` (repeatable; default ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts)")
	f.StringVar(&opts.remoteCommand, "remote-command", "understudy", "the understudy program on the standby, like rsync's --rsync-path")
	f.DurationVar(&opts.keepalive, "keepalive", 15*time.Second, "ssh keepalive interval; the connection is dropped after 3 unanswered")
	f.DurationVar(&opts.connectTime, "connect-timeout", 30*time.Second, "time allowed for the ssh connection and handshake")
	f.BoolVar(&opts.noDelta, "no-delta", false, "send changed chunks whole, not as deltas against their predecessors (for measuring)")
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
	Error     string            `json:"error,omitempty"`
	// Refused: the standby refused by its state (a promoted set), exit 4.
	Refused bool `json:"refused,omitempty"`
}

func runPush(ctx context.Context, g *globals, refs []string, opts pushOptions) error {
	dests := make([]usync.Dest, len(opts.to))
	for i, s := range opts.to {
		d, err := usync.ParseDest(s)
		if err != nil {
			return usageErrorf("--to: %v", err)
		}
		dests[i] = d
	}
	repo, err := g.openRepo(chunkstore.Shared, "push")
	if err != nil {
		return err
	}
	defer repo.Close()
	if len(refs) == 0 {
		refs = []string{"latest"}
	}
	var snaps []index.ID
	for _, ref := range refs {
		l, err := snapshot.Find(repo.Index(), ref, opts.set)
		if err != nil {
			return err
		}
		snaps = append(snaps, l.ID)
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

func pushTo(ctx context.Context, g *globals, repo *chunkstore.Repo, d usync.Dest, snaps []index.ID, opts pushOptions) destResult {
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
		return res
	}
	stderr := &prefixWriter{w: g.stderr, prefix: "standby " + d.String() + ": "}
	conn, err := usync.Dial(ctx, d, usync.DialOptions{
		SSH: usync.SSHOptions{
			KnownHosts: opts.knownHosts, Identity: opts.identity, RemoteCommand: opts.remoteCommand,
			Keepalive: opts.keepalive, ConnectTimeout: opts.connectTime,
		},
		Stderr: stderr,
	})
	if err != nil {
		return fail(err)
	}
	sess, err := usync.NewSession(ctx, conn)
	if err != nil {
		return fail(err)
	}
	sess.NoDelta = opts.noDelta
	for _, id := range snaps {
		st, err := sess.Push(ctx, repo, id)
		res.Snapshots = append(res.Snapshots, st)
		if err != nil {
			sess.Abort()
			res.WireOut, res.WireIn = sess.Wire()
			return fail(fmt.Errorf("snapshot %s: %w", id.Short(), err))
		}
	}
	err = sess.Close()
	res.WireOut, res.WireIn = sess.Wire()
	if err != nil {
		return fail(err)
	}
	res.Duration = time.Since(start).Seconds()
	return res
}

func printPushResult(g *globals, r destResult) {
	for _, st := range r.Snapshots {
		switch {
		case st.AlreadyThere:
			g.printf("%s: snapshot %s already there\n", r.Dest, st.Snapshot.Short())
		case r.Error == "" || st.StandbyBlobsAdded > 0 || st.DataSent > 0:
			base := "no common snapshot"
			if st.Base != nil {
				base = "against " + st.Base.Short()
			}
			g.printf("%s: snapshot %s pushed in %s (%s)\n", r.Dest, st.Snapshot.Short(), fmtDuration(st.DurationSec), base)
			g.printf("  walked %d trees; sent %d trees, %d data blobs (%d as deltas), %s stored (%s raw); asked about %d IDs in %d round trips\n",
				st.TreesWalked, st.TreesSent, st.DataSent, st.DeltasSent, humanBytes(st.BytesSent), humanBytes(st.RawSent), st.IDsAsked, st.RoundTrips)
		}
	}
	if r.Error == "" {
		g.printf("  wire: %s out, %s in, %s in all\n", humanBytes(r.WireOut), humanBytes(r.WireIn), fmtDuration(r.Duration))
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
