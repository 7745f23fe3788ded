package restore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
)

// Default limits of the mass-change guard, in percent of the files (and of
// the bytes) in the scope.
const (
	DefaultMaxDeleted = 20.0
	DefaultMaxChanged = 50.0
)

// maxRefs bounds the snapshots an apply compares with; after that many
// interrupted applies in a row, the next one compares every entry.
const maxRefs = 16

// Standby applies snapshots to live trees and keeps the standby state in
// the index: which snapshot each target holds, which one it is being
// brought to, and the hold, delay, guard and protect settings of each set.
type Standby struct {
	DB     *index.DB
	Loader snapshot.BlobLoader
	// StagingDir is where user sanity checks get their staging views; ""
	// for the system's temporary directory.
	StagingDir string
	Workers    int
	Warn       func(path string, err error)
	Itemize    func(op byte, path string)
	// Now is the clock; nil for time.Now.
	Now func() time.Time
}

// ApplyRequest is one apply of a snapshot to a target.
type ApplyRequest struct {
	Set      string
	Target   string
	Snapshot snapshot.Listed
	// Guard puts the apply before the mass-change guard (unless Force):
	// apply does, rollback does not.
	Guard bool
	Force bool
	// Full compares every entry in scope with the live tree instead of
	// skipping the subtrees the snapshot shares with the one applied.
	Full   bool
	DryRun bool
	// Protect adds patterns to the set's protected paths.
	Protect []string
}

// ApplyResult says what an apply did.
type ApplyResult struct {
	Snapshot index.ID    `json:"snapshot"`
	Target   string      `json:"target"`
	Previous index.ID    `json:"previous,omitzero"` // applied before, zero if none
	Stats    *ApplyStats `json:"stats"`
	Duration float64     `json:"duration_seconds"`
}

// Refused is the error of an apply a guard refused: hold, promotion, the
// mass-change guard. Nothing was written.
type Refused struct {
	Set      string
	Target   string
	Snapshot index.ID
	Reasons  []string
}

func (e *Refused) Error() string {
	return fmt.Sprintf("apply of snapshot %s of set %s to %s refused: %s", e.Snapshot.Short(), e.Set, e.Target, strings.Join(e.Reasons, "; "))
}

func (s *Standby) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// TargetKey is the form of a target path the state is keyed by: absolute
// and clean.
func TargetKey(target string) (string, error) {
	abs, err := filepath.Abs(target)
	if err != nil {
		return "", fmt.Errorf("target %s: %w", target, err)
	}
	return abs, nil
}

