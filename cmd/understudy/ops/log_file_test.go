package ops

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// logDirNames returns the names in dir, sorted.
func logDirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestLogDaily(t *testing.T) {
	for _, tc := range []struct{ file, before, after string }{
		{"understudy.log", "understudy-2026-03-01.log", "understudy-2026-03-02.log"},
		{"understudy", "understudy-2026-03-01", "understudy-2026-03-02"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "var", "log")
			clock := newLogClock(time.Date(2026, 3, 1, 23, 59, 59, 5e8, time.Local))
			l := openTestLog(t, LogOptions{File: filepath.Join(dir, tc.file), KeepDays: 14, Now: clock.Now})
			l.Logger().Info("before midnight")
			clock.Add(time.Second)
			l.Logger().Info("after midnight")
			l.Logger().Info("still the new day")
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if got, want := logDirNames(t, dir), []string{tc.before, tc.after}; !slices.Equal(got, want) {
				t.Fatalf("files %q, want %q", got, want)
			}
			lines := readLogLines(t, filepath.Join(dir, tc.before))
			if len(lines) != 1 {
				t.Fatalf("%s: %q, want one line", tc.before, lines)
			}
			checkTextLine(t, lines[0], "INFO", "before midnight")
			lines = readLogLines(t, filepath.Join(dir, tc.after))
			if len(lines) != 2 {
				t.Fatalf("%s: %q, want two lines", tc.after, lines)
			}
			checkTextLine(t, lines[0], "INFO", "after midnight")
			checkTextLine(t, lines[1], "INFO", "still the new day")
		})
	}
}

// numberedLine is a line logged by the rotation tests.
var numberedLine = regexp.MustCompile(`^time=\S+ level=INFO msg="line of the test" w=(\d+) i=(\d+) pad=x+$`)

// logNumbered logs n numbered lines of about 100 bytes as writer w.
func logNumbered(l *Log, w, n int) {
	for i := range n {
		l.Logger().Info("line of the test", "w", w, "i", i, "pad", strings.Repeat("x", 20+i%17))
	}
}

// rotationOrder is the order of a rotated file of understudy.log: its
// time, then its counter; the current file, understudy.log, is last.
func rotationOrder(name string) string {
	rest, ok := strings.CutPrefix(name, "understudy.log.")
	if !ok {
		return "~"
	}
	ts, n, _ := strings.Cut(rest, ".")
	c, _ := strconv.Atoi(n)
	return fmt.Sprintf("%s.%09d", ts, c)
}

// readRotated checks every file in dir is understudy.log or one of its
// rotated files, not empty, at most maxSize bytes, made only of numbered
// lines, and returns (w, i) of each line, in rotation order.
func readRotated(t *testing.T, dir string, maxSize int64) [][2]int {
	t.Helper()
	names := logDirNames(t, dir)
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(rotationOrder(a), rotationOrder(b)) })
	rotated := regexp.MustCompile(`^understudy\.log(\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d(\.[1-9]\d*)?)?$`)
	var got [][2]int
	for _, name := range names {
		if !rotated.MatchString(name) {
			t.Errorf("unexpected file %s", name)
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() == 0 || fi.Size() > maxSize {
			t.Errorf("%s: %d bytes, want 1 to %d", name, fi.Size(), maxSize)
		}
		for _, line := range readLogLines(t, filepath.Join(dir, name)) {
			m := numberedLine.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("%s: torn or foreign line %q", name, line)
			}
			w, _ := strconv.Atoi(m[1])
			i, _ := strconv.Atoi(m[2])
			got = append(got, [2]int{w, i})
		}
	}
	return got
}

