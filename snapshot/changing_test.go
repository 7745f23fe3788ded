package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// noise returns n deterministic bytes that do not compress, different for
// each seed: 2 MiB of it is some 16 chunks.
func noise(seed uint64, n int) []byte {
	b := make([]byte, n)
	x := seed*0x9E3779B97F4A7C15 | 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

// changing is a source directory with one file, f, that tests change while
// it is read, and a calm neighbour, g.
type changing struct {
	src, f, g string
	r         *chunkstore.Repo
}

func newChanging(t *testing.T, data []byte) *changing {
	t.Helper()
	base := t.TempDir()
	c := &changing{src: filepath.Join(base, "src")}
	c.f, c.g = filepath.Join(c.src, "f"), filepath.Join(c.src, "g")
	if err := os.Mkdir(c.src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.g, []byte("calm"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.r = newRepo(t, filepath.Join(base, "repo"))
	return c
}

// attempts counts, per path, the read attempts the hook saw.
type attempts struct {
	mu  sync.Mutex
	max map[string]int
}

func (a *attempts) saw(p string, attempt int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.max == nil {
		a.max = make(map[string]int)
	}
	a.max[p] = max(a.max[p], attempt)
}

func (a *attempts) of(p string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.max[p]
}

// take snapshots c.src with hook between the chunks of c.f; the clock is an
// hour ahead, so nothing is racy but what changed while it was read.
func (c *changing) take(t *testing.T, opts Options, hook func(attempt int, off int64)) (*Result, *attempts) {
	t.Helper()
	sel, err := selection.New([]string{c.src}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	opts.Selection, opts.Set, opts.Host = sel, "test", "test"
	if opts.now == nil {
		opts.now = later
	}
	var seen attempts
	opts.betweenChunks = func(p string, attempt int, off int64) {
		seen.saw(p, attempt)
		if p == c.f && hook != nil {
			hook(attempt, off)
		}
	}
	res, err := Take(context.Background(), c.r, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res, &seen
}

func writeAt(t *testing.T, p string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Error(err)
	}
}

func appendTo(t *testing.T, p string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Error(err)
	}
}

func node(t *testing.T, r *chunkstore.Repo, res *Result, p string) *tree.Node {
	t.Helper()
	n, _, err := Resolve(r, res.Record.Root, p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return n
}

func noWarnings(t *testing.T, res *Result) {
	t.Helper()
	if len(res.Record.Warnings) != 0 {
		t.Fatalf("warnings: %+v", res.Record.Warnings)
	}
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes, want %d, first difference at %d", what, len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// cachedKey returns the change cache's key for c.f after the last snapshot.
func (c *changing) cachedKey(t *testing.T) (statKey, bool) {
	t.Helper()
	cache, err := c.r.Index().OpenCache("test")
	if err != nil {
		t.Fatal(err)
	}
	data, err := cache.Get([]byte(c.src))
	if err != nil || data == nil {
		t.Fatalf("no cache record of %s: %v", c.src, err)
	}
	rec, err := decodeRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	pos := 0
	if ce := rec.find("f", &pos); ce != nil {
		return ce.key, true
	}
	return statKey{}, false
}

// A file rewritten (and chmod'ed) once, in the middle of the first read,
// is read again: the snapshot holds the new version whole, its new mode,
// and no warning.
func TestChangedOnceIsReadAgain(t *testing.T) {
	old, new := noise(1, 2<<20), noise(2, 2<<20)
	c := newChanging(t, old)
	changes := 0
	res, seen := c.take(t, Options{}, func(attempt int, off int64) {
		if changes == 0 {
			changes++
			writeAt(t, c.f, new, 0)
			if err := os.Chmod(c.f, 0o600); err != nil {
				t.Error(err)
			}
		}
	})
	noWarnings(t, res)
	if got := seen.of(c.f); got != 2 {
		t.Fatalf("%d attempts, want 2", got)
	}
	sameBytes(t, "content", content(t, c.r, res.Record.Root, c.f), new)
	n := node(t, c.r, res, c.f)
	var st unix.Stat_t
	if err := unix.Lstat(c.f, &st); err != nil {
		t.Fatal(err)
	}
	if n.Mode != 0o600 || n.MtimeSec != st.Mtim.Sec || int64(n.MtimeNsec) != st.Mtim.Nsec {
		t.Fatalf("node has mode %#o, mtime %d.%09d; the file %#o, %d.%09d", n.Mode, n.MtimeSec, n.MtimeNsec,
			st.Mode&0o7777, st.Mtim.Sec, st.Mtim.Nsec)
	}
	if string(content(t, c.r, res.Record.Root, c.g)) != "calm" {
		t.Fatal("the neighbour is wrong")
	}
}

// A file that changes during every attempt is a warning (exit 3 in the
// CLI), never a torn mix: left out when the set has no earlier version of
// it, else held as the previous snapshot had it. The change cache does not
// keep it, so the next snapshot reads it and stores it clean.
func TestChangedOnEveryAttempt(t *testing.T) {
	c := newChanging(t, noise(3, 2<<20))
	last := 0
	appendEach := func(attempt int, off int64) { // after the first chunk of each attempt
		if attempt != last {
			last = attempt
			appendTo(t, c.f, []byte(fmt.Sprintf("attempt %d\n", attempt)))
		}
	}
	res, seen := c.take(t, Options{}, appendEach)
	if n := seen.of(c.f); n != defaultReadAttempts {
		t.Fatalf("%d attempts, want %d", n, defaultReadAttempts)
	}
	ws := res.Record.Warnings
	if len(ws) != 1 || ws[0].Path != c.f || !strings.Contains(ws[0].Error, "changed while being read (3 attempts)") ||
		!strings.Contains(ws[0].Error, "left out") {
		t.Fatalf("warnings: %+v", ws)
	}
	if _, _, err := Resolve(c.r, res.Record.Root, c.f); err == nil {
		t.Fatal("a file that changed during every read is in the snapshot without an earlier version")
	}
	if string(content(t, c.r, res.Record.Root, c.g)) != "calm" {
		t.Fatal("the neighbour is wrong")
	}
	if _, ok := c.cachedKey(t); ok {
		t.Fatal("the change cache has the file")
	}

	// Calm again: read and stored whole.
	var o opens
	res = o.take(t, c.r, Options{}, c.src)
	if len(o.paths) != 1 || o.paths[0] != c.f {
		t.Fatalf("opened %q, want %s", o.paths, c.f)
	}
	clean, err := os.ReadFile(c.f)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "content once calm", content(t, c.r, res.Record.Root, c.f), clean)

	// Changed since, and changing again while read: the previous
	// snapshot's version, exactly.
	appendTo(t, c.f, []byte("since\n"))
	last = 0
	res, seen = c.take(t, Options{ReadAttempts: 2}, appendEach)
	if n := seen.of(c.f); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
	ws = res.Record.Warnings
	if len(ws) != 1 || ws[0].Path != c.f || !strings.Contains(ws[0].Error, "changed while being read (2 attempts)") ||
		!strings.Contains(ws[0].Error, "previous snapshot") {
		t.Fatalf("warnings: %+v", ws)
	}
	sameBytes(t, "content kept from the previous snapshot", content(t, c.r, res.Record.Root, c.f), clean)
	// The cache keeps the node under a key marked racy, which no stat
	// matches (the clock is an hour ahead: the mark is the change's alone).
	key, ok := c.cachedKey(t)
	if !ok || !key.racy {
		t.Fatalf("cache key %+v (present %v): not marked racy", key, ok)
	}

	// Calm again: opened, read and stored whole.
	res = o.take(t, c.r, Options{}, c.src)
	if len(o.paths) != 1 || o.paths[0] != c.f {
		t.Fatalf("opened %q, want %s", o.paths, c.f)
	}
	now, err := os.ReadFile(c.f)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "content once calm again", content(t, c.r, res.Record.Root, c.f), now)
	if key, ok := c.cachedKey(t); !ok || key.racy {
		t.Fatalf("cache key %+v (present %v) after a clean read", key, ok)
	}
}

// A file renamed over in the middle of a read: the name now has another
// inode, which is read; the snapshot holds it whole, with no warning.
func TestRenamedOverDuringRead(t *testing.T) {
	old, new := noise(5, 2<<20), noise(6, 3<<20)
	c := newChanging(t, old)
	tmp := filepath.Join(filepath.Dir(c.src), "f.tmp") // outside the snapshot
	if err := os.WriteFile(tmp, new, 0o640); err != nil {
		t.Fatal(err)
	}
	renamed := false
	res, seen := c.take(t, Options{}, func(attempt int, off int64) {
		if !renamed {
			renamed = true
			if err := os.Rename(tmp, c.f); err != nil {
				t.Error(err)
			}
		}
	})
	noWarnings(t, res)
	if !renamed || seen.of(c.f) != 2 {
		t.Fatalf("renamed %v, %d attempts, want 2", renamed, seen.of(c.f))
	}
	sameBytes(t, "content", content(t, c.r, res.Record.Root, c.f), new)
	var st unix.Stat_t
	if err := unix.Lstat(c.f, &st); err != nil {
		t.Fatal(err)
	}
	if n := node(t, c.r, res, c.f); n.Mode != 0o640 {
		t.Fatalf("mode %#o, want the new file's 0640", n.Mode)
	}
	if key, ok := c.cachedKey(t); !ok || key.ino != st.Ino {
		t.Fatalf("cache key %+v for inode %d", key, st.Ino)
	}
}

// A hard-linked file renamed over during its read is read from the inode
// its other name still has: the two names stay one consistent file.
func TestRenamedOverLinkKeepsInode(t *testing.T) {
	old, new := noise(7, 2<<20), noise(8, 2<<20)
	c := newChanging(t, old)
	other := filepath.Join(c.src, "h")
	if err := os.Link(c.f, other); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(c.src), "f.tmp") // outside the snapshot
	if err := os.WriteFile(tmp, new, 0o644); err != nil {
		t.Fatal(err)
	}
	renamed := false
	res, _ := c.take(t, Options{}, func(attempt int, off int64) {
		if !renamed {
			renamed = true
			if err := os.Rename(tmp, c.f); err != nil {
				t.Error(err)
			}
		}
	})
	noWarnings(t, res)
	sameBytes(t, "the first link", content(t, c.r, res.Record.Root, c.f), old)
	if n := node(t, c.r, res, other); n.LinkTo != "f" {
		t.Fatalf("h links to %q, want f", n.LinkTo)
	}
}

// A file truncated in the middle of a read: its size shows it, and the
// snapshot holds the shorter file.
func TestTruncatedDuringRead(t *testing.T) {
	data := noise(9, 2<<20)
	c := newChanging(t, data)
	cut := false
	res, seen := c.take(t, Options{}, func(attempt int, off int64) {
		if !cut {
			cut = true
			if err := os.Truncate(c.f, off+1000); err != nil {
				t.Error(err)
			}
		}
	})
	noWarnings(t, res)
	if seen.of(c.f) != 2 {
		t.Fatalf("%d attempts, want 2", seen.of(c.f))
	}
	now, err := os.ReadFile(c.f)
	if err != nil {
		t.Fatal(err)
	}
	if len(now) >= len(data) {
		t.Fatal("not truncated")
	}
	sameBytes(t, "content", content(t, c.r, res.Record.Root, c.f), now)
}

// A change that keeps the size and puts the mtime back leaves only the
// ctime moved: that is enough. The file is truncated, written again to its
// size with other bytes, and given its old mtime, all within the read.
func TestCtimeAloneShowsChange(t *testing.T) {
	data := noise(10, 2<<20)
	c := newChanging(t, data)
	var before unix.Stat_t
	if err := unix.Lstat(c.f, &before); err != nil {
		t.Fatal(err)
	}
	other := noise(11, len(data))
	done := false
	res, seen := c.take(t, Options{}, func(attempt int, off int64) {
		if done {
			return
		}
		done = true
		if err := os.Truncate(c.f, 0); err != nil {
			t.Error(err)
		}
		writeAt(t, c.f, other, 0)
		mtime := time.Unix(before.Mtim.Sec, before.Mtim.Nsec)
		if err := os.Chtimes(c.f, mtime, mtime); err != nil {
			t.Error(err)
		}
	})
	var after unix.Stat_t
	if err := unix.Lstat(c.f, &after); err != nil {
		t.Fatal(err)
	}
	if after.Size != before.Size || after.Mtim != before.Mtim || after.Ino != before.Ino || after.Ctim == before.Ctim {
		t.Fatal("the change was meant to move the ctime alone")
	}
	noWarnings(t, res)
	if seen.of(c.f) != 2 {
		t.Fatalf("%d attempts, want 2", seen.of(c.f))
	}
	sameBytes(t, "content", content(t, c.r, res.Record.Root, c.f), other)
}

// A sparse file whose hole is written into, and whose data is punched out,
// during a read: read again with the new layout.
func TestHolesChangeDuringRead(t *testing.T) {
	c := newChanging(t, nil)
	punch := func(p string, off, n int64) error {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}
	if err := punch(c.g, 0, 4096); err != nil {
		t.Skipf("punching holes: %v", err)
	}
	head, tail := noise(12, 1<<20), noise(13, 1<<20)
	writeAt(t, c.f, head, 0)
	writeAt(t, c.f, tail, 9<<20) // a hole of 8 MiB between; the tail is punched out
	changed := false
	res, seen := c.take(t, Options{}, func(attempt int, off int64) {
		if changed {
			return
		}
		changed = true
		writeAt(t, c.f, []byte("filled"), 5<<20)
		if err := punch(c.f, 9<<20, 1<<20); err != nil {
			t.Error(err)
		}
	})
	noWarnings(t, res)
	if seen.of(c.f) != 2 {
		t.Fatalf("%d attempts, want 2", seen.of(c.f))
	}
	want, err := os.ReadFile(c.f)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "content", content(t, c.r, res.Record.Root, c.f), want)
	ranges := dataRanges(t, c.f)
	if len(ranges) < 2 {
		t.Skipf("the filesystem reports no holes: %+v", ranges)
	}
	var data uint64
	for _, e := range node(t, c.r, res, c.f).Content {
		if !e.Blob.IsZero() {
			data += e.Length
		}
	}
	if data >= 2<<20 {
		t.Fatalf("%d bytes stored as data: the holes are not the file's now", data)
	}
}

func dataRanges(t *testing.T, p string) []fsmeta.Range {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	r, err := fsmeta.DataRanges(f, &st)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A log that a process appends to during the whole snapshot: the snapshot
// ends, after at most the configured attempts, with either a clean read
// (whole lines, a prefix of the log) or a warning, never a torn read.
func TestAppendedLogNeverHangs(t *testing.T) {
	var prefill bytes.Buffer
	for i := range 40000 {
		fmt.Fprintf(&prefill, "line %08d\n", i)
	}
	c := newChanging(t, prefill.Bytes())
	stop := make(chan struct{})
	var lines atomic.Int64
	lines.Store(40000)
	var wg sync.WaitGroup
	wg.Go(func() {
		f, err := os.OpenFile(c.f, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := fmt.Fprintf(f, "line %08d\n", lines.Load()); err != nil {
				t.Error(err)
				return
			}
			lines.Add(1)
		}
	})
	defer func() { close(stop); wg.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var prev []byte
	for i := range 3 {
		sel, err := selection.New([]string{c.src}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		var seen attempts
		before := lines.Load()
		res, err := Take(ctx, c.r, Options{Selection: sel, Set: "test", Host: "test", now: later,
			betweenChunks: func(p string, attempt int, off int64) { seen.saw(p, attempt) }})
		if err != nil {
			t.Fatalf("snapshot %d: %v", i, err)
		}
		if lines.Load() == before {
			t.Fatalf("snapshot %d: nothing was appended while it ran", i)
		}
		// (An attempt that saw the log change before it read a chunk
		// is not seen by the hook.)
		if n := seen.of(c.f); n > defaultReadAttempts {
			t.Fatalf("snapshot %d: %d attempts", i, n)
		}
		switch ws := res.Record.Warnings; {
		case len(ws) == 0:
			got := content(t, c.r, res.Record.Root, c.f)
			checkLog(t, got)
			prev = got
		case len(ws) == 1 && ws[0].Path == c.f && strings.Contains(ws[0].Error, "changed while being read"):
			n, _, err := Resolve(c.r, res.Record.Root, c.f)
			switch {
			case prev == nil && err == nil:
				t.Fatalf("snapshot %d holds a file that changed during every read, with no earlier version", i)
			case prev != nil && err != nil:
				t.Fatalf("snapshot %d lost the earlier version: %v", i, err)
			case prev != nil && n.Size() != uint64(len(prev)):
				t.Fatalf("snapshot %d holds %d bytes, the earlier version %d", i, n.Size(), len(prev))
			case prev != nil:
				sameBytes(t, "the earlier version", content(t, c.r, res.Record.Root, c.f), prev)
			}
		default:
			t.Fatalf("snapshot %d: warnings %+v", i, ws)
		}
	}
}

// checkLog fails unless log is whole numbered lines from 0 on.
func checkLog(t *testing.T, log []byte) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(log))
	i := 0
	for sc.Scan() {
		if want := fmt.Sprintf("line %08d", i); sc.Text() != want {
			t.Fatalf("line %d of the snapshot's log is %q", i, sc.Text())
		}
		i++
	}
	if len(log) > 0 && log[len(log)-1] != '\n' {
		t.Fatal("the snapshot's log ends in the middle of a line")
	}
}

// The warning is an fsmeta.ErrChanged for callers that tell them apart.
func TestChangedErrorIsErrChanged(t *testing.T) {
	for _, kept := range []bool{false, true} {
		err := error(&changedError{attempts: 3, kept: kept})
		if !errors.Is(err, fsmeta.ErrChanged) || !strings.HasPrefix(err.Error(), "changed while being read (3 attempts); ") {
			t.Fatalf("%v", err)
		}
	}
}

// A file changed within the last tick is read only once the tick is over,
// so that a change during the read cannot leave the ctime as it was.
func TestRecentChangeWaitsOutTick(t *testing.T) {
	c := newChanging(t, noise(14, 1<<20))
	var touched time.Time
	var st unix.Stat_t
	sel, err := selection.New([]string{c.src}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	var first time.Time
	res, err := Take(context.Background(), c.r, Options{Selection: sel, Set: "test", Host: "test", now: later,
		opened: func(p string) {
			if p == c.f {
				writeAt(t, c.f, []byte{1}, 0)
				if err := unix.Stat(c.f, &st); err != nil {
					t.Error(err)
				}
				touched = time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
			}
		},
		betweenChunks: func(p string, attempt int, off int64) {
			if p == c.f && first.IsZero() {
				first = time.Now()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	noWarnings(t, res)
	if touched.IsZero() || first.IsZero() {
		t.Fatal("the file was not read")
	}
	if d := first.Sub(touched); d < stampTick {
		t.Fatalf("the first chunk was read %v after the file's ctime, before its tick (%v) was over", d, stampTick)
	}
}