// Apply applies req.Snapshot to req.Target. The state records the
// snapshot as being applied before the first write and as applied once
// everything is written and synced to disk; an apply that fails or is
// killed leaves the target mid-apply, and the next apply of any snapshot
// compares every subtree any of the unfinished ones touched.
func (s *Standby) Apply(ctx context.Context, req ApplyRequest) (*ApplyResult, error) {
	start := s.now()
	target, err := TargetKey(req.Target)
	if err != nil {
		return nil, err
	}
	state, err := s.DB.Standby(req.Set)
	if err != nil {
		return nil, err
	}
	ts := state.Targets[target]
	if ts == nil {
		ts = &index.TargetState{}
	}
	identity, err := identify(target)
	if err != nil {
		return nil, err
	}
	refs, base := s.refs(req, ts)
	if ts.Identity != "" && ts.Identity != identity {
		// Not the directory the state describes (made anew, or another
		// filesystem mounted there): trust none of it.
		refs = nil
		if s.Warn != nil && !req.DryRun {
			s.Warn(target, errors.New("not the directory the standby state describes (made anew, or another filesystem is mounted there): every entry is compared"))
		}
	}
	opts := ApplyOptions{
		Target: target, Refs: refs, Protect: slices.Concat(state.Protect, state.ConfigProtect, req.Protect),
		Workers: s.Workers, Warn: s.Warn, Itemize: s.Itemize,
	}
	res := &ApplyResult{Snapshot: req.Snapshot.ID, Target: target, Previous: ts.Applied}
	if req.Guard && !req.Force && !req.DryRun {
		reasons, err := s.judge(ctx, req, opts, base, &state)
		if err != nil {
			return nil, err
		}
		if len(reasons) > 0 {
			refusal := &Refused{Set: req.Set, Target: target, Snapshot: req.Snapshot.ID, Reasons: reasons}
			s.noteError(req.Set, target, refusal)
			return nil, refusal
		}
	}
	if req.DryRun {
		opts.DryRun = true
		res.Stats, err = Apply(ctx, s.Loader, req.Snapshot.Record, opts)
		res.Duration = s.now().Sub(start).Seconds()
		return res, err
	}
	err = s.DB.UpdateStandby(req.Set, func(st *index.StandbyState) error {
		t := targetOf(st, target)
		if t.Identity != "" && t.Identity != identity {
			t.Applied, t.Applying = index.ID{}, nil // described another directory
		}
		if !slices.Contains(t.Applying, req.Snapshot.ID) {
			t.Applying = append(t.Applying, req.Snapshot.ID)
		}
		t.StartedAt = start.UTC()
		t.Identity = identity
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record the apply in the standby state: %w", err)
	}
	res.Stats, err = Apply(ctx, s.Loader, req.Snapshot.Record, opts)
	if err == nil {
		err = syncTarget(target)
	}
	res.Duration = s.now().Sub(start).Seconds()
	if err != nil {
		s.noteError(req.Set, target, err)
		return res, err
	}
	err = s.DB.UpdateStandby(req.Set, func(st *index.StandbyState) error {
		t := targetOf(st, target)
		t.Applied, t.AppliedAt = req.Snapshot.ID, s.now().UTC()
		t.Applying, t.StartedAt = nil, time.Time{}
		t.LastError, t.LastErrorAt = "", time.Time{}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("snapshot %s is applied to %s, but recording that failed: %w", req.Snapshot.ID.Short(), target, err)
	}
	return res, nil
}

func targetOf(st *index.StandbyState, key string) *index.TargetState {
	if st.Targets == nil {
		st.Targets = map[string]*index.TargetState{}
	}
	t := st.Targets[key]
	if t == nil {
		t = &index.TargetState{}
		st.Targets[key] = t
	}
	return t
}

func (s *Standby) noteError(set, key string, cause error) {
	s.DB.UpdateStandby(set, func(st *index.StandbyState) error {
		t := targetOf(st, key)
		t.LastError, t.LastErrorAt = cause.Error(), s.now().UTC()
		return nil
	})
}

// refs returns the records of the snapshots the target may be made of,
// or nil when the apply must compare everything; and the one applied
// completely, if it is still held.
func (s *Standby) refs(req ApplyRequest, ts *index.TargetState) (refs []*snapshot.Record, base *snapshot.Record) {
	ids := ts.Applying
	if !ts.Applied.IsZero() {
		ids = append([]index.ID{ts.Applied}, ids...)
	}
	for i, id := range ids {
		data, ok, err := s.DB.SnapshotRecord(id)
		if err != nil || !ok {
			return nil, nil
		}
		rec, err := snapshot.DecodeRecord(data)
		if err != nil {
			return nil, nil
		}
		if i == 0 && id == ts.Applied {
			base = rec
		}
		refs = append(refs, rec)
	}
	if req.Full || len(refs) > maxRefs {
		return nil, base
	}
	return refs, base
}

// judge runs the mass-change guard: a dry run of the apply counts what it
// would delete and change against the files in the scope, and the sanity
// checks look at the snapshot's content. It returns the reasons to refuse.
func (s *Standby) judge(ctx context.Context, req ApplyRequest, opts ApplyOptions, base *snapshot.Record, state *index.StandbyState) ([]string, error) {
	opts.DryRun, opts.Warn, opts.Itemize = true, nil, nil
	plan, err := Apply(ctx, s.Loader, req.Snapshot.Record, opts)
	if err != nil && !errors.Is(err, ErrIncomplete) {
		return nil, fmt.Errorf("plan the apply for the mass-change guard: %w", err)
	}
	files, bytes := plan.FilesSeen, plan.BytesSeen
	if base != nil && opts.Refs != nil {
		// Unchanged subtrees were not walked: the snapshot applied last
		// tells how many files the scope holds.
		files, bytes = base.Stats.Files+base.Stats.Others, base.Stats.BytesTotal
	}
	maxDel, maxChg := DefaultMaxDeleted, DefaultMaxChanged
	if state.MaxDeleted != nil {
		maxDel = *state.MaxDeleted
	}
	if state.MaxChanged != nil {
		maxChg = *state.MaxChanged
	}
	var reasons []string
	share := func(what string, n, total int64, limit float64, unit string) {
		if total <= 0 || n <= 0 {
			return
		}
		pct := 100 * float64(n) / float64(total)
		if pct > limit {
			reasons = append(reasons, fmt.Sprintf("it would %s %d of %d %s in the scope (%.1f%%; the limit is %g%%)", what, n, total, unit, pct, limit))
		}
	}
	share("delete", plan.FilesDeleted, files, maxDel, "files")
	share("delete", plan.BytesDeleted, bytes, maxDel, "bytes")
	share("change", plan.FilesChanged, files, maxChg, "files")
	share("change", plan.BytesChanged, bytes, maxChg, "bytes")
	checks := make([]SanityCheck, 0, len(state.Checks))
	for _, c := range state.Checks {
		sc := SanityCheck{Name: c.Name, Command: c.Command, Paths: c.Paths}
		if c.Timeout != "" {
			if sc.Timeout, err = time.ParseDuration(c.Timeout); err != nil {
				return nil, fmt.Errorf("sanity check %q: timeout %q: %w", c.Name, c.Timeout, err)
			}
		}
		checks = append(checks, sc)
	}
	problems, err := Sanity(ctx, s.Loader, req.Snapshot.ID, req.Snapshot.Record, checks, s.StagingDir)
	if err != nil {
		return nil, fmt.Errorf("sanity checks: %w", err)
	}
	return append(reasons, problems...), nil
}

// syncTarget flushes the filesystem of target, so that the state never
// calls a snapshot applied before its files are on disk.
func syncTarget(target string) error {
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync the filesystem of %s: %w", target, err)
	}
	return nil
}

// AutoResult says what an automatic apply did: applied a snapshot, found
// the target up to date, or waits for a delay to pass.
type AutoResult struct {
	Applied *ApplyResult `json:"applied,omitempty"`
	// UpToDate: the newest snapshot due is the one applied.
	UpToDate bool `json:"up_to_date,omitempty"`
	// Waiting is the oldest snapshot newer than the one applied that is
	// not due yet, and DueAt when it will be.
	Waiting index.ID  `json:"waiting,omitzero"`
	DueAt   time.Time `json:"due_at,omitzero"`
}

// Auto applies the newest snapshot of set that is due to target: newer
// than the one applied and at least the set's apply delay old. A held or
// promoted set is refused; the mass-change guard judges the snapshot.
func (s *Standby) Auto(ctx context.Context, set, target string) (*AutoResult, error) {
	key, err := TargetKey(target)
	if err != nil {
		return nil, err
	}
	state, err := s.DB.Standby(set)
	if err != nil {
		return nil, err
	}
	snaps, _, err := snapshot.List(s.DB, set)
	if err != nil {
		return nil, err
	}
	if len(snaps) == 0 {
		return nil, fmt.Errorf("set %s has no snapshots in this repository", set)
	}
	newest := snaps[len(snaps)-1]
	refuse := func(reason string) error {
		r := &Refused{Set: set, Target: key, Snapshot: newest.ID, Reasons: []string{reason}}
		s.noteError(set, key, r)
		return r
	}
	if !state.Promoted.IsZero() {
		return nil, refuse(fmt.Sprintf("the set was promoted here at %s; this host is its primary", state.Promoted.Local().Format(time.RFC3339)))
	}
	if !state.Held.IsZero() {
		return nil, refuse(fmt.Sprintf("the set is held since %s (understudy release resumes automatic applies)", state.Held.Local().Format(time.RFC3339)))
	}
	delay, err := state.Delay()
	if err != nil {
		return nil, fmt.Errorf("set %s: %w", set, err)
	}
	var applied time.Time
	ts := state.Targets[key]
	if ts != nil && !ts.Applied.IsZero() {
		for _, sn := range snaps {
			if sn.ID == ts.Applied {
				applied = sn.Time
			}
		}
	}
	now := s.now()
	res := &AutoResult{}
	var due *snapshot.Listed
	for i := range snaps {
		sn := &snaps[i]
		if !sn.Time.After(applied) && ts != nil && !ts.Applied.IsZero() {
			continue
		}
		if sn.Time.Add(delay).After(now) {
			if res.Waiting.IsZero() {
				res.Waiting, res.DueAt = sn.ID, sn.Time.Add(delay)
			}
			continue
		}
		due = sn
	}
	if due == nil {
		res.UpToDate = res.Waiting.IsZero()
		return res, nil
	}
	if ts != nil && due.ID == ts.Applied && !ts.MidApply() {
		res.UpToDate = true
		return res, nil
	}
	res.Applied, err = s.Apply(ctx, ApplyRequest{Set: set, Target: key, Snapshot: *due, Guard: true})
	return res, err
}

// Previous returns the snapshot steps before the one applied to target in
// set's line of snapshots, for rollback --steps.
func (s *Standby) Previous(set, target string, steps int) (snapshot.Listed, error) {
	key, err := TargetKey(target)
	if err != nil {
		return snapshot.Listed{}, err
	}
	state, err := s.DB.Standby(set)
	if err != nil {
		return snapshot.Listed{}, err
	}
	ts := state.Targets[key]
	if ts == nil || ts.Applied.IsZero() {
		return snapshot.Listed{}, fmt.Errorf("no snapshot of set %s has been applied to %s: name one with --to", set, key)
	}
	snaps, _, err := snapshot.List(s.DB, set)
	if err != nil {
		return snapshot.Listed{}, err
	}
	i := slices.IndexFunc(snaps, func(l snapshot.Listed) bool { return l.ID == ts.Applied })
	if i < 0 {
		return snapshot.Listed{}, fmt.Errorf("the snapshot applied to %s (%s) is no longer in the repository: name one with --to", key, ts.Applied.Short())
	}
	if steps <= 0 || i-steps < 0 {
		return snapshot.Listed{}, fmt.Errorf("--steps %d: the applied snapshot %s has %d older ones in set %s", steps, ts.Applied.Short(), i, set)
	}
	return snaps[i-steps], nil
}

// fsIocGetVersion is FS_IOC_GETVERSION, _IOR('v', 1, long) in
// linux/fs.h, which golang.org/x/sys/unix does not define; the kernel
// writes an int.
const fsIocGetVersion = 0x80087601

// identify returns what tells the target directory from another made at
// the same path later: device, inode number, and the birth time or, where
// the filesystem has none, the inode's generation (a reused inode number
// gets a new one).
func identify(target string) (string, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, target, unix.AT_STATX_SYNC_AS_STAT, unix.STATX_INO|unix.STATX_BTIME, &stx); err != nil {
		return "", fmt.Errorf("target %s: %w", target, err)
	}
	id := fmt.Sprintf("%d:%d", unix.Mkdev(stx.Dev_major, stx.Dev_minor), stx.Ino)
	if stx.Mask&unix.STATX_BTIME != 0 {
		return id + fmt.Sprintf(":b%d.%09d", stx.Btime.Sec, stx.Btime.Nsec), nil
	}
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("target %s: %w", target, err)
	}
	defer unix.Close(fd)
	if gen, err := unix.IoctlGetUint32(fd, fsIocGetVersion); err == nil {
		return id + fmt.Sprintf(":g%d", gen), nil
	}
	return id, nil
}