func TestLogSizeRotation(t *testing.T) {
	dir := t.TempDir()
	const maxSize, n = 2048, 300
	clock := newLogClock(time.Date(2026, 3, 1, 10, 0, 0, 0, time.Local)) // every rotation in one second: counters
	l := openTestLog(t, LogOptions{File: filepath.Join(dir, "understudy.log"), MaxSize: maxSize, KeepDays: 14, Now: clock.Now})
	logNumbered(l, 0, n)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	names := logDirNames(t, dir)
	if len(names) < n*100/maxSize || !slices.Contains(names, "understudy.log.2026-03-01T10-00-00") ||
		!slices.Contains(names, "understudy.log.2026-03-01T10-00-00.1") {
		t.Errorf("files %q, want understudy.log and at least %d rotated files", names, n*100/maxSize)
	}
	got := readRotated(t, dir, maxSize)
	if len(got) != n {
		t.Fatalf("%d lines, want %d", len(got), n)
	}
	for i, wi := range got {
		if wi != [2]int{0, i} {
			t.Fatalf("line %d is %v: lost, repeated or out of order", i, wi)
		}
	}
}

// TestLogSharedFile has two logs of one file, as a daemon and a manual run
// have, written at once by several goroutines each, rotating by size.
func TestLogSharedFile(t *testing.T) {
	dir := t.TempDir()
	const maxSize, writers, n = 4096, 4, 250
	var logs [2]*Log
	for i := range logs {
		logs[i] = openTestLog(t, LogOptions{File: filepath.Join(dir, "understudy.log"), MaxSize: maxSize})
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() { logNumbered(logs[w%2], w, n) })
	}
	wg.Wait()
	for _, l := range logs {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[[2]int]int{}
	for _, wi := range readRotated(t, dir, maxSize) {
		seen[wi]++
	}
	for w := range writers {
		for i := range n {
			if c := seen[[2]int{w, i}]; c != 1 {
				t.Errorf("writer %d line %d found %d times", w, i, c)
			}
		}
	}
	if len(seen) != writers*n {
		t.Errorf("%d distinct lines, want %d", len(seen), writers*n)
	}
}

// TestLogMovedAway renames the file under the log, as logrotate does: the
// log writes to the file at the path again within a second.
func TestLogMovedAway(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "understudy.log")
	clock := newLogClock(time.Date(2026, 3, 1, 10, 0, 0, 0, time.Local))
	l := openTestLog(t, LogOptions{File: path, MaxSize: 1 << 20, Now: clock.Now})
	l.Logger().Info("one")
	if err := os.Rename(path, path+".0"); err != nil {
		t.Fatal(err)
	}
	clock.Add(logCheckEvery / 2)
	l.Logger().Info("two")
	clock.Add(logCheckEvery)
	l.Logger().Info("three")
	l.Close()
	for name, want := range map[string][]string{path + ".0": {"one", "two"}, path: {"three"}} {
		lines := readLogLines(t, name)
		if len(lines) != len(want) {
			t.Fatalf("%s: %q, want messages %q", name, lines, want)
		}
		for i, msg := range want {
			checkTextLine(t, lines[i], "INFO", msg)
		}
	}
}

