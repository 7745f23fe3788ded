package sync

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
)

func TestApplyRequestCodec(t *testing.T) {
	id := index.Hash([]byte("snap"))
	for _, target := range []string{"/", "/srv/standby root", "/" + strings.Repeat("x", maxApplyTarget-1)} {
		p, err := applyRequest{Snapshot: id, Target: target}.encode()
		if err != nil {
			t.Fatalf("encode %q: %v", target, err)
		}
		a, err := decodeApply(p)
		if err != nil || a.Snapshot != id || a.Target != target || a.Flags != 0 {
			t.Errorf("round trip of %q: %+v, %v", target, a, err)
		}
	}
	for _, target := range []string{"", "relative", "/a/../b", "/a/", "//a", "/a/./b", "/a\x00b", "/" + strings.Repeat("x", maxApplyTarget)} {
		if _, err := (applyRequest{Snapshot: id, Target: target}).encode(); err == nil {
			t.Errorf("target %q encoded", target)
		}
		raw := append(append(append([]byte{}, id[:]...), 0), binary.BigEndian.AppendUint16(nil, uint16(len(target)))...)
		raw = append(raw, target...)
		if _, err := decodeApply(raw); !errors.Is(err, ErrFrame) {
			t.Errorf("decode of target %q: %v, want ErrFrame", target, err)
		}
	}
	good, _ := applyRequest{Snapshot: id, Target: "/t"}.encode()
	flags := bytes.Clone(good)
	flags[32] = 1
	for name, p := range map[string][]byte{
		"unknown flag": flags,
		"short":        good[:applyFixed-1],
		"long":         append(bytes.Clone(good), 'x'),
		"truncated":    good[:len(good)-1],
		"empty":        nil,
	} {
		if _, err := decodeApply(p); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v, want ErrFrame", name, err)
		}
	}
	if max, _ := maxPayload(fApply); int(max) != len(good)-2+maxApplyTarget {
		t.Errorf("maxPayload(fApply) = %d, want %d", max, len(good)-2+maxApplyTarget)
	}
}

