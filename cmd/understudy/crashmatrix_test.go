package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/testtree"
)

// TestCrashMatrix kills snapshot, push (either side), apply, rollback and
// prune with SIGKILL, UNDERSTUDY_CRASHES times in all (30 by default;
// bench/torture.sh runs 200), spread over the commands and over two kinds
// of kill: at a fault point of a binary built with -tags faultpoints
// (package chunkstore/faultpoint: after a pack is written, before its index
// commit, between a restore batch's sync and its renames, mid-renames,
// before prune drops the old packs, before serve stores a pushed record),
// at an N drawn among the hits a whole run makes; and at a random instant
// of the command's measured duration. After each kill, check --read-data
// passes on every repository the command writes (unindexed packs are
// harmless notes), every regular file of an apply's or rollback's target
// is, byte for byte, its version in the snapshot before or in the one after
// (never torn), and the same command run again converges: it succeeds, a
// snapshot has the root tree of an uninterrupted one, a push sends no more
// blobs than the standby lacked, an apply verifies, a prune leaves no note.
// UNDERSTUDY_CRASH_SEED repeats the choices of a run (not its timing).
func TestCrashMatrix(t *testing.T) {
	testtree.NeedRoot(t)
	crashes := 30
	if s := os.Getenv("UNDERSTUDY_CRASHES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("UNDERSTUDY_CRASHES=%q: want a positive number", s)
		}
		crashes = n
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("UNDERSTUDY_CRASH_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("UNDERSTUDY_CRASH_SEED=%q: want a number", s)
		}
		seed = n
	}
	t.Logf("%d crashes, UNDERSTUDY_CRASH_SEED=%d", crashes, seed)
	start := time.Now()
	m := newCrashMatrix(t, seed)
	t.Logf("set-up in %v", time.Since(start).Round(time.Millisecond))

	kinds := []string{"fault", "timed"}
	turns := map[string]int{}
	failed := 0
	for i := range crashes {
		cmd := crashCommands[i%len(crashCommands)]
		kind := kinds[turns[cmd]%2]
		turns[cmd]++
		name := fmt.Sprintf("%03d-%s-%s", i, cmd, kind)
		if !t.Run(name, func(t *testing.T) { m.crash(t, cmd, kind) }) {
			failed++
			m.broken = true
		}
	}
	var b strings.Builder
	for _, cmd := range crashCommands {
		for _, kind := range kinds {
			c := m.counts[cmd+"/"+kind]
			if c == nil {
				c = &crashCount{}
			}
			fmt.Fprintf(&b, "\n  %-8s %-5s %3d crashes: %3d killed, %3d finished first", cmd, kind, c.runs, c.killed, c.runs-c.killed)
		}
	}
	t.Logf("per command and kind:%s", b.String())
	t.Logf("crash matrix: %d crashes (%d killed), %d failures, %v", crashes, m.killed(), failed, time.Since(start).Round(time.Second))
}

// crashCommands are the commands the matrix kills, in turn.
var crashCommands = []string{"snapshot", "push", "apply", "rollback", "prune"}

type crashCount struct{ runs, killed int }

// crashMatrix holds the corpus, the repositories and what the measuring
// runs found.
type crashMatrix struct {
	t    *testing.T
	rng  *rand.Rand
	bin  string // understudy built with -tags faultpoints
	base string

	roots  [2]string                 // each stands for "/" of a version, holding /srv
	vers   [2]map[string]fileDigest  // regular files below /srv, per version
	snaps  [2]listedSnapshot         // the versions' snapshots in primary
	need   map[index.ID]bool         // every blob the two snapshots name
	prim   string                    // primary: both snapshots
	stby   string                    // standby: both snapshots, the target's repository
	targ   string                    // the standby's live tree
	at     int                       // the version the target holds
	prist  string                    // the primary, version 0 forgotten: prune's input
	work   string                    // the repository a crash works on (snapshot, push, prune)
	dur    map[string]time.Duration  // a whole run's duration, by measure key
	hits   map[string]map[string]int // fault point hits of a whole run, by measure key
	next   map[string]int            // turns: the next fault point to arm, by command, and others
	counts map[string]*crashCount    // by command/kind
	broken bool                      // a crash failed: the next apply first restores the target
}

func (m *crashMatrix) killed() int {
	n := 0
	for _, c := range m.counts {
		n += c.killed
	}
	return n
}

