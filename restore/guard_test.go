package restore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/testtree"
)

// guardTree is a root with account files and 100 data files.
func guardTree(t *testing.T, root string) {
	t.Helper()
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	data := testtree.Dir{}
	for i := range 100 {
		data[fmt.Sprintf("f%03d", i)] = testtree.File{Content: []byte(fmt.Sprintf("file %d\n", i))}
	}
	testtree.Build(t, root, testtree.Dir{
		"etc": testtree.Dir{
			"passwd": testtree.File{Content: []byte("root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")},
			"group":  testtree.File{Content: []byte("root:x:0:\ndaemon:x:1:\n")},
			"shadow": testtree.File{Content: []byte("root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"), Mode: 0o640},
		},
		"data": data,
	})
}

func refusedFor(t *testing.T, err error, want string) {
	t.Helper()
	var refused *restore.Refused
	if !errors.As(err, &refused) {
		t.Fatalf("got %v, want a refusal for %q", err, want)
	}
	if !strings.Contains(refused.Error(), want) {
		t.Fatalf("refusal %q does not say %q", refused.Error(), want)
	}
}

func TestMassChangeGuard(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	root := filepath.Join(base, "root")
	guardTree(t, root)
	r := openRepo(t)
	target := filepath.Join(base, "target")
	must(t, os.Mkdir(target, 0o755))
	sb := &restore.Standby{DB: r.Index(), Loader: r, StagingDir: base}
	apply := func(res *snapshot.Result, force bool) error {
		_, err := sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: listed(t, r, res), Guard: true, Force: force})
		return err
	}
	s1 := takeAt(t, r, root, nil, "/etc", "/data")
	must(t, apply(s1, false))

	// 30 of 103 files deleted: over the 20% limit.
	for i := range 30 {
		must(t, os.Remove(filepath.Join(root, fmt.Sprintf("data/f%03d", i))))
	}
	s2 := takeAt(t, r, root, nil, "/etc", "/data")
	refusedFor(t, apply(s2, false), "delete 30 of 103 files")
	mustContent(t, filepath.Join(target, "data/f000"), "file 0\n")
	st, err := r.Index().Standby("test")
	must(t, err)
	key, _ := restore.TargetKey(target)
	if ts := st.Targets[key]; ts.Applied != s1.ID || ts.MidApply() || !strings.Contains(ts.LastError, "refused") {
		t.Errorf("state after a refusal: %+v", ts)
	}
	must(t, apply(s2, true))
	if _, err := os.Stat(filepath.Join(target, "data/f000")); !os.IsNotExist(err) {
		t.Fatalf("--force did not apply the deletions: %v", err)
	}

	// A higher limit lets the same kind of change through.
	for i := 30; i < 55; i++ {
		must(t, os.Remove(filepath.Join(root, fmt.Sprintf("data/f%03d", i))))
	}
	s3 := takeAt(t, r, root, nil, "/etc", "/data")
	refusedFor(t, apply(s3, false), "delete 25 of 73 files")
	must(t, r.Index().UpdateStandby("test", func(st *index.StandbyState) error {
		limit := 40.0
		st.MaxDeleted = &limit
		return nil
	}))
	must(t, apply(s3, false))

	// A broken /etc/passwd, whatever the share.
	must(t, os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0\n"), 0o644))
	s4 := takeAt(t, r, root, nil, "/etc", "/data")
	refusedFor(t, apply(s4, false), "/etc/passwd")
	mustContent(t, filepath.Join(target, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")

	// No root with uid 0.
	must(t, os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:1000:0:root:/root:/bin/sh\n"), 0o644))
	s5 := takeAt(t, r, root, nil, "/etc", "/data")
	refusedFor(t, apply(s5, false), "/etc/passwd")

	// A user's sanity check against a staging view.
	must(t, os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644))
	must(t, r.Index().UpdateStandby("test", func(st *index.StandbyState) error {
		st.Checks = []index.GuardCheck{{Name: "daemon user", Command: []string{"/bin/sh", "-c", `grep -q ^daemon: "$UNDERSTUDY_STAGING/etc/passwd"`}, Paths: []string{"/etc/passwd"}}}
		return nil
	}))
	s6 := takeAt(t, r, root, nil, "/etc", "/data")
	refusedFor(t, apply(s6, false), `check "daemon user" failed`)
	entries, err := os.ReadDir(base)
	must(t, err)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "staging-") {
			t.Errorf("staging view %s left behind", e.Name())
		}
	}
}

