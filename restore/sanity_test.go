package restore_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot/testtree"
)

const (
	goodPasswd = "root:x:0:0:root:/root:/bin/sh\n# a comment\n\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
	goodGroup  = "root:x:0:\ndaemon:x:1:\n"
	goodShadow = "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
)

// accounts is an etc directory with the three account files; an empty
// string leaves a file out.
func accounts(passwd, group, shadow string) testtree.Dir {
	d := testtree.Dir{}
	if passwd != "" {
		d["passwd"] = testtree.File{Content: []byte(passwd)}
	}
	if group != "" {
		d["group"] = testtree.File{Content: []byte(group)}
	}
	if shadow != "" {
		d["shadow"] = testtree.File{Content: []byte(shadow), Mode: 0o640}
	}
	return d
}

func TestSanityBuiltInChecks(t *testing.T) {
	testtree.NeedRoot(t)
	r := openRepo(t)
	cases := []struct {
		name     string
		tree     testtree.Dir
		paths    []string
		excludes []string
		want     []string
	}{
		{name: "good files pass", tree: testtree.Dir{"etc": accounts(goodPasswd, goodGroup, goodShadow)},
			paths: []string{"/etc"}},
		{name: "short passwd line", tree: testtree.Dir{"etc": accounts(goodPasswd+"bad:x:2:2\nworse:x\n", goodGroup, goodShadow)},
			paths: []string{"/etc"}, want: []string{"/etc/passwd: line 5 has 4 fields, not 7"}},
		{name: "uid not a number", tree: testtree.Dir{"etc": accounts("root:x:zero:0:root:/root:/bin/sh\n", goodGroup, goodShadow)},
			paths: []string{"/etc"}, want: []string{`/etc/passwd: line 1: uid "zero" is not a number`}},
		{name: "no root with uid 0", tree: testtree.Dir{"etc": accounts("root:x:1000:0:root:/root:/bin/sh\ntoor:x:0:0::/:/bin/sh\n", goodGroup, goodShadow)},
			paths: []string{"/etc"}, want: []string{"/etc/passwd: no root entry with uid 0"}},
		{name: "no group 0", tree: testtree.Dir{"etc": accounts(goodPasswd, "daemon:x:1:\n", goodShadow)},
			paths: []string{"/etc"}, want: []string{"/etc/group: no group with gid 0"}},
		{name: "shadow with 8 fields", tree: testtree.Dir{"etc": accounts(goodPasswd, goodGroup, "root:*:19000:0:99999:7::\n")},
			paths: []string{"/etc"}, want: []string{"/etc/shadow: line 1 has 8 fields, not 9"}},
		{name: "no root in shadow", tree: testtree.Dir{"etc": accounts(goodPasswd, goodGroup, "daemon:*:19000:0:99999:7:::\n")},
			paths: []string{"/etc"}, want: []string{"/etc/shadow: no root entry"}},
		{name: "missing shadow", tree: testtree.Dir{"etc": accounts(goodPasswd, goodGroup, "")},
			paths: []string{"/etc"}, want: []string{"/etc/shadow is in the scope but missing from the snapshot"}},
		{name: "passwd a symlink", tree: testtree.Dir{"etc": testtree.Dir{"passwd": testtree.Symlink{Target: "passwd.real"},
			"passwd.real": testtree.File{Content: []byte(goodPasswd)}, "group": testtree.File{Content: []byte(goodGroup)}}},
			paths: []string{"/etc/passwd", "/etc/group"}, want: []string{"/etc/passwd is a symlink, not a regular file"}},
		{name: "holes read as zeros", tree: testtree.Dir{"etc": testtree.Dir{"passwd": testtree.File{Content: []byte(goodPasswd), Size: 1 << 20}}},
			paths: []string{"/etc/passwd"}, want: []string{"/etc/passwd: line 5 has 1 fields, not 7"}},
		{name: "one problem per file", tree: testtree.Dir{"etc": accounts("a:b\nc:d\n", "", goodShadow)},
			paths: []string{"/etc"}, want: []string{"/etc/passwd: line 1 has 2 fields, not 7", "/etc/group is in the scope but missing from the snapshot"}},
		{name: "whole root without etc", tree: testtree.Dir{"usr": testtree.Dir{}},
			paths: []string{"/"}, want: []string{
				"/etc/passwd is in the scope but missing from the snapshot",
				"/etc/group is in the scope but missing from the snapshot",
				"/etc/shadow is in the scope but missing from the snapshot",
			}},
		{name: "outside the scope", tree: testtree.Dir{"etc": accounts("broken\n", "", ""), "usr": testtree.Dir{"bin": testtree.Dir{}}},
			paths: []string{"/usr"}},
		{name: "only passwd listed", tree: testtree.Dir{"etc": accounts(goodPasswd, "broken\n", "")},
			paths: []string{"/etc/passwd"}},
		{name: "shadow excluded", tree: testtree.Dir{"etc": accounts(goodPasswd, goodGroup, "")},
			paths: []string{"/etc"}, excludes: []string{"shadow"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			testtree.Build(t, root, c.tree)
			s := takeAt(t, r, root, c.excludes, c.paths...)
			got, err := restore.Sanity(context.Background(), r, s.ID, s.Record, nil, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %q\nwant %q", got, c.want)
			}
		})
	}
}