// The corpus of each version: testtree.Every, 16 MiB of random data in 1 MiB
// files and 1500 small files; the second version rewrites half the big files,
// changes a third of the small ones, deletes a seventh and adds 300.
const (
	crashBig   = 16
	crashSmall = 1500
	crashAdded = 300
)

func newCrashMatrix(t *testing.T, seed uint64) *crashMatrix {
	m := &crashMatrix{
		t: t, rng: rand.New(rand.NewPCG(seed, 7)), base: t.TempDir(),
		dur: map[string]time.Duration{}, hits: map[string]map[string]int{},
		next: map[string]int{}, counts: map[string]*crashCount{},
	}
	m.bin = buildFaultBinary(t)
	m.prim = filepath.Join(m.base, "primary")
	m.stby = filepath.Join(m.base, "standby")
	m.targ = filepath.Join(m.base, "target")
	m.prist = filepath.Join(m.base, "prune-pristine")
	m.work = filepath.Join(m.base, "work")

	data := rand.NewChaCha8([32]byte{'c', 'r', 'a', 's', 'h'})
	random := func(n int) string {
		b := make([]byte, n)
		data.Read(b)
		return string(b)
	}
	var files [2]map[string]string
	files[0], files[1] = map[string]string{}, map[string]string{}
	for i := range crashBig {
		name := fmt.Sprintf("big/%02d", i)
		files[0][name] = random(1 << 20)
		files[1][name] = files[0][name]
		if i%2 == 0 {
			files[1][name] = random(1 << 20)
		}
	}
	for i := range crashSmall {
		name := fmt.Sprintf("small/%02d/%04d", i%30, i)
		files[0][name] = fmt.Sprintf("small file %d\n%s", i, strings.Repeat("s", i%2000))
		switch {
		case i%7 == 0:
		case i%3 == 0:
			files[1][name] = files[0][name] + "changed\n"
		default:
			files[1][name] = files[0][name]
		}
	}
	for i := range crashAdded {
		files[1][fmt.Sprintf("small/new/%03d", i)] = fmt.Sprintf("added %d\n", i)
	}
	for v := range 2 {
		m.roots[v] = filepath.Join(m.base, fmt.Sprintf("root%d", v))
		srv := filepath.Join(m.roots[v], "srv")
		writeFiles(t, srv, files[v])
		every := filepath.Join(srv, "every")
		if err := os.Mkdir(every, 0o755); err != nil {
			t.Fatal(err)
		}
		testtree.Every(t, every)
		var err error
		if m.vers[v], err = digestTree(srv); err != nil {
			t.Fatal(err)
		}
	}

	// The primary, measuring a snapshot into an empty repository.
	runOK(t, "-r", m.prim, "init")
	m.measure("snapshot", "-r", m.prim, "snapshot", "--root", m.roots[0], "/srv")
	runOK(t, "-r", m.prim, "snapshot", "--root", m.roots[1], "/srv")
	l := listSnapshots(t, m.prim)
	if len(l) != 2 {
		t.Fatalf("the primary lists %v", l)
	}
	m.snaps = [2]listedSnapshot{l[0], l[1]}
	m.need = map[index.ID]bool{}
	for _, s := range m.snaps {
		for id := range neededBlobs(t, m.prim, s.ID) {
			m.need[id] = true
		}
	}

	// The standby, measuring a push of both into an empty repository, and
	// its target, measuring an apply and a rollback.
	runOK(t, "-r", m.stby, "init")
	m.measure("push", m.pushArgs(m.stby)...)
	if err := os.Mkdir(m.targ, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testtree.ClearFlags(t, m.targ) })
	runOK(t, m.applyArgs("apply", 0)...)
	m.measure("toward1", m.applyArgs("apply", 1)...)
	m.measure("toward0", m.applyArgs("rollback", 0)...)
	runOK(t, "-r", m.stby, "verify", "--target", m.targ, m.snaps[0].ID)
	// The torn-file check tells the versions apart in a target apply wrote.
	live := filepath.Join(m.targ, "srv")
	if err := checkNotTorn(live, m.vers[0]); err != nil {
		t.Fatalf("the target holding the first version: %v", err)
	}
	if err := checkNotTorn(live, m.vers[1]); err == nil {
		t.Fatal("the torn-file check takes the first version for the second")
	}

	// Prune's input: the primary with the first version forgotten. A
	// whole prune must repack, or prune-before-delete is never reached.
	copyRepo(t, m.prim, m.prist)
	runOK(t, "-r", m.prist, "forget", "--keep-last", "1")
	copyRepo(t, m.prist, m.work)
	out := m.measure("prune", "-r", m.work, "--json", "prune")
	var st pruneReport
	decodeJSON(t, out, &st)
	if st.PacksRepacked == 0 || m.hits["prune"]["prune-before-delete"] != 1 {
		t.Fatalf("the corpus does not make prune repack: %+v, hits %v", st, m.hits["prune"])
	}
	os.RemoveAll(m.work)
	for _, k := range []string{"snapshot", "push", "toward1", "toward0", "prune"} {
		t.Logf("a whole %s: %v, fault points hit %v", k, m.dur[k].Round(time.Millisecond), m.hits[k])
	}
	return m
}

