package main

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot/testtree"
)

// Disk full (issue 7, item 2): the standby's repository, its live tree and
// the primary's repository on small filesystems made by the test. A write
// that finds no space fails the command with exit 1 and a message that
// names the filesystem; what was stored stays valid and the live tree
// consistent; once there is space the command succeeds.

// smallFS is a filesystem of a few MiB mounted by a test.
type smallFS struct {
	kind string // "tmpfs" or "ext4"
	dir  string // its mount point, as mountinfo names it
	// free makes room: a tmpfs grows, an ext4 loses its filler (see fill).
	free func(t *testing.T)
}

// mountTmpfs mounts a tmpfs of size bytes at a new directory, unmounted at
// cleanup; it skips t where this machine forbids mounting.
func mountTmpfs(t *testing.T, size int64) *smallFS {
	t.Helper()
	testtree.NeedRoot(t)
	dir := newMountPoint(t)
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENODEV) {
			t.Skipf("this machine forbids mounting a tmpfs (%v): the disk-full tests need one", err)
		}
		t.Fatalf("mount a tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() { unmount(t, dir) })
	return &smallFS{kind: "tmpfs", dir: dir, free: func(t *testing.T) {
		t.Helper()
		if err := unix.Mount("", dir, "", unix.MS_REMOUNT, "size=128m"); err != nil {
			t.Fatalf("grow the tmpfs at %s: %v", dir, err)
		}
	}}
}

// mountExt4 loop-mounts a new ext4 image of size bytes at a new directory
// and fills it until leave bytes are free; free removes the filler (which
// fill, called again, makes larger). It
// skips t where mkfs.ext4 or loop devices are missing or forbidden: ext4
// is checked besides tmpfs for its delayed allocation and journal, but
// tmpfs alone covers the behaviour.
func mountExt4(t *testing.T, size, leave int64) *smallFS {
	t.Helper()
	testtree.NeedRoot(t)
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("no mkfs.ext4: the ext4 variant is skipped")
	}
	img := filepath.Join(t.TempDir(), "ext4.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	// No blocks reserved for root, which the tests run as: the space
	// statfs calls available is all there is.
	if out, err := exec.Command(mkfs, "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4 failed: %v: %s", err, out)
	}
	dir := newMountPoint(t)
	if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		t.Skipf("this machine forbids loop-mounting an ext4 image: %v: %s", err, out)
	}
	t.Cleanup(func() { unmount(t, dir) })
	filler := fill(t, dir, leave)
	return &smallFS{kind: "ext4", dir: dir, free: func(t *testing.T) {
		t.Helper()
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
	}}
}

func newMountPoint(t *testing.T) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(dir, "fs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// unmount unmounts dir, lazily if a straggling process still uses it.
func unmount(t *testing.T, dir string) {
	if err := unix.Unmount(dir, 0); err != nil {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	}
}

// fill writes a file in dir until its filesystem has about leave bytes
// available, and returns its path.
func fill(t *testing.T, dir string, leave int64) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{'f', 'i', 'l', 'l'}).Read(buf) // ext4 does not compress, but be safe
	for {
		avail := available(t, dir)
		if avail <= leave {
			break
		}
		n := min(int64(len(buf)), avail-leave)
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatalf("fill %s: %v", dir, err)
		}
		if err := f.Sync(); err != nil { // ext4 counts delayed blocks late
			t.Fatal(err)
		}
	}
	return name
}

// available returns the bytes statfs says an unprivileged writer may use.
func available(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// randomFiles returns n files named prefix00, prefix01… of size random
// bytes each, from seed.
func randomFiles(seed string, prefix string, n, size int) map[string]string {
	var key [32]byte
	copy(key[:], seed)
	rng := rand.NewChaCha8(key)
	files := map[string]string{}
	for i := range n {
		b := make([]byte, size)
		rng.Read(b)
		files[fmt.Sprintf("%s%02d", prefix, i)] = string(b)
	}
	return files
}

// wantNoSpace fails t unless r is a failure with exit 1 whose standard
// error says there is no space on the filesystem mounted at fs.dir.
func wantNoSpace(t *testing.T, what string, r result, fs *smallFS) {
	t.Helper()
	want := fmt.Sprintf("no space left on device on %s (%s)", fs.dir, fs.kind)
	if r.code != exitError || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "free space there") {
		t.Fatalf("%s on a full filesystem: exit %d, want %d and %q in the message\nstdout: %s\nstderr: %s", what, r.code, exitError, want, r.stdout, r.stderr)
	}
	if strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "panic") {
		t.Fatalf("%s: a Go stack instead of a message:\n%s", what, r.stderr)
	}
	t.Logf("%s: %s", what, strings.TrimSpace(r.stderr))
}

