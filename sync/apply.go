package sync

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
)

// Apply on request (capability capApply). After a push the client may ask
// serve to run the standby's automatic apply of the pushed snapshot's set
// into a target directory. serve applies only to the targets it was started
// with (`serve --allow-target DIR`), so that a key confined to serve by a
// forced command cannot make the standby write anywhere else.
//
// Apply payload:
//
//	snapshot ID [32]   a snapshot the standby holds (pushed in this session or before)
//	flags u8           none defined: 0
//	target length u16
//	target             absolute, clean path on the standby, no NUL, ≤ maxApplyTarget
//
// ApplyReply payload: the JSON of ApplyReply, at most maxApplyReply bytes.
const (
	applyFixed     = 32 + 1 + 2
	maxApplyTarget = 4096
	maxApplyReply  = 1 << 20

	// applyFlagsKnown are the flag bits an Apply frame may set.
	applyFlagsKnown byte = 0
)

// Bounds that keep an encoded ApplyReply under maxApplyReply whatever the
// applier says: 32 reasons of 4 KiB and an error of 16 KiB are 144 KiB, six
// times that if every byte needs a \u escape: 864 KiB, leaving 160 KiB for
// the stats and the fixed fields.
const (
	maxReplyReasons = 32
	maxReasonText   = 4096
	maxReplyError   = 16 << 10
	maxReplyStats   = 64 << 10
)

// ErrNoApply is wrapped by Session.Apply's error when the standby does not
// announce capApply.
var ErrNoApply = errors.New("the standby does not apply on request")

// applyRequest is the payload of an Apply frame.
type applyRequest struct {
	Snapshot index.ID
	Flags    byte
	Target   string
}

// checkTarget accepts the target paths an Apply frame may name.
func checkTarget(t string) error {
	switch {
	case t == "":
		return errors.New("empty target")
	case len(t) > maxApplyTarget:
		return fmt.Errorf("target of %d bytes (at most %d)", len(t), maxApplyTarget)
	case strings.IndexByte(t, 0) >= 0:
		return errors.New("target contains a NUL byte")
	case !filepath.IsAbs(t):
		return fmt.Errorf("target %q is not an absolute path", t)
	case filepath.Clean(t) != t:
		return fmt.Errorf("target %q is not clean (%q)", t, filepath.Clean(t))
	}
	return nil
}

func (a applyRequest) encode() ([]byte, error) {
	if err := checkTarget(a.Target); err != nil {
		return nil, err
	}
	if a.Flags&^applyFlagsKnown != 0 {
		return nil, fmt.Errorf("apply flags 0x%02x", a.Flags)
	}
	b := append(make([]byte, 0, applyFixed+len(a.Target)), a.Snapshot[:]...)
	b = append(b, a.Flags)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.Target)))
	return append(b, a.Target...), nil
}

func decodeApply(p []byte) (applyRequest, error) {
	if len(p) < applyFixed || len(p) != applyFixed+int(binary.BigEndian.Uint16(p[33:])) {
		return applyRequest{}, fmt.Errorf("%w: apply of %d bytes", ErrFrame, len(p))
	}
	a := applyRequest{Snapshot: index.ID(p[:32]), Flags: p[32], Target: string(p[applyFixed:])}
	if a.Flags&^applyFlagsKnown != 0 {
		return applyRequest{}, fmt.Errorf("%w: apply with unknown flags 0x%02x", ErrFrame, a.Flags)
	}
	if err := checkTarget(a.Target); err != nil {
		return applyRequest{}, fmt.Errorf("%w: apply: %w", ErrFrame, err)
	}
	return a, nil
}

// Statuses of an ApplyReply.
const (
	// ApplyApplied: Snapshot was applied to the target; Stats say how.
	ApplyApplied = "applied"
	// ApplyUpToDate: the target holds the newest due snapshot of the set
	// (Snapshot, when the standby knows which).
	ApplyUpToDate = "up_to_date"
	// ApplyWaiting: Snapshot, the oldest one newer than the target's, is
	// not due before DueAt (the set's apply delay).
	ApplyWaiting = "waiting"
	// ApplyRefused: a guard refused to apply Snapshot (the set is held or
	// promoted, the mass-change guard, a sanity check); Reasons say which.
	// Nothing was written.
	ApplyRefused = "refused"
	// ApplyIncomplete: Snapshot was applied but some entries could not be;
	// Error says so, Stats count what was done, and the standby's messages
	// (on its standard error, passed on by ssh) name the entries.
	ApplyIncomplete = "incomplete"
)