// buildFaultBinary builds understudy with its fault points into a
// directory of the test; named understudy, as servePIDs expects.
func buildFaultBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "understudy")
	start := time.Now()
	if out, err := exec.Command("go", "build", "-tags", "faultpoints", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags faultpoints: %v\n%s", err, out)
	}
	t.Logf("built understudy with fault points in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

func (m *crashMatrix) pushArgs(dest string) []string {
	return []string{"-r", m.prim, "push", m.snaps[0].ID, m.snaps[1].ID, "--to", dest}
}

// applyArgs applies (or rolls back to) version v on the standby's target.
func (m *crashMatrix) applyArgs(verb string, v int) []string {
	if verb == "rollback" {
		return []string{"-r", m.stby, "rollback", "--target", m.targ, "--to", m.snaps[v].ID}
	}
	return []string{"-r", m.stby, "apply", "--force", "--target", m.targ, m.snaps[v].ID}
}

// start runs the faultpoints binary with env added to the environment.
func (m *crashMatrix) start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(m.bin, args...), done: make(chan struct{})}
	p.cmd.Env = append(append(os.Environ(), "UNDERSTUDY_REPO="), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	return p
}

// measure runs a whole command with the faultpoints binary, unarmed,
// records its duration and the hits of each fault point under key, and
// returns its standard output.
func (m *crashMatrix) measure(key string, args ...string) string {
	m.t.Helper()
	log := filepath.Join(m.base, "hits-"+key)
	start := time.Now()
	p := m.start(m.t, []string{"UNDERSTUDY_FAULT_LOG=" + log}, args...)
	if code := p.wait(m.t); code != 0 {
		m.t.Fatalf("understudy %s: exit %d\n%s%s", strings.Join(args, " "), code, p.stdout.String(), p.stderr.String())
	}
	m.dur[key] = time.Since(start)
	m.hits[key] = readHits(m.t, log)
	os.Remove(log)
	return p.stdout.String()
}

// readHits counts the lines of a fault point log by name.
func readHits(t *testing.T, log string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	hits := map[string]int{}
	for line := range strings.Lines(string(b)) {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		hits[name]++
	}
	return hits
}