// diskFullKinds runs f on a tmpfs of size bytes and on an ext4 image with
// size bytes available.
func diskFullKinds(t *testing.T, size int64, f func(t *testing.T, fs *smallFS)) {
	t.Run("tmpfs", func(t *testing.T) { f(t, mountTmpfs(t, size)) })
	t.Run("ext4", func(t *testing.T) { f(t, mountExt4(t, size+32<<20, size)) })
}

// TestDiskFullPush pushes to a standby whose repository is on a
// filesystem too small for the snapshot: the first pack of it commits, the
// second finds no space. The push fails naming the filesystem, both
// repositories pass check --read-data, and once there is room the push
// sends exactly what the standby lacks.
func TestDiskFullPush(t *testing.T) {
	diskFullKinds(t, 20<<20, testDiskFullPush)
}

func testDiskFullPush(t *testing.T, fs *smallFS) {
	base := t.TempDir()
	src, root, standby := filepath.Join(base, "src"), filepath.Join(base, "root"), filepath.Join(fs.dir, "repo")
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")
	small := map[string]string{}
	for i := range 200 {
		small[fmt.Sprintf("srv/small/%03d", i)] = fmt.Sprintf("small file %d\n", i)
	}
	writeFiles(t, root, small)
	writeFiles(t, root, randomFiles("first", "srv/first/", 1, 1<<20))
	runOK(t, "-r", src, "snapshot", "--root", root, "/srv")
	runOK(t, "-r", src, "push", "--to", standby) // fits

	// 26 MiB more, incompressible: a 16 MiB pack fits, the next does not.
	writeFiles(t, root, randomFiles("second", "srv/big/", 13, 2<<20))
	runOK(t, "-r", src, "snapshot", "--root", root, "/srv")
	first := listSnapshots(t, standby)
	second := newest(t, src, first[0].ID)
	before := len(heldBlobs(t, standby))
	r := run(t, nil, "-r", src, "push", second, "--to", standby)
	wantNoSpace(t, "push", r, fs)
	if strings.Contains(r.stdout, "pushed in") || !strings.Contains(r.stdout, "not committed") {
		t.Errorf("a failed push reports:\n%s", r.stdout)
	}
	waitServeGone(t, standby)

	checkStandby(t, src)
	checkStandby(t, standby)
	if l := listSnapshots(t, standby); len(l) != 1 || l[0] != first[0] {
		t.Fatalf("after the failed push the standby lists %v, want only %v", l, first[0])
	}
	need := neededBlobs(t, src, second)
	held := heldBlobs(t, standby)
	lacking := 0
	for id := range need {
		if !held[id] {
			lacking++
		}
	}
	if len(held) <= before || lacking == 0 {
		t.Fatalf("the failed push took the standby from %d to %d blobs, and it lacks %d of the %d of the second snapshot: the test wants a pack committed before the space ran out, and blobs still lacking", before, len(held), lacking, len(need))
	}
	t.Logf("the failed push committed %d blobs before the space ran out; the standby lacks %d of %d", len(held)-before, lacking, len(need))

	fs.free(t)
	rep := pushJSON(t, "-r", src, "push", second, "--to", standby)
	if len(rep) != 1 || len(rep[0].Snapshots) != 1 {
		t.Fatalf("push after freeing space: %+v", rep)
	}
	st := rep[0].Snapshots[0]
	if got := st.DataSent + st.TreesSent; got != int64(lacking) {
		t.Errorf("push after freeing space sent %d data blobs and %d trees, %d in all; the standby lacked %d", st.DataSent, st.TreesSent, got, lacking)
	}
	sameSnapshots(t, src, standby)
	checkStandby(t, standby)
}

