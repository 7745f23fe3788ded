package main

import (
	bin "encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestSnapshotListBrowseRestoreCheck(t *testing.T) {
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	src := filepath.Join(base, "src")
	writeFiles(t, src, map[string]string{
		"etc/passwd":    "root:x:0:0:root:/root:/bin/sh\n",
		"etc/hosts":     "127.0.0.1 localhost\n",
		"usr/bin/tool":  strings.Repeat("binary ", 100000),
		"var/log/messy": "log",
	})
	runOK(t, "-r", repo, "init")
	out := runOK(t, "-r", repo, "snapshot", "--exclude", src+"/var/log/", src)
	if !strings.Contains(out, "snapshot ") {
		t.Fatalf("snapshot output: %q", out)
	}

	var snaps []struct {
		ID    string   `json:"id"`
		Paths []string `json:"paths"`
		Stats struct {
			Files int `json:"files"`
		} `json:"stats"`
	}
	decodeJSON(t, runOK(t, "-r", repo, "snapshots", "--json"), &snaps)
	if len(snaps) != 1 || snaps[0].Stats.Files != 3 || snaps[0].Paths[0] != src {
		t.Fatalf("snapshots: %+v", snaps)
	}
	id := snaps[0].ID[:8]

	ls := runOK(t, "-r", repo, "ls", id, src, "-R")
	for _, want := range []string{src + "/etc/passwd", src + "/usr/bin/tool"} {
		if !strings.Contains(ls, want+"\n") {
			t.Errorf("ls -R lacks %s:\n%s", want, ls)
		}
	}
	if strings.Contains(ls, "messy") {
		t.Errorf("excluded file listed:\n%s", ls)
	}
	if got := runOK(t, "-r", repo, "cat", "latest", src+"/etc/passwd"); got != "root:x:0:0:root:/root:/bin/sh\n" {
		t.Errorf("cat: %q", got)
	}

	target := filepath.Join(base, "target")
	runOK(t, "-r", repo, "restore", id, "--target", target)
	got, err := os.ReadFile(filepath.Join(target, src, "usr/bin/tool"))
	if err != nil || string(got) != strings.Repeat("binary ", 100000) {
		t.Fatalf("restored content wrong: %v", err)
	}

	// A second snapshot after a change; diff names it.
	writeFiles(t, src, map[string]string{"etc/hosts": "10.0.0.1 other\n", "etc/new": "new"})
	os.Chmod(filepath.Join(src, "etc/passwd"), 0o600)
	runOK(t, "-r", repo, "snapshot", "--exclude", src+"/var/log/", src)
	diff := runOK(t, "-r", repo, "diff", "latest~1", "latest")
	for _, want := range []string{"M  " + src + "/etc/hosts", "+  " + src + "/etc/new", "U  " + src + "/etc/passwd  [mode"} {
		if !strings.Contains(diff, want) {
			t.Errorf("diff lacks %q:\n%s", want, diff)
		}
	}

	if out := runOK(t, "-r", repo, "check", "--read-data"); !strings.Contains(out, "no problems") {
		t.Fatalf("check: %s", out)
	}
}