// fault picks the next fault point of key's run in turn and an N among its
// hits.
func (m *crashMatrix) fault(cmd, key string) (name string, n int) {
	var names []string
	for name, hits := range m.hits[key] {
		if hits > 0 {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		m.t.Fatalf("a whole %s hits no fault point", key)
	}
	slices.Sort(names)
	name = names[m.next[cmd]%len(names)]
	m.next[cmd]++
	return name, 1 + m.rng.IntN(m.hits[key][name])
}

// crash runs one crash of cmd and checks what it leaves.
func (m *crashMatrix) crash(t *testing.T, cmd, kind string) {
	c := m.counts[cmd+"/"+kind]
	if c == nil {
		c = &crashCount{}
		m.counts[cmd+"/"+kind] = c
	}
	c.runs++
	var args []string
	var key string
	towards := 1 - m.at
	switch cmd {
	case "snapshot":
		// Into a new repository with the primary's chunker, so that the
		// root tree can be compared with the primary's.
		os.RemoveAll(m.work)
		runOK(t, "-r", m.work, "init", "--from", m.prim)
		towards = m.next["snapshot-version"] % 2 // each version in turn
		m.next["snapshot-version"]++
		args, key = []string{"-r", m.work, "snapshot", "--root", m.roots[towards], "/srv"}, "snapshot"
	case "push":
		os.RemoveAll(m.work)
		runOK(t, "-r", m.work, "init")
		args, key = m.pushArgs(m.work), "push"
	case "apply", "rollback":
		if m.broken {
			runOK(t, m.applyArgs("apply", m.at)...)
			m.broken = false
		}
		args, key = m.applyArgs(cmd, towards), fmt.Sprintf("toward%d", towards)
	case "prune":
		os.RemoveAll(m.work)
		copyRepo(t, m.prist, m.work)
		args, key = []string{"-r", m.work, "prune"}, "prune"
	}

	var what string
	var killed bool
	began := time.Now()
	if kind == "fault" {
		name, n := m.fault(cmd, key)
		log := filepath.Join(m.base, "hits")
		os.Remove(log)
		p := m.start(t, []string{fmt.Sprintf("UNDERSTUDY_FAULT=%s:%d", name, n), "UNDERSTUDY_FAULT_LOG=" + log}, args...)
		code := p.wait(t)
		killed = readHits(t, log)[name] >= n
		what = fmt.Sprintf("fault %s:%d of %d, exit %d", name, n, m.hits[key][name], code)
		if !killed {
			what += " (not reached)"
		}
	} else {
		what, killed = m.timedKill(t, cmd, key, args)
	}
	if killed {
		c.killed++
	}

	// What the kill left.
	ran := time.Now()
	var notes []int
	switch cmd {
	case "snapshot", "prune":
		notes = append(notes, checkStandby(t, m.work))
	case "push":
		waitServeGone(t, m.work)
		notes = append(notes, checkStandby(t, m.prim), checkStandby(t, m.work))
	case "apply", "rollback":
		notes = append(notes, checkStandby(t, m.stby))
		if err := checkNotTorn(filepath.Join(m.targ, "srv"), m.vers[m.at], m.vers[towards]); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	t.Logf("%s: check --read-data passed (notes %v)", what, notes)
	checked := time.Now()
	defer func() {
		t.Logf("run %v, checks %v, convergence %v", ran.Sub(began).Round(time.Millisecond), checked.Sub(ran).Round(time.Millisecond), time.Since(checked).Round(time.Millisecond))
	}()

	// The same command again converges.
	switch cmd {
	case "snapshot":
		runOK(t, args...)
		for _, s := range listSnapshots(t, m.work) {
			if s.Root != m.snaps[towards].Root {
				t.Fatalf("after %s, snapshot %s has root tree %s; an uninterrupted snapshot of the same tree has %s", what, s.ID, s.Root, m.snaps[towards].Root)
			}
		}
		checkStandby(t, m.work)
	case "push":
		held := heldBlobs(t, m.work)
		lacking := 0
		for id := range m.need {
			if !held[id] {
				lacking++
			}
		}
		var rep []pushReport
		decodeJSON(t, runOK(t, append(args, "--json")...), &rep)
		var sent int64
		for _, s := range rep[0].Snapshots {
			sent += s.DataSent + s.TreesSent
		}
		if sent > int64(lacking) {
			t.Fatalf("after %s, the resumed push sent %d blobs; the standby lacked %d of %d: committed blobs were sent again\n%+v", what, sent, lacking, len(m.need), rep)
		}
		sameSnapshots(t, m.prim, m.work)
		checkStandby(t, m.work)
		t.Logf("resumed push sent %d blobs, the standby lacked %d of %d", sent, lacking, len(m.need))
	case "apply", "rollback":
		runOK(t, args...)
		if r := run(t, nil, "-r", m.stby, "verify", "--target", m.targ, m.snaps[towards].ID); r.code != 0 {
			t.Fatalf("after %s and a whole %s: verify exit %d\n%s%s", what, cmd, r.code, r.stdout, r.stderr)
		}
		m.at = towards
	case "prune":
		runOK(t, args...)
		if n := checkStandby(t, m.work); n != 0 {
			t.Fatalf("after %s and a whole prune, check has %d notes", what, n)
		}
	}
}

// timedKill runs args and kills the process (for a push, every other time
// its serve) at a random instant of the first 80% of the duration of a
// whole run measured under key: the end of a run is its last commit, and
// a kill there is one of a run that finished. A run that ends before the
// kill is a whole run: its duration replaces the measure, which follows
// the machine's load that way. It says what happened.
func (m *crashMatrix) timedKill(t *testing.T, cmd, key string, args []string) (what string, killed bool) {
	full := m.dur[key]
	at := time.Duration(m.rng.Float64() * 0.8 * float64(full))
	serveSide := cmd == "push" && m.next["timed-push"]%2 == 1
	if cmd == "push" {
		m.next["timed-push"]++
	}
	start := time.Now()
	p := m.start(t, nil, args...)
	select {
	case <-time.After(at):
	case <-p.done:
	}
	what = "exited before the kill"
	switch {
	case serveSide:
		what = "push exited before serve could be killed"
		for !p.exited() {
			if pids := servePIDs(m.work, p.cmd.Process.Pid); len(pids) > 0 {
				killPIDs(pids)
				what, killed = fmt.Sprintf("killed serve %v", pids), true
				break
			}
			time.Sleep(time.Millisecond)
		}
	case !p.exited():
		p.cmd.Process.Kill()
		what, killed = "killed", true
	}
	code := p.wait(t)
	if !killed && code == 0 {
		m.dur[key] = time.Since(start)
	}
	return fmt.Sprintf("kill at %v of %v: %s, exit %d", at.Round(time.Millisecond), full.Round(time.Millisecond), what, code), killed
}

// fileDigest is what a regular file holds, whatever its holes: its size
// and the SHA-256 of the offset and bytes of every 4 KiB block that is not
// all zeros, found through SEEK_DATA, so that Every's 100 GiB sparse file
// costs its 1 MiB of data.
type fileDigest struct {
	size int64
	sum  [32]byte
}

const digestBlock = 4096

func digestFile(f *os.File, buf []byte) (fileDigest, error) {
	fi, err := f.Stat()
	if err != nil {
		return fileDigest{}, err
	}
	size := fi.Size()
	h := sha256.New()
	fd := int(f.Fd())
	var next int64 // blocks before next are hashed
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // a hole to the end
		}
		if err != nil {
			return fileDigest{}, err
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fileDigest{}, err
		}
		from := max(next, data/digestBlock*digestBlock)
		to := min(size, (hole+digestBlock-1)/digestBlock*digestBlock)
		if err := hashBlocks(h, f, buf, from, to); err != nil {
			return fileDigest{}, err
		}
		next, off = to, hole
	}
	d := fileDigest{size: size}
	h.Sum(d.sum[:0])
	return d, nil
}