// TestDiskFullApply applies a snapshot to a live tree whose filesystem has
// too little room for the files it replaces: apply fails naming the
// filesystem and a file, leaves every file whole (old or new) and no
// temporary file behind, keeps the old snapshot as the one applied, and
// succeeds once there is room.
func TestDiskFullApply(t *testing.T) {
	diskFullKinds(t, 40<<20, testDiskFullApply)
}

func testDiskFullApply(t *testing.T, fs *smallFS) {
	base := t.TempDir()
	src, root, standby := filepath.Join(base, "src"), filepath.Join(base, "root"), filepath.Join(base, "standby")
	target := filepath.Join(fs.dir, "target")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")

	// Old: 10 files of 2 MiB and 100 small ones. New: 4 of the big ones
	// and 10 small ones replaced, a big one added, a small one deleted
	// (8 MiB of 20 changed: under the mass-change guard's limits).
	old := randomFiles("old", "srv/big/", 10, 2<<20)
	for i := range 100 {
		old[fmt.Sprintf("srv/small/%03d", i)] = fmt.Sprintf("old small file %d\n", i)
	}
	neu := map[string]string{}
	for k, v := range old {
		neu[k] = v
	}
	for k, v := range randomFiles("new", "srv/big/", 4, 2<<20) {
		neu[k] = v
	}
	neu["srv/big/10"] = randomFiles("added", "", 1, 2<<20)["00"]
	for i := range 10 {
		neu[fmt.Sprintf("srv/small/%03d", i*7)] = fmt.Sprintf("new small file %d, longer\n", i)
	}
	delete(neu, "srv/small/099")

	writeFiles(t, root, old)
	runOK(t, "-r", src, "snapshot", "--root", root, "/srv")
	oldID := listSnapshots(t, src)[0].ID
	os.Remove(filepath.Join(root, "srv/small/099"))
	changed := map[string]string{}
	for k, v := range neu {
		if old[k] != v {
			changed[k] = v
		}
	}
	writeFiles(t, root, changed)
	runOK(t, "-r", src, "snapshot", "--root", root, "/srv")
	newID := newest(t, src, oldID)
	runOK(t, "-r", src, "push", oldID, newID, "--to", standby)
	runOK(t, "-r", standby, "apply", oldID, "--target", target)

	// 5 MiB left for the 10 MiB the new snapshot writes.
	fill(t, fs.dir, 5<<20)
	r := run(t, nil, "-r", standby, "apply", "--target", target)
	wantNoSpace(t, "apply", r, fs)
	if !strings.Contains(r.stderr, "while writing "+filepath.Join(target, "srv")+"/") {
		t.Errorf("the message does not name the file being written under %s/srv:\n%s", target, r.stderr)
	}

	// Every file is whole, old or new; no temporary file is left.
	wantWhole(t, target, old, neu)
	key, err := restore.TargetKey(target)
	if err != nil {
		t.Fatal(err)
	}
	ts := targetState(t, standby, key)
	if ts.Applied.String() != oldID || len(ts.Applying) == 0 || ts.Applying[len(ts.Applying)-1].String() != newID {
		t.Errorf("standby state after the failed apply: applied %s, applying %v; want applied %s and %s being applied", ts.Applied.Short(), ts.Applying, oldID[:8], newID[:8])
	}
	if !strings.Contains(ts.LastError, "no space left on device") {
		t.Errorf("the state's last error %q does not say the disk is full", ts.LastError)
	}
	// Against the old snapshot, the only differences are files the new
	// one replaced whole, added or deleted, and directories whose mtime
	// the renames moved.
	r = run(t, nil, "-r", standby, "verify", "--json", "--target", target, oldID)
	var v struct {
		Differences []changeJSON `json:"differences"`
	}
	decodeJSON(t, r.stdout, &v)
	for _, d := range v.Differences {
		rel := strings.TrimPrefix(d.Path, "/")
		live, err := os.ReadFile(filepath.Join(target, rel))
		switch {
		case d.Kind == "metadata" && err != nil && errors.Is(err, unix.EISDIR):
		case d.Kind == "missing" && errors.Is(err, os.ErrNotExist) && !has(neu, rel):
		case err == nil && has(neu, rel) && string(live) == neu[rel]:
		default:
			t.Errorf("verify against the old snapshot: %s %s, which is not a file the new one replaced whole (%v)", d.Kind, d.Path, err)
		}
	}
	t.Logf("verify against the old snapshot: %d differences, all of the new one: %v", len(v.Differences), v.Differences)

	fs.free(t)
	runOK(t, "-r", standby, "apply", "--target", target)
	runOK(t, "-r", standby, "verify", "--target", target)
	if ts := targetState(t, standby, key); ts.Applied.String() != newID || len(ts.Applying) != 0 || ts.LastError != "" {
		t.Errorf("standby state after the apply: %+v, want %s applied", ts, newID[:8])
	}
	wantWhole(t, target, neu, neu)
}