// TestCheckNamesCorruptBlob flips a byte in a data pack and expects check to
// name the pack, the blob and the snapshot.
func TestCheckNamesCorruptBlob(t *testing.T) {
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	src := filepath.Join(base, "src")
	writeFiles(t, src, map[string]string{"big": strings.Repeat("0123456789abcdef", 20000)})
	runOK(t, "-r", repo, "init")
	runOK(t, "-r", repo, "snapshot", src)
	var snaps []struct {
		ID string `json:"id"`
	}
	decodeJSON(t, runOK(t, "-r", repo, "snapshots", "--json"), &snaps)

	// The largest pack is the data pack.
	var biggest string
	var size int64
	filepath.Walk(filepath.Join(repo, "packs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() > size {
			biggest, size = p, fi.Size()
		}
		return nil
	})
	data, err := os.ReadFile(biggest)
	if err != nil {
		t.Fatal(err)
	}
	data[20] ^= 0xff
	if err := os.WriteFile(biggest, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, nil, "-r", repo, "check", "--read-data")
	if r.code != exitError {
		t.Fatalf("check exit %d, want %d\n%s%s", r.code, exitError, r.stdout, r.stderr)
	}
	for _, want := range []string{"pack " + filepath.Base(biggest), "blob ", "referenced by snapshots " + snaps[0].ID[:8]} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("check output lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestUnreadableFileExit3 runs the snapshot as an unprivileged user, for whom
// a mode 000 file is unreadable: exit 3, the file named, the rest restored.
func TestUnreadableFileExit3(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the snapshot as another user")
	}
	const nobody = 65534
	base := t.TempDir()
	os.Chmod(filepath.Dir(base), 0o755) // t.TempDir's parent is 0700
	os.Chmod(base, 0o755)
	repo := filepath.Join(base, "repo")
	src := filepath.Join(base, "src")
	writeFiles(t, src, map[string]string{"readable": "ok", "secret": "no", "dir/also": "ok"})
	os.Chmod(filepath.Join(src, "secret"), 0)
	for _, d := range []string{src, filepath.Join(src, "dir")} {
		os.Chmod(d, 0o755)
	}
	runOK(t, "-r", repo, "init")
	filepath.Walk(repo, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, nobody, nobody) })
	cred := &syscall.Credential{Uid: nobody, Gid: nobody}
	r := run(t, cred, "-r", repo, "snapshot", src)
	if r.code != exitPartial {
		t.Fatalf("exit %d, want %d\n%s%s", r.code, exitPartial, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, filepath.Join(src, "secret")) {
		t.Fatalf("stderr does not name the file:\n%s", r.stderr)
	}
	target := filepath.Join(base, "target")
	runOK(t, "-r", repo, "restore", "latest", "--target", target)
	for _, name := range []string{"readable", "dir/also"} {
		if _, err := os.Stat(filepath.Join(target, src, name)); err != nil {
			t.Errorf("%s not restored: %v", name, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(target, src, "secret")); err == nil {
		t.Error("the unreadable file appears in the restore")
	}
}

func TestSecondWriterNamesFirst(t *testing.T) {
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	runOK(t, "-r", repo, "init")
	// Hold the lock as a writer would, from this process.
	f, err := os.OpenFile(filepath.Join(repo, "lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	f.WriteString("pid " + strconv.Itoa(os.Getpid()) + " (snapshot since 2026-01-01 10:03:00)\n")
	r := run(t, nil, "-r", repo, "snapshot", base)
	if r.code != exitError || !strings.Contains(r.stderr, "locked by pid "+strconv.Itoa(os.Getpid())+" (snapshot since") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// The index is rebuilt from the packs alone: after index.db is destroyed,
// `repair index` brings back the snapshots, and check and restore work; a
// lost data pack leaves its snapshot out, named, with exit 1.
func TestRepairIndex(t *testing.T) {
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	src := filepath.Join(base, "src")
	writeFiles(t, src, map[string]string{"a": "alpha", "b/c": strings.Repeat("gamma ", 50000)})
	runOK(t, "-r", repo, "init")
	runOK(t, "-r", repo, "snapshot", src)
	before := runOK(t, "-r", repo, "snapshots", "--json")

	if err := os.WriteFile(filepath.Join(repo, "index.db"), []byte("not a bbolt file"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := run(t, nil, "-r", repo, "snapshots"); r.code == 0 {
		t.Fatal("snapshots worked with a garbage index")
	}
	out := runOK(t, "-r", repo, "repair", "index")
	if !strings.Contains(out, "1 snapshots; 0 left out") {
		t.Fatalf("repair: %s", out)
	}
	if after := runOK(t, "-r", repo, "snapshots", "--json"); after != before {
		t.Fatalf("snapshots differ after repair:\n%s\n%s", before, after)
	}
	runOK(t, "-r", repo, "check", "--read-data")
	target := filepath.Join(base, "target")
	runOK(t, "-r", repo, "restore", "latest", "--target", target)
	if got, _ := os.ReadFile(filepath.Join(target, src, "a")); string(got) != "alpha" {
		t.Fatalf("restored %q", got)
	}

	// Lose the data pack: the snapshot can no longer be complete.
	packs, _ := filepath.Glob(filepath.Join(repo, "packs", "*", "*"))
	removed := false
	for _, p := range packs {
		// The first trailer entry's type byte (docs/design.md): 1 is data.
		data, _ := os.ReadFile(p)
		count := int(bin.BigEndian.Uint32(data[len(data)-16:]))
		if data[len(data)-16-count*42] == 1 {
			os.Remove(p)
			removed = true
		}
	}
	if !removed {
		t.Fatal("no data pack found")
	}
	r := run(t, nil, "-r", repo, "repair", "index")
	if r.code != exitError || !strings.Contains(r.stderr, "snapshot left out of the index") {
		t.Fatalf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if out := runOK(t, "-r", repo, "snapshots", "--json"); strings.Contains(out, `"id"`) {
		t.Fatalf("an incomplete snapshot is listed: %s", out)
	}
}

// TestSnapshotStatsJSON: --json gives the new/changed/unmodified counts,
// bytes read and added; --force-read reads every byte again.
func TestSnapshotStatsJSON(t *testing.T) {
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	src := filepath.Join(base, "src")
	writeFiles(t, src, map[string]string{"a": "alpha", "b": "beta", "c": strings.Repeat("gamma", 1000)})
	runOK(t, "-r", repo, "init")
	type stats struct {
		FilesNew        int   `json:"files_new"`
		FilesChanged    int   `json:"files_changed"`
		FilesUnmodified int   `json:"files_unmodified"`
		DirsNew         int   `json:"dirs_new"`
		BytesRead       int64 `json:"bytes_read"`
		BytesAdded      int64 `json:"bytes_added"`
		Duration        float64
	}
	take := func(args ...string) stats {
		var rec struct {
			ID    string `json:"id"`
			Stats stats  `json:"stats"`
		}
		// --root base: the ancestors of src are base alone, which does not
		// change, while /tmp's mtime moves with every test creating files.
		decodeJSON(t, runOK(t, append([]string{"-r", repo, "--json", "snapshot", "--root", base}, append(args, "/src")...)...), &rec)
		if len(rec.ID) != 64 {
			t.Fatalf("no snapshot ID in %+v", rec)
		}
		return rec.Stats
	}
	if s := take(); s.FilesNew != 3 || s.FilesChanged+s.FilesUnmodified != 0 || s.BytesRead != 5009 || s.BytesAdded == 0 {
		t.Fatalf("first snapshot: %+v", s)
	}
	writeFiles(t, src, map[string]string{"a": "ALPHA", "d": "delta"})
	if err := os.Chmod(filepath.Join(src, "b"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The files were written a moment ago, within the racy window: all are
	// read again, and c is found unmodified.
	if s := take(); s.FilesNew != 1 || s.FilesChanged != 2 || s.FilesUnmodified != 1 {
		t.Fatalf("second snapshot: %+v", s)
	}
	if s := take("--force-read"); s.FilesUnmodified != 4 || s.BytesRead != 5014 || s.BytesAdded != 0 {
		t.Fatalf("force-read snapshot: %+v", s)
	}
}