// ApplyReply is serve's answer to an Apply frame, sent as JSON. A hard
// failure of the apply is an Error frame instead.
type ApplyReply struct {
	Status string `json:"status"`
	// Snapshot is the snapshot applied, or considered: not necessarily the
	// one pushed, since the automatic apply takes the newest that is due.
	Snapshot index.ID        `json:"snapshot,omitzero"`
	DueAt    time.Time       `json:"due_at,omitzero"`   // waiting
	Reasons  []string        `json:"reasons,omitempty"` // refused
	Error    string          `json:"error,omitempty"`   // incomplete
	Stats    json.RawMessage `json:"stats,omitempty"`   // applied, incomplete: the standby's apply statistics (a JSON object)
	Duration float64         `json:"duration_seconds"`
}

func knownStatus(s string) bool {
	switch s {
	case ApplyApplied, ApplyUpToDate, ApplyWaiting, ApplyRefused, ApplyIncomplete:
		return true
	}
	return false
}

// check says what is wrong with a reply, by the rules both sides apply.
func (r *ApplyReply) check() error {
	switch {
	case !knownStatus(r.Status):
		return fmt.Errorf("apply status %q", r.Status)
	case (r.Status == ApplyApplied || r.Status == ApplyWaiting) && r.Snapshot.IsZero():
		return fmt.Errorf("apply status %s names no snapshot", r.Status)
	case r.Status == ApplyWaiting && r.DueAt.IsZero():
		return errors.New("apply status waiting without due_at")
	case len(r.Stats) > 0 && r.Stats[0] != '{':
		return errors.New("apply stats are not a JSON object")
	case len(r.Stats) > maxReplyStats:
		return fmt.Errorf("apply stats of %d bytes (at most %d)", len(r.Stats), maxReplyStats)
	case r.Duration < 0:
		return fmt.Errorf("apply duration %g", r.Duration)
	}
	return nil
}

// encode trims the texts of r to their bounds and returns its JSON.
func (r ApplyReply) encode() ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	if n := len(r.Reasons); n > maxReplyReasons {
		r.Reasons = append(r.Reasons[:maxReplyReasons-1:maxReplyReasons-1], fmt.Sprintf("and %d more reasons", n-maxReplyReasons+1))
	}
	reasons := make([]string, len(r.Reasons))
	for i, s := range r.Reasons {
		reasons[i] = truncate(s, maxReasonText)
	}
	r.Reasons = reasons
	r.Error = truncate(r.Error, maxReplyError)
	if !r.DueAt.IsZero() {
		r.DueAt = r.DueAt.UTC()
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(b) > maxApplyReply {
		return nil, fmt.Errorf("apply reply of %d bytes (at most %d)", len(b), maxApplyReply)
	}
	return b, nil
}

// truncate cuts s to at most n bytes, on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

func decodeApplyReply(p []byte) (ApplyReply, error) {
	var r ApplyReply
	if len(p) > maxApplyReply {
		return ApplyReply{}, fmt.Errorf("%w: apply reply of %d bytes", ErrFrame, len(p))
	}
	if err := json.Unmarshal(p, &r); err != nil {
		return ApplyReply{}, fmt.Errorf("%w: apply reply: %w", ErrFrame, err)
	}
	if bytes.Equal(r.Stats, []byte("null")) {
		r.Stats = nil
	}
	if err := r.check(); err != nil {
		return ApplyReply{}, fmt.Errorf("%w: apply reply: %w", ErrFrame, err)
	}
	return r, nil
}

// CheckApply returns nil if the standby answers Apply requests, else an
// error wrapping ErrNoApply that says what to do.
func (s *Session) CheckApply() error {
	if s.welcome.CanApply() {
		return nil
	}
	return fmt.Errorf("%w: its understudy (%s) does not announce the apply capability; upgrade it, or push without --apply and run `understudy apply --pending` there",
		ErrNoApply, s.welcome.Program)
}