// newest returns the ID of the one snapshot of the repository in dir that
// is not old.
func newest(t *testing.T, dir, old string) string {
	t.Helper()
	l := listSnapshots(t, dir)
	if len(l) != 2 || l[0].ID != old && l[1].ID != old {
		t.Fatalf("%s lists %v, want %s and one more", dir, l, old)
	}
	if l[0].ID == old {
		return l[1].ID
	}
	return l[0].ID
}

func has(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

// wantWhole fails t unless every file under target/srv holds its content in
// old or in neu, every file of both is there unless one of them lacks it,
// and no temporary entry of an apply is left anywhere under target.
func wantWhole(t *testing.T, target string, old, neu map[string]string) {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".understudy-tmp-") {
			t.Errorf("temporary entry left behind: %s", p)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(target, p)
		seen[rel] = true
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		o, inOld := old[rel]
		n, inNew := neu[rel]
		switch {
		case inOld && string(b) == o, inNew && string(b) == n:
		case !inOld && !inNew:
			t.Errorf("%s: in neither snapshot", rel)
		default:
			t.Errorf("%s: torn: %d bytes, neither the old (%d bytes) nor the new (%d bytes) content", rel, len(b), len(o), len(n))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for rel := range old {
		if !seen[rel] && has(neu, rel) {
			t.Errorf("%s: in both snapshots, missing from the live tree", rel)
		}
	}
}

// targetState reads the standby state of set default for target key in
// the repository in dir.
func targetState(t *testing.T, dir, key string) index.TargetState {
	t.Helper()
	r, err := chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Shared, What: "test", Wait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st, err := r.Index().Standby("default")
	if err != nil {
		t.Fatal(err)
	}
	ts := st.Targets[key]
	if ts == nil {
		t.Fatalf("no standby state for %s: %+v", key, st)
	}
	return *ts
}

// TestDiskFullSnapshot takes a snapshot into a repository on a filesystem
// too small for it: snapshot fails naming the filesystem, the repository
// passes check --read-data and lists no snapshot, and once there is room
// the snapshot is taken.
func TestDiskFullSnapshot(t *testing.T) {
	diskFullKinds(t, 6<<20, testDiskFullSnapshot)
}

func testDiskFullSnapshot(t *testing.T, fs *smallFS) {
	root, repo := filepath.Join(t.TempDir(), "root"), filepath.Join(fs.dir, "repo")
	writeFiles(t, root, randomFiles("snapshot", "srv/big/", 5, 2<<20))
	small := map[string]string{}
	for i := range 100 {
		small[fmt.Sprintf("srv/small/%03d", i)] = fmt.Sprintf("small file %d\n", i)
	}
	writeFiles(t, root, small)
	runOK(t, "-r", repo, "init")
	r := run(t, nil, "-r", repo, "snapshot", "--root", root, "/srv")
	wantNoSpace(t, "snapshot", r, fs)
	checkStandby(t, repo)
	if l := listSnapshots(t, repo); len(l) != 0 {
		t.Errorf("the failed snapshot is listed: %v", l)
	}
	fs.free(t)
	runOK(t, "-r", repo, "snapshot", "--root", root, "/srv")
	checkStandby(t, repo)
	if l := listSnapshots(t, repo); len(l) != 1 {
		t.Errorf("after freeing space the repository lists %v, want one snapshot", l)
	}
}
