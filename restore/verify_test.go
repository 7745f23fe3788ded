package restore_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot/testtree"
)

// TestVerify: a restored tree verifies clean; each kind of drift is
// reported once, with the attribute that differs; an extra file under an
// excluded path is not.
func TestVerify(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	src := filepath.Join(base, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	testtree.Every(t, src)
	if err := os.MkdirAll(filepath.Join(src, "cache"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := openRepo(t)
	s := take(t, r, []string{src + "/cache/"}, src)
	target := filepath.Join(base, "target")
	t.Cleanup(func() { testtree.ClearFlags(t, target) })
	if _, err := restore.Run(context.Background(), r, s.Record, restore.Options{Target: target}); err != nil {
		t.Fatal(err)
	}
	verify := func() map[string]string {
		t.Helper()
		got := map[string]string{}
		st, err := restore.Verify(context.Background(), r, s.Record, target, func(d restore.Difference) error {
			got[strings.TrimPrefix(d.Path, src)] = string(d.Kind) + " " + strings.Join(d.Attrs, ",")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if st.Entries < 40 {
			t.Fatalf("verify looked at %d entries", st.Entries)
		}
		return got
	}
	if got := verify(); len(got) != 0 {
		t.Fatalf("a fresh restore differs: %v", got)
	}

	live := filepath.Join(target, src)
	at := func(p string) string { return filepath.Join(live, p) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(at("files/small"), 0o600))
	// Same size, mtime set back: only the content tells.
	fi, err := os.Stat(at("files/random-3m"))
	must(err)
	f, err := os.OpenFile(at("files/random-3m"), os.O_WRONLY, 0)
	must(err)
	_, err = f.WriteAt([]byte("drift"), 2<<20)
	must(err)
	f.Close()
	must(os.Chtimes(at("files/random-3m"), fi.ModTime(), fi.ModTime()))
	must(os.Remove(at("tree/a/b/c/leaf")))
	must(os.WriteFile(at("tree/extra"), []byte("not in the snapshot"), 0o644))
	must(os.MkdirAll(at("cache"), 0o755))
	must(os.WriteFile(at("cache/excluded"), []byte("excluded: not reported"), 0o644))
	must(unix.Lsetxattr(at("files/empty"), "user.new", []byte("v"), 0))
	lt, err := os.Lstat(at("links/dangling"))
	must(err)
	must(os.Remove(at("links/dangling")))
	must(os.Symlink("elsewhere", at("links/dangling")))
	ts := unix.NsecToTimespec(lt.ModTime().UnixNano())
	must(unix.UtimesNanoAt(unix.AT_FDCWD, at("links/dangling"), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	// A hard link broken by a copy with the same content and metadata.
	hf, err := os.Stat(at("hard/two"))
	must(err)
	must(os.Remove(at("hard/two")))
	must(os.WriteFile(at("hard/two"), []byte("three names\n"), 0o640))
	must(os.Chown(at("hard/two"), 1234, 5678))
	must(os.Chtimes(at("hard/two"), hf.ModTime(), hf.ModTime()))
	must(os.Remove(at("files/private")))
	must(os.Mkdir(at("files/private"), 0o600))

	want := map[string]string{
		"/files/small":     "U mode",
		"/files/random-3m": "M content",
		"/tree/a/b/c/leaf": "- ",
		"/tree/extra":      "+ ",
		"/files/empty":     "U xattrs",
		"/links/dangling":  "U target",
		"/hard/two":        "U link",
		"/files/private":   "T dir instead of file",
		"/tree/a/b/c":      "U mtime",
		"/tree":            "U mtime",
		"/links":           "U mtime",
		"/hard":            "U mtime",
		"/files":           "U mtime",
		"":                 "U mtime", // src itself: cache/ was made in it
	}
	got := verify()
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if want[k] != got[k] {
			t.Errorf("%q: got %q, want %q", k, got[k], want[k])
		}
	}
	for k, w := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("%q: not reported, want %q", k, w)
		}
	}
}