// TestSanityUserChecks runs real commands against staging views of a
// real snapshot, and leaves no staging directory behind.
func TestSanityUserChecks(t *testing.T) {
	testtree.NeedRoot(t)
	r := openRepo(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{
		"etc": accounts(goodPasswd, goodGroup, goodShadow),
		"locked": testtree.Directory{Flags: testtree.FlagImmutable, Entries: testtree.Dir{
			"kept": testtree.File{Content: []byte("cannot be removed\n"), Flags: testtree.FlagImmutable},
		}},
	})
	s := takeAt(t, r, root, nil, "/etc", "/locked")
	sh := func(script string) []string { return []string{"/bin/sh", "-c", script} }
	checks := []restore.SanityCheck{
		{Name: "has daemon", Paths: []string{"/etc/passwd"},
			Command: sh(`grep -q '^daemon:' etc/passwd || { echo "no daemon user" >&2; exit 1; }`)},
		{Name: "has alice", Paths: []string{"/etc/passwd"},
			Command: sh(`echo "looking for alice"; grep -q '^alice:' etc/passwd || { echo "no alice user" >&2; exit 1; }`)},
		{Name: "environment", Paths: []string{"/etc/passwd"}, Command: sh(`
			[ "$UNDERSTUDY_SNAPSHOT" = "` + s.ID.String() + `" ] || { echo "snapshot $UNDERSTUDY_SNAPSHOT"; exit 1; }
			[ "$(pwd -P)" = "$(cd "$UNDERSTUDY_STAGING" && pwd -P)" ] || { echo "cwd $(pwd) is not $UNDERSTUDY_STAGING"; exit 1; }
			[ -f etc/passwd ] || { echo "passwd not restored"; exit 1; }
			[ ! -e etc/group ] || { echo "group restored though not listed"; exit 1; }`)},
		{Name: "nothing staged", Command: sh(`[ -z "$(ls -A)" ] || { echo "staging holds $(ls -A)"; exit 1; }`)},
		// The restore sets the immutable flags: removal must clear them.
		{Name: "immutable", Paths: []string{"/locked"},
			Command: sh(`! rm -f locked/kept 2>/dev/null || { echo "locked/kept was removable"; exit 1; }`)},
		{Name: "missing command", Command: []string{"/nonexistent/check"}},
		{Name: "relative path", Paths: []string{"etc/passwd"}, Command: []string{"true"}},
	}
	parent := t.TempDir()
	got, err := restore.Sanity(context.Background(), r, s.ID, s.Record, checks, parent)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`check "has alice" failed (exit status 1): no alice user`,
		`check "missing command" failed (fork/exec /nonexistent/check: no such file or directory)`,
		`check "relative path": path "etc/passwd" is not absolute, as the snapshot lists it`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	left, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("staging directories left in %s: %v", parent, left)
	}
}

// TestSanityTimeout: the shell waits for a child that holds the output
// pipe, so the whole process group must be killed at the timeout; killing
// the shell alone would leave Sanity waiting for the pipe.
func TestSanityTimeout(t *testing.T) {
	testtree.NeedRoot(t)
	r := openRepo(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{"usr": testtree.Dir{}})
	s := takeAt(t, r, root, nil, "/usr")
	check := restore.SanityCheck{Name: "slow", Timeout: 200 * time.Millisecond,
		Command: []string{"/bin/sh", "-c", `echo waiting; sleep 30 & wait`}}
	parent := t.TempDir()
	start := time.Now()
	got, err := restore.Sanity(context.Background(), r, s.ID, s.Record, []restore.SanityCheck{check}, parent)
	if err != nil {
		t.Fatal(err)
	}
	// Well under the 2s the package waits for pipes after a kill.
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("the check took %v to stop; its children outlived the timeout", d)
	}
	want := []string{`check "slow" failed (timed out after 200ms): waiting`}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if left, _ := os.ReadDir(parent); len(left) != 0 {
		t.Errorf("staging directories left: %v", left)
	}
}

// TestSanityStagingInTempDir: an empty staging parent means os.TempDir.
func TestSanityStagingInTempDir(t *testing.T) {
	testtree.NeedRoot(t)
	r := openRepo(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{"etc": accounts(goodPasswd, goodGroup, goodShadow)})
	s := takeAt(t, r, root, nil, "/etc")
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	check := restore.SanityCheck{Name: "where", Paths: []string{"/etc"},
		Command: []string{"/bin/sh", "-c", `[ "$(dirname "$UNDERSTUDY_STAGING")" = "$TMPDIR" ] && [ -f etc/shadow ] || { echo "staged in $UNDERSTUDY_STAGING"; exit 1; }`}}
	got, err := restore.Sanity(context.Background(), r, s.ID, s.Record, []restore.SanityCheck{check}, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("problems: %q", got)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "staging-*")); len(left) != 0 {
		t.Errorf("staging directories left: %v", left)
	}
}

// TestSanityCancelled: a cancelled context is an error, not a problem.
func TestSanityCancelled(t *testing.T) {
	testtree.NeedRoot(t)
	r := openRepo(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{"etc": accounts(goodPasswd, goodGroup, goodShadow)})
	s := takeAt(t, r, root, nil, "/etc")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	check := restore.SanityCheck{Name: "never", Command: []string{"true"}}
	if got, err := restore.Sanity(ctx, r, s.ID, s.Record, []restore.SanityCheck{check}, t.TempDir()); err == nil {
		t.Fatalf("no error; problems %q", got)
	}
}
