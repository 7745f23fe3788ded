package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/sync/sshdtest"
)

// forcedCommand is the authorized_keys line of a standby that confines key
// to `understudy serve --repo dir`, as deployed.
func forcedCommand(key, dir string) string {
	return fmt.Sprintf(`command="%s serve --repo %s",restrict %s`, binary, dir, key)
}

// sshFlags are the push flags that make it trust s and log in with its key.
func sshFlags(s *sshdtest.Server) []string {
	return []string{"-i", s.ClientKey, "--known-hosts", s.KnownHosts}
}

// listedSnapshot is the part of `snapshots --json` the push tests compare.
type listedSnapshot struct {
	ID   string `json:"id"`
	Root string `json:"root"`
}

func listSnapshots(t *testing.T, repo string) []listedSnapshot {
	t.Helper()
	var l []listedSnapshot
	decodeJSON(t, runOK(t, "-r", repo, "snapshots", "--json"), &l)
	return l
}

// sameSnapshots fails t unless both repositories list the same snapshots
// with the same root trees.
func sameSnapshots(t *testing.T, a, b string) []listedSnapshot {
	t.Helper()
	la, lb := listSnapshots(t, a), listSnapshots(t, b)
	if fmt.Sprint(la) != fmt.Sprint(lb) || len(la) == 0 {
		t.Fatalf("snapshots differ:\n%s: %v\n%s: %v", a, la, b, lb)
	}
	return la
}

// pushReport is the --json form of push's result for one standby.
type pushReport struct {
	Dest      string           `json:"dest"`
	Snapshots []pushedSnapshot `json:"snapshots"`
	WireOut   int64            `json:"wire_bytes_out"`
	WireIn    int64            `json:"wire_bytes_in"`
	Error     string           `json:"error"`
}

type pushedSnapshot struct {
	Snapshot     string  `json:"snapshot"`
	AlreadyThere bool    `json:"already_there"`
	Base         *string `json:"base"`
	TreesSent    int64   `json:"trees_sent"`
	DataSent     int64   `json:"data_blobs_sent"`
	WireOut      int64   `json:"wire_bytes_out"`
}

// pushJSON runs push with args and --json, which must succeed.
func pushJSON(t *testing.T, args ...string) []pushReport {
	t.Helper()
	var rep []pushReport
	decodeJSON(t, runOK(t, append(args, "--json")...), &rep)
	return rep
}

// proc is a running understudy process.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{} // closed when the process is reaped
}

func startBinary(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "UNDERSTUDY_REPO=")
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

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait returns the exit code (-1 when killed by a signal). A process that
// does not end within a minute is a hang: it is killed and t fails.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("understudy %s did not exit within a minute\nstderr: %s", strings.Join(p.cmd.Args[1:], " "), p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// servePIDs returns the processes running `understudy serve --repo dir`
// (locally or as the forced command of sshd), those whose parent is parent
// if parent is not 0.
func servePIDs(dir string, parent int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		if len(args) < 4 || filepath.Base(args[0]) != "understudy" || args[1] != "serve" || args[len(args)-1] != dir {
			continue
		}
		if parent != 0 && ppidOf(pid) != parent {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// ppidOf reads the parent pid from /proc/pid/stat: the fourth field, after
// the command name in parentheses (which may hold spaces).
func ppidOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// waitServeGone waits until no serve of dir runs any more: an orphaned serve
// commits what it received before it exits.
func waitServeGone(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for len(servePIDs(dir, 0)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("serve of %s still running a minute after its client went away: pids %v", dir, servePIDs(dir, 0))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkStandby runs check --read-data on dir, which must pass; harmless
// notes (unindexed packs) are allowed and counted. A serve that is still
// starting may hold the lock for a moment: then check is retried.
func checkStandby(t *testing.T, dir string) (notes int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := run(t, nil, "-r", dir, "check", "--read-data")
		if r.code != 0 && strings.Contains(r.stderr, "is locked by") && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if r.code != 0 {
			t.Fatalf("check --read-data %s: exit %d\nstdout: %s\nstderr: %s", dir, r.code, r.stdout, r.stderr)
		}
		return strings.Count(r.stderr, "note:")
	}
}

func openShared(t *testing.T, dir string) *chunkstore.Repo {
	t.Helper()
	r, err := chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Shared, What: "test", Wait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// heldBlobs returns the IDs of the blobs indexed in the repository in dir.
func heldBlobs(t *testing.T, dir string) map[index.ID]bool {
	t.Helper()
	r := openShared(t, dir)
	defer r.Close()
	held := map[index.ID]bool{}
	if err := r.Index().ForEachBlob(func(b index.Blob) error {
		held[b.ID] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return held
}

// neededBlobs returns every blob snapshot id of the repository in dir
// needs, trees and data, with its stored length.
func neededBlobs(t *testing.T, dir, id string) map[index.ID]uint32 {
	t.Helper()
	sid, err := index.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	r := openShared(t, dir)
	defer r.Close()
	rec, ok, err := r.Index().SnapshotRecord(sid)
	if err != nil || !ok {
		t.Fatalf("snapshot %s: %v (found %v)", id, err, ok)
	}
	d, err := snapshot.DecodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	need := map[index.ID]uint32{}
	add := func(b index.ID) bool {
		if _, ok := need[b]; ok {
			return false
		}
		loc, ok, err := r.Index().Lookup(b)
		if err != nil || !ok {
			t.Fatalf("blob %s: %v (found %v)", b.Short(), err, ok)
		}
		need[b] = loc.Length
		return true
	}
	stack := []index.ID{d.Root}
	add(d.Root)
	for len(stack) > 0 {
		tid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		tr, err := snapshot.LoadTree(r, tid)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range tr.Nodes {
			if !n.Subtree.IsZero() && add(n.Subtree) {
				stack = append(stack, n.Subtree)
			}
			for _, e := range n.Content {
				if !e.IsHole() {
					add(e.Blob)
				}
			}
		}
	}
	return need
}

// cutProxy forwards TCP connections to target until the test cuts them.
type cutProxy struct {
	ln     net.Listener
	Port   int
	target string

	mu    sync.Mutex
	pairs map[net.Conn]net.Conn // client side → upstream side
	wg    sync.WaitGroup
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, Port: ln.Addr().(*net.TCPAddr).Port, target: target, pairs: map[net.Conn]net.Conn{}}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.pairs[c] = u
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, u, c)
		go p.pipe(c, c, u)
	}
}

// pipe copies src to dst; the end of either direction ends the pair.
func (p *cutProxy) pipe(key, dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.pairs, key)
	p.mu.Unlock()
}

// active returns the number of open connections.
func (p *cutProxy) active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pairs)
}

// cut closes every open connection abruptly (RST to both peers) and
// returns how many there were.
func (p *cutProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.pairs)
	for c, u := range p.pairs {
		for _, x := range []net.Conn{c, u} {
			if tc, ok := x.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			x.Close()
		}
		delete(p.pairs, c)
	}
	return n
}

// killPIDs sends SIGKILL to pids, all found as children of a process this
// test started; a process that is gone already is fine.
func killPIDs(pids []int) {
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}