func TestHeldAndDelayedSnapshotsAreNotApplied(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	root := filepath.Join(base, "root")
	guardTree(t, root)
	r := openRepo(t)
	target := filepath.Join(base, "target")
	must(t, os.Mkdir(target, 0o755))
	now := time.Now()
	sb := &restore.Standby{DB: r.Index(), Loader: r, StagingDir: base, Now: func() time.Time { return now }}
	auto := func() (*restore.AutoResult, error) { return sb.Auto(context.Background(), "test", target) }

	s1 := takeAt(t, r, root, nil, "/etc", "/data")
	now = time.Now()
	res, err := auto()
	must(t, err)
	if res.Applied == nil || res.Applied.Snapshot != s1.ID {
		t.Fatalf("the first automatic apply: %+v", res)
	}

	must(t, os.WriteFile(filepath.Join(root, "data/f000"), []byte("changed\n"), 0o644))
	s2 := takeAt(t, r, root, nil, "/etc", "/data")
	must(t, r.Index().UpdateStandby("test", func(st *index.StandbyState) error { st.Held = now; return nil }))
	_, err = auto()
	refusedFor(t, err, "held")
	mustContent(t, filepath.Join(target, "data/f000"), "file 0\n")
	// By hand it still applies.
	_, err = sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: listed(t, r, s2), Guard: true})
	must(t, err)
	mustContent(t, filepath.Join(target, "data/f000"), "changed\n")
	must(t, r.Index().UpdateStandby("test", func(st *index.StandbyState) error {
		st.Held = time.Time{}
		st.ApplyDelay = "4h"
		return nil
	}))

	must(t, os.WriteFile(filepath.Join(root, "data/f000"), []byte("corrupted on the primary\n"), 0o644))
	s3 := takeAt(t, r, root, nil, "/etc", "/data")
	now = time.Now()
	res, err = auto()
	must(t, err)
	if res.Applied != nil || res.Waiting != s3.ID || !res.DueAt.Equal(s3.Record.Time.Add(4*time.Hour)) {
		t.Fatalf("a snapshot younger than the delay: %+v", res)
	}
	mustContent(t, filepath.Join(target, "data/f000"), "changed\n")
	now = now.Add(5 * time.Hour)
	res, err = auto()
	must(t, err)
	if res.Applied == nil || res.Applied.Snapshot != s3.ID {
		t.Fatalf("a snapshot past the delay: %+v", res)
	}
	mustContent(t, filepath.Join(target, "data/f000"), "corrupted on the primary\n")
	res, err = auto()
	must(t, err)
	if !res.UpToDate {
		t.Fatalf("nothing new: %+v", res)
	}
}

