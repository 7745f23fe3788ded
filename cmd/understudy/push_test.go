package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/understudy/understudy/snapshot/testtree"
	"github.com/understudy/understudy/sync/sshdtest"
)

// TestPushOverSSH pushes a tree with every file type over a real sshd whose
// key is confined to `serve` by a forced command; the standby verifies,
// lists the same snapshot and restores it exactly. A second push after a
// one-file change sends one data blob against the first snapshot.
func TestPushOverSSH(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	src, standby, tree := filepath.Join(base, "src"), filepath.Join(base, "standby"), filepath.Join(base, "tree")
	s := sshdtest.Start(t)
	s.Authorize(forcedCommand(s.ClientPub, standby))
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	testtree.Every(t, tree)
	runOK(t, "-r", src, "snapshot", tree)
	push := append([]string{"-r", src, "push", "--to", s.URL(standby)}, sshFlags(s)...)

	runOK(t, push...)
	runOK(t, "-r", standby, "check", "--read-data")
	first := sameSnapshots(t, src, standby)[0]

	if err := os.WriteFile(filepath.Join(tree, "files", "small"), []byte("changed on the primary\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runOK(t, "-r", src, "snapshot", tree)
	rep := pushJSON(t, push...)
	if len(rep) != 1 || rep[0].Error != "" || len(rep[0].Snapshots) != 1 {
		t.Fatalf("push --json: %+v", rep)
	}
	st := rep[0].Snapshots[0]
	t.Logf("second push: %+v, wire %d out, %d in", st, rep[0].WireOut, rep[0].WireIn)
	if st.DataSent != 1 || st.Base == nil || *st.Base != first.ID || st.TreesSent < 2 || st.TreesSent > 10 {
		t.Errorf("second push sent %d data blobs and %d trees against base %v; want 1 data blob and the trees of the path to it, against %s",
			st.DataSent, st.TreesSent, st.Base, first.ID)
	}
	if rep[0].WireOut > 64<<10 || rep[0].WireIn == 0 || st.WireOut == 0 {
		t.Errorf("second push: %d bytes out, %d in; a one-file change should be small", rep[0].WireOut, rep[0].WireIn)
	}
	runOK(t, "-r", standby, "check", "--read-data")
	if l := sameSnapshots(t, src, standby); len(l) != 2 {
		t.Fatalf("standby has %d snapshots, want 2", len(l))
	}

	target := filepath.Join(base, "target")
	t.Cleanup(func() { testtree.ClearFlags(t, target) })
	runOK(t, "-r", standby, "restore", "latest", "--target", target)
	testtree.Compare(t, tree, filepath.Join(target, tree))
}

// TestPushToTwoStandbys pushes to a local and an SSH standby in one command.
func TestPushToTwoStandbys(t *testing.T) {
	base := t.TempDir()
	src, local, remote, tree := filepath.Join(base, "src"), filepath.Join(base, "a"), filepath.Join(base, "b"), filepath.Join(base, "tree")
	s := sshdtest.Start(t)
	s.Authorize(forcedCommand(s.ClientPub, remote))
	for _, r := range []string{src, local, remote} {
		runOK(t, "-r", r, "init")
	}
	writeFiles(t, tree, map[string]string{"etc/hosts": "127.0.0.1 localhost\n", "usr/bin/tool": strings.Repeat("binary ", 50000)})
	runOK(t, "-r", src, "snapshot", tree)
	rep := pushJSON(t, append([]string{"-r", src, "push", "--to", local, "--to", s.URL(remote)}, sshFlags(s)...)...)
	if len(rep) != 2 {
		t.Fatalf("push --json gave %d results, want 2: %+v", len(rep), rep)
	}
	id := listSnapshots(t, src)[0].ID
	for i, want := range []string{local, s.URL(remote)} {
		r := rep[i]
		if r.Dest != want || r.Error != "" || len(r.Snapshots) != 1 || r.Snapshots[0].Snapshot != id || r.Snapshots[0].DataSent == 0 || r.WireOut == 0 {
			t.Errorf("result %d: %+v; want a push of %s to %s", i, r, id, want)
		}
	}
	for _, r := range []string{local, remote} {
		runOK(t, "-r", r, "check", "--read-data")
		sameSnapshots(t, src, r)
	}
}

// TestPushRefusesChangedHostKey: a changed host key, and a host in no
// known_hosts file, are refused with the presented key's fingerprint and
// what to do; the standby receives nothing.
func TestPushRefusesChangedHostKey(t *testing.T) {
	base := t.TempDir()
	src, standby, tree := filepath.Join(base, "src"), filepath.Join(base, "standby"), filepath.Join(base, "tree")
	s := sshdtest.Start(t)
	s.Authorize(forcedCommand(s.ClientPub, standby))
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")
	writeFiles(t, tree, map[string]string{"a": "one\n"})
	runOK(t, "-r", src, "snapshot", tree)
	runOK(t, append([]string{"-r", src, "push", "--to", s.URL(standby)}, sshFlags(s)...)...)
	before := listSnapshots(t, standby)

	writeFiles(t, tree, map[string]string{"a": "two\n"})
	runOK(t, "-r", src, "snapshot", tree)
	s.NewHostKey(t)
	r := run(t, nil, append([]string{"-r", src, "push", "--to", s.URL(standby)}, sshFlags(s)...)...)
	fp := ssh.FingerprintSHA256(s.HostPub)
	if r.code != exitError || !strings.Contains(r.stderr, fp) || !strings.Contains(r.stderr, "CHANGED") || !strings.Contains(r.stderr, "ssh-keygen -R") {
		t.Errorf("push to a changed host key: exit %d, want %d and a message naming %s and what to do\nstderr: %s", r.code, exitError, fp, r.stderr)
	}
	t.Logf("changed key: %s", r.stderr)

	empty := filepath.Join(base, "known_hosts.empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r = run(t, nil, "-r", src, "push", "--to", s.URL(standby), "-i", s.ClientKey, "--known-hosts", empty)
	fpEd, fpEC := s.HostPub.Type()+" "+fp, s.HostPubECDSA.Type()+" "+ssh.FingerprintSHA256(s.HostPubECDSA)
	if r.code != exitError || !(strings.Contains(r.stderr, fpEd) || strings.Contains(r.stderr, fpEC)) || !strings.Contains(r.stderr, "ssh-keyscan") {
		t.Errorf("push to an unknown host: exit %d, want %d and a message naming %q or %q and what to do\nstderr: %s", r.code, exitError, fpEd, fpEC, r.stderr)
	}
	t.Logf("unknown host: %s", r.stderr)

	if after := listSnapshots(t, standby); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("standby changed by refused pushes: %v, was %v", after, before)
	}
	runOK(t, "-r", standby, "check", "--read-data")
}

// TestServeForcedCommandConfinement: with the forced command, the path the
// client asks for is ignored; only the forced repository is written.
func TestServeForcedCommandConfinement(t *testing.T) {
	base := t.TempDir()
	src, forced, tree := filepath.Join(base, "src"), filepath.Join(base, "forced"), filepath.Join(base, "tree")
	other := filepath.Join(base, "some", "other", "path")
	s := sshdtest.Start(t)
	s.Authorize(forcedCommand(s.ClientPub, forced))
	runOK(t, "-r", src, "init")
	runOK(t, "-r", forced, "init")
	writeFiles(t, tree, map[string]string{"a": "confined\n"})
	runOK(t, "-r", src, "snapshot", tree)
	runOK(t, append([]string{"-r", src, "push", "--to", s.URL(other)}, sshFlags(s)...)...)
	if _, err := os.Lstat(filepath.Join(base, "some")); !os.IsNotExist(err) {
		t.Errorf("the path the client asked for was created: %v", err)
	}
	sameSnapshots(t, src, forced)
	runOK(t, "-r", forced, "check", "--read-data")
}

// Kinds of interruption of TestPushKilledAnywhere.
const (
	killClient = iota // SIGKILL of `understudy push`; its orphaned serve sees EOF
	killServe         // SIGKILL of the serve child of push
	cutSocket         // the TCP connection of a push over SSH closed abruptly
)

var interruptionNames = [...]string{"kill push", "kill serve", "cut socket"}

// TestPushKilledAnywhere interrupts a push of ~40 MiB and 2000 small files 20
// times at pseudo-random points, in three ways. After each the standby passes
// check --read-data and holds no fewer blobs than before; in the end a push
// completes and sends exactly the blobs the standby still lacked.
func TestPushKilledAnywhere(t *testing.T) {
	base := t.TempDir()
	src, standby, tree := filepath.Join(base, "src"), filepath.Join(base, "standby"), filepath.Join(base, "tree")
	data := rand.NewChaCha8([32]byte{'p', 'u', 's', 'h'})
	for i := range 40 { // incompressible: stored as sent
		b := make([]byte, 1<<20)
		data.Read(b)
		writeFiles(t, tree, map[string]string{fmt.Sprintf("big/%02d", i): string(b)})
	}
	small := map[string]string{}
	for i := range 2000 {
		small[fmt.Sprintf("small/%02d/%04d", i%40, i)] = fmt.Sprintf("small file %d\n%s", i, strings.Repeat("s", i%300))
	}
	writeFiles(t, tree, small)
	runOK(t, "-r", src, "init")
	runOK(t, "-r", src, "snapshot", tree)
	snap := listSnapshots(t, src)[0]
	need := neededBlobs(t, src, snap.ID)
	var needBytes int64
	for _, n := range need {
		needBytes += int64(n)
	}

	s := sshdtest.Start(t)
	proxy := startCutProxy(t, net.JoinHostPort(s.Host, strconv.Itoa(s.Port)))
	proxyAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(proxy.Port))
	known := filepath.Join(base, "known_hosts.proxy")
	if err := os.WriteFile(known, []byte(knownhosts.Line([]string{proxyAddr}, s.HostPub)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	viaProxy := func(dir string) []string {
		return []string{"-r", src, "push", "--to", "ssh://" + s.User + "@" + proxyAddr + dir, "-i", s.ClientKey, "--known-hosts", known}
	}
	local := []string{"-r", src, "push", "--to", standby}

	// How long the push each interruption interrupts would take: measured
	// on a copy of the standby as it is, so that the kill point lands inside
	// the push even when most of it was sent before (with the time of the
	// first, whole push, a resumed push would finish before the kill after
	// one or two, and no later kill would hit anything). The kill point is
	// spread over the first 70% of that time: the end of a push is the
	// commit and its acknowledgement, and a kill there completes the
	// snapshot, leaving the following interruptions nothing to interrupt
	// (some land there anyway, as the machine's speed varies).
	scratch := filepath.Join(base, "scratch")
	measure := func(kind int) time.Duration {
		t.Helper()
		if err := os.CopyFS(scratch, os.DirFS(standby)); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(scratch)
		args := append([]string(nil), local...)
		args[len(args)-1] = scratch
		if kind == cutSocket {
			s.Authorize(forcedCommand(s.ClientPub, scratch))
			defer s.Authorize(forcedCommand(s.ClientPub, standby))
			args = viaProxy(scratch)
		}
		start := time.Now()
		runOK(t, args...)
		return time.Since(start)
	}
	runOK(t, "-r", standby, "init")
	t.Logf("%d blobs, %d stored bytes; a whole push takes %v locally, %v over ssh", len(need), needBytes, measure(killClient), measure(cutSocket))

	rng := rand.New(rand.NewPCG(31, 32))
	held := heldBlobs(t, standby)
	for i := range 20 {
		kind := i % 3
		full := measure(kind)
		at := time.Duration(rng.Float64() * 0.7 * float64(full))

		var what string
		switch kind {
		case killClient:
			p := startBinary(t, local...)
			select {
			case <-time.After(at):
				p.cmd.Process.Kill()
				what = "killed"
			case <-p.done:
				what = "exited before the kill"
			}
			what += fmt.Sprintf(", exit %d", p.wait(t))
		case killServe:
			p := startBinary(t, local...)
			select {
			case <-time.After(at):
			case <-p.done:
			}
			what = "push exited before serve could be killed"
			for !p.exited() {
				if pids := servePIDs(standby, p.cmd.Process.Pid); len(pids) > 0 {
					killPIDs(pids)
					what = fmt.Sprintf("killed serve %v", pids)
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			what += fmt.Sprintf(", push exit %d", p.wait(t))
		case cutSocket:
			p := startBinary(t, viaProxy(standby)...)
			select {
			case <-time.After(at):
			case <-p.done:
			}
			what = "push exited before the cut"
			for !p.exited() {
				if proxy.active() > 0 {
					what = fmt.Sprintf("cut %d connections", proxy.cut())
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			what += fmt.Sprintf(", push exit %d", p.wait(t))
		}
		waitServeGone(t, standby)
		notes := checkStandby(t, standby)
		now := heldBlobs(t, standby)
		if len(now) < len(held) {
			t.Errorf("interruption %d (%s): the standby holds %d blobs, %d before", i, interruptionNames[kind], len(now), len(held))
		}
		for id := range held {
			if !now[id] {
				t.Errorf("interruption %d (%s): blob %s was lost", i, interruptionNames[kind], id.Short())
				break
			}
		}
		t.Logf("%2d %-10s at %4dms of %4dms: %s; check ok (%d notes); standby holds %d blobs (+%d)",
			i, interruptionNames[kind], at.Milliseconds(), full.Milliseconds(), what, notes, len(now), len(now)-len(held))
		held = now
	}

	lacking := 0
	for id := range need {
		if !held[id] {
			lacking++
		}
	}
	rep := pushJSON(t, local...)
	if len(rep) != 1 || len(rep[0].Snapshots) != 1 {
		t.Fatalf("final push --json: %+v", rep)
	}
	st := rep[0].Snapshots[0]
	t.Logf("final push: %+v; the standby lacked %d of %d blobs", st, lacking, len(need))
	if got := st.DataSent + st.TreesSent; got != int64(lacking) {
		t.Errorf("final push sent %d data blobs and %d trees, %d in all; the standby lacked %d", st.DataSent, st.TreesSent, got, lacking)
	}
	checkStandby(t, standby)
	if l := listSnapshots(t, standby); len(l) != 1 || l[0] != snap {
		t.Fatalf("standby lists %v, want %v", l, snap)
	}
}