// hashBlocks hashes the blocks of f from from (aligned) to to that hold a
// byte other than zero, each as its offset and its bytes.
func hashBlocks(h hash.Hash, f *os.File, buf []byte, from, to int64) error {
	var zero [digestBlock]byte
	for pos := from; pos < to; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), to-pos)], pos)
		if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
			return err
		}
		for b := 0; b < n; b += digestBlock {
			blk := buf[b:min(b+digestBlock, n)]
			if !bytes.Equal(blk, zero[:len(blk)]) {
				var at [8]byte // big endian
				for k := range at {
					at[k] = byte((pos + int64(b)) >> (56 - 8*k))
				}
				h.Write(at[:])
				h.Write(blk)
			}
		}
		pos += int64(n)
	}
	return nil
}

// digestTree returns the digest of every regular file under dir by its
// path below dir, but for a crashed apply's temporary files. It walks
// through directory descriptors (os.Root), so that Every's chain of
// directories deeper than PATH_MAX is walked too.
func digestTree(dir string) (map[string]fileDigest, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	out := map[string]fileDigest{}
	return out, digestRoot(r, "", out, make([]byte, 256*digestBlock))
}

func digestRoot(r *os.Root, rel string, out map[string]fileDigest, buf []byte) error {
	d, err := r.Open(".")
	if err != nil {
		return err
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	for _, e := range ents {
		p := path.Join(rel, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), ".understudy-tmp-"):
		case e.IsDir():
			sub, err := r.OpenRoot(e.Name())
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			err = digestRoot(sub, p, out, buf)
			sub.Close()
			if err != nil {
				return err
			}
		case e.Type().IsRegular():
			f, err := r.OpenFile(e.Name(), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			out[p], err = digestFile(f, buf)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	return nil
}

// checkNotTorn fails unless every regular file under live holds, whole,
// its content in one of the versions.
func checkNotTorn(live string, vs ...map[string]fileDigest) error {
	got, err := digestTree(live)
	if err != nil {
		return err
	}
	var torn []string
	for p, d := range got {
		if !slices.ContainsFunc(vs, func(v map[string]fileDigest) bool { w, ok := v[p]; return ok && w == d }) {
			torn = append(torn, fmt.Sprintf("%q (%d bytes)", p, d.size))
		}
	}
	if len(torn) > 0 {
		slices.Sort(torn)
		return fmt.Errorf("%d files of the target hold neither version's content: %s", len(torn), strings.Join(torn[:min(len(torn), 10)], ", "))
	}
	return nil
}