func TestApplyNeverFollowsASwappedDirectory(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	root := filepath.Join(base, "root")
	must(t, os.Mkdir(root, 0o755))
	testtree.Build(t, root, testtree.Dir{"srv": testtree.Dir{
		"d": testtree.Dir{"f": testtree.File{Content: []byte("one")}},
	}})
	r := openRepo(t)
	target := filepath.Join(base, "target")
	must(t, os.Mkdir(target, 0o755))
	outside := filepath.Join(base, "outside")
	must(t, os.Mkdir(outside, 0o755))
	must(t, os.WriteFile(filepath.Join(outside, "f"), []byte("victim"), 0o644))
	sb := &restore.Standby{DB: r.Index(), Loader: r}
	s1 := takeAt(t, r, root, nil, "/srv")
	_, err := sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: listed(t, r, s1)})
	must(t, err)

	// The attacker swaps the directory for a symlink to outside; the
	// next snapshot changes d/f and adds d/new.
	must(t, os.RemoveAll(filepath.Join(target, "srv/d")))
	must(t, os.Symlink(outside, filepath.Join(target, "srv/d")))
	must(t, os.WriteFile(filepath.Join(root, "srv/d/f"), []byte("two"), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "srv/d/new"), []byte("new"), 0o644))
	s2 := takeAt(t, r, root, nil, "/srv")
	_, err = sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: listed(t, r, s2)})
	must(t, err)
	mustContent(t, filepath.Join(outside, "f"), "victim")
	if _, err := os.Lstat(filepath.Join(outside, "new")); !os.IsNotExist(err) {
		t.Errorf("apply wrote through the symlink: %v", err)
	}
	outsideUntouched(t, base, "root", "target", "outside")
	fi, err := os.Lstat(filepath.Join(target, "srv/d"))
	must(t, err)
	if !fi.IsDir() {
		t.Errorf("srv/d is still a %v", fi.Mode())
	}
	mustContent(t, filepath.Join(target, "srv/d/f"), "two")
	mustContent(t, filepath.Join(target, "srv/d/new"), "new")
}

// TestApplyToARecreatedTarget: a target directory removed and made anew at
// the same path holds nothing of what the state says was applied there,
// so the same snapshot is applied in full again.
func TestApplyToARecreatedTarget(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	root := filepath.Join(base, "root")
	guardTree(t, root)
	r := openRepo(t)
	target := filepath.Join(base, "target")
	must(t, os.Mkdir(target, 0o755))
	sb := &restore.Standby{DB: r.Index(), Loader: r}
	s1 := listed(t, r, takeAt(t, r, root, nil, "/etc", "/data"))
	_, err := sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: s1})
	must(t, err)
	must(t, os.RemoveAll(target))
	must(t, os.Mkdir(target, 0o755))
	res, err := sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: s1})
	must(t, err)
	if res.Stats.Created < 100 {
		t.Fatalf("the recreated target got %+v", res.Stats)
	}
	mustContent(t, filepath.Join(target, "data/f042"), "file 42\n")
}

// TestApplyWholeRootKeepsItsFlags: with "/" in scope, the target itself
// takes the snapshot's metadata, and keeps its append-only flag though the
// apply clears it to change what is below.
func TestApplyWholeRootKeepsItsFlags(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	root := filepath.Join(base, "root")
	guardTree(t, root)
	if _, err := execCommand("chattr", "+a", root); err != nil {
		t.Skipf("no inode flags here: %v", err)
	}
	t.Cleanup(func() { testtree.ClearFlags(t, root) })
	r := openRepo(t)
	target := filepath.Join(base, "target")
	must(t, os.Mkdir(target, 0o755))
	t.Cleanup(func() { testtree.ClearFlags(t, target) })
	sb := &restore.Standby{DB: r.Index(), Loader: r, Warn: func(p string, err error) { t.Errorf("warning: %s: %v", p, err) }}
	for i := range 3 {
		if i > 0 {
			must(t, os.WriteFile(filepath.Join(root, "data/f001"), []byte(fmt.Sprint("version ", i)), 0o644))
		}
		snap := listed(t, r, takeAt(t, r, root, nil, "/"))
		_, err := sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: snap})
		must(t, err)
		want := filepath.Join(t.TempDir(), "want")
		t.Cleanup(func() { testtree.ClearFlags(t, want) })
		_, err = restore.Run(context.Background(), r, snap.Record, restore.Options{Target: want})
		must(t, err)
		testtree.Compare(t, want, target)
	}
}