// Apply asks the standby to run its automatic apply of the set of snapshot
// id, which it must hold (pushed in this session or before), into target,
// an absolute path on the standby that serve allows (`serve --allow-target
// TARGET`). The reply says what was done; the snapshot applied is the
// newest of the set that is due, not necessarily id. A target serve does
// not allow is a RemoteError that matches ErrRefused, and ends the session.
func (s *Session) Apply(ctx context.Context, id index.ID, target string) (ApplyReply, error) {
	if err := s.CheckApply(); err != nil {
		return ApplyReply{}, err
	}
	p, err := applyRequest{Snapshot: id, Target: target}.encode()
	if err != nil {
		return ApplyReply{}, err
	}
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	r, err := s.apply(p)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return r, err
}

func (s *Session) apply(p []byte) (ApplyReply, error) {
	if err := s.send(fApply, p); err != nil {
		return ApplyReply{}, err
	}
	if err := s.flush(); err != nil {
		return ApplyReply{}, err
	}
	rp, err := s.expect(fApplyReply)
	if err != nil {
		return ApplyReply{}, err
	}
	return decodeApplyReply(rp)
}

// ApplyFunc runs the standby's automatic apply of set into target in repo,
// the repository serve opened. It returns a reply for every outcome the
// standby decided (applied, up to date, waiting, refused by a guard,
// incomplete); an error only for a hard failure, which ends the session
// with an Error frame. Serve fills in the reply's duration.
type ApplyFunc func(ctx context.Context, repo *chunkstore.Repo, set, target string) (ApplyReply, error)

// allowed reports whether an Apply frame may name target: it must equal
// one of opts.AllowTargets, both taken absolute and clean. A relative entry
// allows nothing.
func (s *server) allowed(target string) bool {
	for _, a := range s.opts.AllowTargets {
		if filepath.IsAbs(a) && filepath.Clean(a) == target {
			return true
		}
	}
	return false
}

// apply answers an Apply frame.
func (s *server) apply(p []byte) error {
	if s.clientCaps&capApply == 0 || s.opts.Apply == nil {
		return fmt.Errorf("%w: apply frame, but the apply capability was not agreed", ErrFrame)
	}
	req, err := decodeApply(p)
	if err != nil {
		return err
	}
	if err := s.barrier(); err != nil {
		return err
	}
	log := s.opts.Log.With("snapshot", req.Snapshot.Short(), "target", req.Target)
	if !s.allowed(req.Target) {
		text := fmt.Sprintf("serve does not allow applying to %s: add --allow-target %s to its command", req.Target, shellQuote(req.Target))
		log.Info("apply refused", "status", ApplyRefused, "reason", text)
		s.alert(text)
		return &RemoteError{Code: codeRefused, Text: text}
	}
	record, ok, err := s.repo.Index().SnapshotRecord(req.Snapshot)
	if err != nil {
		return err
	}
	if !ok {
		return &RemoteError{Code: codeBadInput, Text: fmt.Sprintf("apply: snapshot %s is not in this repository; push it first", req.Snapshot.Short())}
	}
	rec, err := snapshot.DecodeRecord(record)
	if err != nil {
		return fmt.Errorf("apply: snapshot %s: %w", req.Snapshot.Short(), err)
	}
	// Everything received is committed before anything is read back.
	if _, err := s.up.Flush(nil); err != nil {
		return err
	}
	log = log.With("set", rec.Set)
	start := time.Now()
	reply, err := s.opts.Apply(s.ctx, s.repo, rec.Set, req.Target)
	if err != nil {
		log.Info("apply failed", "error", err)
		return fmt.Errorf("apply set %s to %s: %w", rec.Set, req.Target, err)
	}
	reply.Duration = time.Since(start).Seconds()
	payload, err := reply.encode()
	if err != nil {
		return fmt.Errorf("apply set %s to %s: %w", rec.Set, req.Target, err)
	}
	attrs := []any{"status", reply.Status, "applied", reply.Snapshot.Short(), "duration", reply.Duration}
	switch reply.Status {
	case ApplyWaiting:
		attrs = append(attrs, "due_at", reply.DueAt)
	case ApplyRefused:
		attrs = append(attrs, "reasons", reply.Reasons)
		s.alert(fmt.Sprintf("apply of snapshot %s of set %s to %s refused: %s", reply.Snapshot.Short(), rec.Set, req.Target, strings.Join(reply.Reasons, "; ")))
	case ApplyIncomplete:
		attrs = append(attrs, "error", reply.Error)
	}
	log.Info("apply", attrs...)
	return s.send(fApplyReply, payload)
}

// alert hands a refusal to opts.Syslog.
func (s *server) alert(msg string) {
	if s.opts.Syslog != nil {
		s.opts.Syslog(msg)
	}
}