func TestApplyReplyCodec(t *testing.T) {
	id := index.Hash([]byte("snap"))
	due := time.Date(2031, 5, 6, 7, 8, 9, 0, time.FixedZone("x", 3600))
	for _, r := range []ApplyReply{
		{Status: ApplyApplied, Snapshot: id, Stats: json.RawMessage(`{"created":3,"replaced":1}`), Duration: 1.5},
		{Status: ApplyUpToDate},
		{Status: ApplyUpToDate, Snapshot: id},
		{Status: ApplyWaiting, Snapshot: id, DueAt: due},
		{Status: ApplyRefused, Snapshot: id, Reasons: []string{"the set is held", "it would delete 9 of 10 files"}},
		{Status: ApplyIncomplete, Snapshot: id, Error: "restore incomplete: 2 problems", Stats: json.RawMessage(`{}`)},
	} {
		p, err := r.encode()
		if err != nil {
			t.Fatalf("encode %+v: %v", r, err)
		}
		got, err := decodeApplyReply(p)
		if err != nil {
			t.Fatalf("decode %s: %v", p, err)
		}
		if !got.DueAt.Equal(r.DueAt) {
			t.Errorf("due_at %v, want %v", got.DueAt, r.DueAt)
		}
		got.DueAt, r.DueAt = time.Time{}, time.Time{}
		if gj, _ := json.Marshal(got); !bytes.Equal(gj, mustJSON(t, r)) {
			t.Errorf("round trip: %s, want %s", gj, mustJSON(t, r))
		}
	}
	if p, _ := (ApplyReply{Status: ApplyWaiting, Snapshot: id, DueAt: due}).encode(); !bytes.Contains(p, []byte(`"due_at":"2031-05-06T06:08:09Z"`)) {
		t.Errorf("waiting reply %s: due_at not in RFC 3339, UTC", p)
	}
	for _, p := range []string{
		``, `[]`, `{"status":"done"}`, `{"status":"applied"}`, `{"status":"waiting","snapshot":"` + id.String() + `"}`,
		`{"status":"applied","snapshot":"abc"}`, `{"status":"up_to_date","stats":[1]}`, `{"status":"up_to_date","duration_seconds":-1}`,
		`{"status":"up_to_date"} {}`, `{"status":"waiting","snapshot":"` + id.String() + `","due_at":"tomorrow"}`,
	} {
		if r, err := decodeApplyReply([]byte(p)); !errors.Is(err, ErrFrame) {
			t.Errorf("decode %s: %+v, %v; want ErrFrame", p, r, err)
		}
	}
	if r, err := decodeApplyReply([]byte(`{"status":"up_to_date","stats":null,"newer_field":1}`)); err != nil || r.Stats != nil {
		t.Errorf("null stats and an unknown field: %+v, %v", r, err)
	}

	// A guard that gives a thousand long reasons of control characters
	// (six bytes each in JSON) still fits in a frame.
	many := make([]string, 1000)
	for i := range many {
		many[i] = strings.Repeat("\x01", 10000)
	}
	p, err := ApplyReply{Status: ApplyRefused, Snapshot: id, Reasons: many, Error: strings.Repeat("\x02", 1<<20)}.encode()
	if err != nil || len(p) > maxApplyReply {
		t.Fatalf("reply of 1000 long reasons: %d bytes, %v", len(p), err)
	}
	r, err := decodeApplyReply(p)
	if err != nil || len(r.Reasons) != maxReplyReasons || r.Reasons[maxReplyReasons-1] != "and 969 more reasons" || len(r.Reasons[0]) != maxReasonText {
		t.Fatalf("decoded %d reasons, last %q, err %v", len(r.Reasons), r.Reasons[len(r.Reasons)-1], err)
	}
	if max, _ := maxPayload(fApplyReply); max != maxApplyReply {
		t.Errorf("maxPayload(fApplyReply) = %d", max)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// recorder is an ApplyFunc that records its calls and gives a set answer.
type recorder struct {
	mu     stdsync.Mutex
	calls  []string // "set target"
	held   []bool   // whether the set had a snapshot in the repository at the call
	reply  ApplyReply
	err    error
	alerts []string
}

func (r *recorder) apply(_ context.Context, repo *chunkstore.Repo, set, target string) (ApplyReply, error) {
	l, _, err := snapshot.List(repo.Index(), set)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, set+" "+target)
	r.held = append(r.held, err == nil && len(l) > 0)
	return r.reply, r.err
}

func (r *recorder) syslog(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.alerts = append(r.alerts, msg)
}

// applySession pushes snapshot id of src to the standby in dst served with
// opts and returns the open session.
func applySession(t *testing.T, src, dst string, id index.ID, opts ServeOptions) *Session {
	t.Helper()
	r := openRepo(t, src, chunkstore.Shared)
	defer r.Close()
	s, err := NewSession(context.Background(), serveDirWith(t, dst, opts))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Push(context.Background(), r, id); err != nil {
		s.Abort()
		t.Fatalf("push: %v", err)
	}
	return s
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestApplyConfinedToAllowedTargets: an Apply of a target serve does not
// allow is refused with the refused code and the fix, before the applier
// runs, and ends the session; the pushed snapshot stays committed. Allowed
// targets match whatever form --allow-target was written in.
func TestApplyConfinedToAllowedTargets(t *testing.T) {
	base := t.TempDir()
	src, dst, tree := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
	allowed, other := filepath.Join(base, "allowed"), filepath.Join(base, "other")
	initRepo(t, src)
	initRepo(t, dst)
	writeTree(t, tree, map[string]string{"etc/hosts": "127.0.0.1 localhost\n"})
	for _, d := range []string{allowed, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	id := take(t, src, tree)
	rec := &recorder{reply: ApplyReply{Status: ApplyUpToDate}}
	opts := ServeOptions{Program: "test", Apply: rec.apply, AllowTargets: []string{allowed + "/", "relative"}, Syslog: rec.syslog}

	s := applySession(t, src, dst, id, opts)
	if !s.Welcome().CanApply() {
		t.Fatal("serve with an applier does not announce capApply")
	}
	_, err := s.Apply(context.Background(), id, other)
	var re *RemoteError
	want := "serve does not allow applying to " + other + ": add --allow-target " + other + " to its command"
	if !errors.As(err, &re) || re.Code != codeRefused || !errors.Is(err, ErrRefused) || re.Text != want {
		t.Fatalf("apply to %s: %v (%#v), want a refusal %q", other, err, re, want)
	}
	s.Abort()
	if len(rec.calls) != 0 {
		t.Errorf("the applier ran for a target not allowed: %v", rec.calls)
	}
	if len(rec.alerts) != 1 || rec.alerts[0] != want {
		t.Errorf("syslog got %q, want %q", rec.alerts, want)
	}
	if names := dirEntries(t, other); len(names) != 0 {
		t.Errorf("%s was written: %v", other, names)
	}
	if _, ok := rootOf(t, dst, id); !ok {
		t.Fatal("the pushed snapshot is not committed after the refused apply")
	}
	for _, target := range []string{filepath.Join(base, "relative"), filepath.Join(allowed, "sub")} {
		s = applySession(t, src, dst, id, opts)
		if _, err := s.Apply(context.Background(), id, target); !errors.Is(err, ErrRefused) {
			t.Errorf("apply to %s: %v, want a refusal", target, err)
		}
		s.Abort()
	}

	// The allowed target: the applier runs with the snapshot's set and the
	// snapshot committed; its answer comes back with serve's duration.
	rec.reply = ApplyReply{Status: ApplyApplied, Snapshot: id, Stats: json.RawMessage(`{"created":2}`)}
	s = applySession(t, src, dst, id, opts)
	got, err := s.Apply(context.Background(), id, allowed)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != ApplyApplied || got.Snapshot != id || string(got.Stats) != `{"created":2}` || got.Duration <= 0 {
		t.Errorf("reply %+v", got)
	}
	if len(rec.calls) != 1 || rec.calls[0] != "test "+allowed || !rec.held[0] {
		t.Errorf("applier calls %v (snapshot held: %v), want one for set test and %s", rec.calls, rec.held, allowed)
	}

	// A refusal by a guard is a reply, logged to syslog; the session goes
	// on, and ends cleanly.
	rec.reply = ApplyReply{Status: ApplyRefused, Snapshot: id, Reasons: []string{"the set is held"}}
	got, err = s.Apply(context.Background(), id, allowed)
	if err != nil || got.Status != ApplyRefused || len(got.Reasons) != 1 {
		t.Fatalf("refused apply: %+v, %v", got, err)
	}
	if len(rec.alerts) != 4 || !strings.Contains(rec.alerts[3], "the set is held") {
		t.Errorf("syslog got %q", rec.alerts)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close after a refused apply: %v", err)
	}

	// A snapshot the standby does not hold, and a hard failure of the
	// applier, are errors that end the session.
	s = applySession(t, src, dst, id, opts)
	if _, err := s.Apply(context.Background(), index.Hash([]byte("never pushed")), allowed); !errors.As(err, &re) || re.Code != codeBadInput || !strings.Contains(re.Text, "push it first") {
		t.Errorf("apply of a snapshot not there: %v", err)
	}
	s.Abort()
	rec.err = errors.New("disk on fire")
	s = applySession(t, src, dst, id, opts)
	if _, err := s.Apply(context.Background(), id, allowed); !errors.As(err, &re) || re.Code != codeFailed || !strings.Contains(re.Text, "disk on fire") {
		t.Errorf("apply that fails: %v", err)
	}
	s.Abort()
	checkRepo(t, dst)
}

// TestApplyNeedsCapability: a serve without an applier does not announce
// capApply, and the client refuses to ask; a client that did not announce
// it may not send Apply frames.
func TestApplyNeedsCapability(t *testing.T) {
	base := t.TempDir()
	src, dst, tree := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
	initRepo(t, src)
	initRepo(t, dst)
	writeTree(t, tree, map[string]string{"a": "x\n"})
	id := take(t, src, tree)
	s := applySession(t, src, dst, id, ServeOptions{Program: "old", AllowTargets: []string{"/"}})
	if _, err := s.Apply(context.Background(), id, "/"); !errors.Is(err, ErrNoApply) || !strings.Contains(err.Error(), "understudy apply --pending") {
		t.Errorf("apply to a serve without capApply: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("the session broke: %v", err)
	}

	rec := &recorder{reply: ApplyReply{Status: ApplyUpToDate}}
	c := serveDirWith(t, dst, ServeOptions{Program: "test", Apply: rec.apply, AllowTargets: []string{"/"}})
	defer c.Close()
	if err := writeFrame(c, fHello, hello{Version: ProtocolVersion, Caps: capDelta}.encode()); err != nil {
		t.Fatal(err)
	}
	fr := frameReader{r: c}
	if typ, p, err := fr.next(nil); err != nil || typ != fWelcome {
		t.Fatalf("no welcome: 0x%02x %v", typ, err)
	} else if w, err := decodeWelcome(p); err != nil || !w.CanApply() {
		t.Fatalf("welcome %+v, %v: want capApply", w, err)
	}
	p, _ := applyRequest{Snapshot: id, Target: "/"}.encode()
	if err := writeFrame(c, fApply, p); err != nil {
		t.Fatal(err)
	}
	typ, p, err := fr.next(nil)
	if err != nil || typ != fError {
		t.Fatalf("apply without the capability agreed: frame 0x%02x, %v; want an error", typ, err)
	}
	if re, err := decodeError(p); err != nil || re.Code != codeBadInput {
		t.Errorf("error %+v, %v; want bad input", re, err)
	}
	if len(rec.calls) != 0 {
		t.Errorf("the applier ran: %v", rec.calls)
	}
}

// TestDialAllowTargets: a local serve gets --allow-target before --repo,
// which stays last.
func TestDialAllowTargets(t *testing.T) {
	c, err := Dial(context.Background(), Dest{Path: "/r"}, DialOptions{ServeCommand: []string{"echo", "serve"}, AllowTargets: []string{"/t", "/u v"}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(out) != "serve --allow-target /t --allow-target /u v --repo /r\n" {
		t.Errorf("serve ran as %q (%v)", out, err)
	}
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