func TestLogExpiry(t *testing.T) {
	now := time.Date(2026, 3, 20, 12, 0, 0, 0, time.Local)
	old, recent := now.Add(-20*24*time.Hour), now.Add(-2*24*time.Hour)
	files := map[string]time.Time{
		"understudy.log.2026-02-28T10-00-00":     old,
		"understudy.log.2026-02-28T10-00-00.3":   old,
		"understudy-2026-02-28.log":              old,
		"understudy.log.2026-03-18T10-00-00":     recent,
		"understudy-2026-03-18.log":              recent,
		"understudy.log":                         old, // the current file in size mode
		"understudy-2026-03-20.log":              old, // the current file in daily mode
		"other.log.2026-02-28T10-00-00":          old,
		"other-2026-02-28.log":                   old,
		"xunderstudy-2026-02-28.log":             old,
		"understudy.log.old":                     old,
		"understudy.log.2026-02-28T10-00-00.bak": old,
		"understudy.log.2026-02-28T10-00-00.03":  old,
		"understudy.log.2026-02-28T10-00-00.":    old,
		"understudy.log.2026-02-30T10-00-00":     old,
		"understudy.log.2026-2-28T10-00-00":      old,
		"understudy-2026-02-28.log.gz":           old,
		"understudy-2026-13-01.log":              old,
		"understudy-2026-02-28":                  old,
	}
	expired := []string{"understudy.log.2026-02-28T10-00-00", "understudy.log.2026-02-28T10-00-00.3", "understudy-2026-02-28.log"}
	for _, tc := range []struct {
		name     string
		maxSize  int64
		keepDays int
		deleted  []string
	}{
		{"daily", 0, 14, expired},
		{"size", 1 << 20, 14, append(slices.Clone(expired), "understudy-2026-03-20.log")},
		{"keep 30 days", 1 << 20, 30, nil},
		{"keep all", 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, mtime := range files {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, []byte("x\n"), 0o640); err != nil {
					t.Fatal(err)
				}
				if err := os.Chtimes(p, mtime, mtime); err != nil {
					t.Fatal(err)
				}
			}
			// A directory and a file below one, named as expired files.
			sub := filepath.Join(dir, "understudy.log.2026-02-27T10-00-00")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(sub, "understudy.log.2026-02-28T10-00-00"), nil, 0o640); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{filepath.Join(sub, "understudy.log.2026-02-28T10-00-00"), sub} {
				if err := os.Chtimes(p, old, old); err != nil {
					t.Fatal(err)
				}
			}

			l := openTestLog(t, LogOptions{File: filepath.Join(dir, "understudy.log"), MaxSize: tc.maxSize,
				KeepDays: tc.keepDays, Now: func() time.Time { return now }})
			l.Close()
			want := []string{filepath.Base(sub)}
			for name := range files {
				if !slices.Contains(tc.deleted, name) {
					want = append(want, name)
				}
			}
			slices.Sort(want)
			if got := logDirNames(t, dir); !slices.Equal(got, want) {
				t.Errorf("left\n%q\nwant\n%q", got, want)
			}
			if _, err := os.Stat(filepath.Join(sub, "understudy.log.2026-02-28T10-00-00")); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestLogExpiryAtRotation: files grown old while the log is open are
// deleted at the next rotation, size or daily.
func TestLogExpiryAtRotation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		maxSize int64
		stale   string
		fresh   string // a file the rotation made
	}{
		{"size", 1024, "understudy.log.2026-01-01T00-00-00", "understudy.log.2026-03-21T12-00-00"},
		{"daily", 0, "understudy-2026-01-01.log", "understudy-2026-03-21.log"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clock := newLogClock(time.Date(2026, 3, 20, 12, 0, 0, 0, time.Local))
			l := openTestLog(t, LogOptions{File: filepath.Join(dir, "understudy.log"), MaxSize: tc.maxSize,
				KeepDays: 14, Now: clock.Now})
			stale := filepath.Join(dir, tc.stale)
			if err := os.WriteFile(stale, nil, 0o640); err != nil {
				t.Fatal(err)
			}
			mtime := clock.Now().Add(-15 * 24 * time.Hour)
			if err := os.Chtimes(stale, mtime, mtime); err != nil {
				t.Fatal(err)
			}
			logNumbered(l, 0, 5)
			if _, err := os.Stat(stale); err != nil {
				t.Fatalf("deleted before a rotation: %v", err)
			}
			clock.Add(24 * time.Hour)
			logNumbered(l, 0, 10)
			l.Close()
			if _, err := os.Stat(stale); !os.IsNotExist(err) {
				t.Errorf("%s is still there after a rotation (%v)", tc.stale, err)
			}
			if _, err := os.Stat(filepath.Join(dir, tc.fresh)); err != nil {
				t.Error(err)
			}
		})
	}
}
