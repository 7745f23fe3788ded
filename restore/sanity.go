package restore

// Sanity checks: the part of the mass-change guard that looks at what a
// snapshot holds rather than at how much it changes.
//
//	for each account file (/etc/passwd, /etc/group, /etc/shadow):
//	    skip it unless the snapshot's selection puts it in the scope
//	    resolve it in the snapshot: missing or not a regular file is a problem
//	    load its content (at most maxAccountFile bytes) and parse it line by
//	    line; the first bad line, or a missing required entry, is a problem
//	for each user check:
//	    make a staging directory, restore the check's paths into it
//	    run the command there with a timeout; a failure is a problem
//	    remove the staging directory, clearing inode flags on the way

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// SanityCheck is a user-defined check run against a staging view of a snapshot.
type SanityCheck struct {
	Name    string        `json:"name"`
	Command []string      `json:"command"` // argv; run with cwd = staging dir and env UNDERSTUDY_STAGING=<dir>, UNDERSTUDY_SNAPSHOT=<snapshot id hex>
	Paths   []string      `json:"paths"`   // absolute snapshot paths restored into the staging dir (placement as restore: /etc/passwd -> <dir>/etc/passwd); empty means none
	Timeout time.Duration `json:"timeout"` // 0 means 1 minute
}

const (
	// maxAccountFile bounds the content of an account file loaded into
	// memory for the built-in checks; real ones are a few KiB.
	maxAccountFile = 64 << 20
	// checkOutputTail is how much of a user check's output is kept: the
	// problem line quotes its last line.
	checkOutputTail = 4 << 10
	// defaultCheckTimeout applies to a check whose Timeout is 0.
	defaultCheckTimeout = time.Minute
	// checkWaitDelay bounds the wait for a killed check's output pipes,
	// should one of its processes escape the kill of its process group.
	checkWaitDelay = 2 * time.Second
)

// Sanity runs the built-in checks and then checks against snapshot rec
// (whose ID is id) and returns one line per failed check (empty when all pass);
// err is only for failures to run the checks at all (a blob that cannot be loaded...).
func Sanity(ctx context.Context, loader snapshot.BlobLoader, id index.ID, rec *snapshot.Record, checks []SanityCheck, stagingParent string) (problems []string, err error) {
	sel, err := rec.Selection()
	if err != nil {
		return nil, fmt.Errorf("snapshot's selection: %w", err)
	}
	for _, af := range accountFiles {
		if !fileInScope(sel, af.path) {
			continue
		}
		problem, err := checkAccountFile(loader, rec.Root, af)
		if err != nil {
			return nil, err
		}
		if problem != "" {
			problems = append(problems, problem)
		}
	}
	if stagingParent == "" {
		stagingParent = os.TempDir()
	}
	for _, c := range checks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		problem, err := runCheck(ctx, loader, id, rec, c, stagingParent)
		if err != nil {
			return nil, fmt.Errorf("check %q: %w", c.Name, err)
		}
		if problem != "" {
			problems = append(problems, problem)
		}
	}
	return problems, nil
}

// fileInScope reports whether the non-directory at absolute path p is in
// the scope of sel, classifying each ancestor directory from the root down.
func fileInScope(sel *selection.Selection, p string) bool {
	class := sel.Root()
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := ""
	for i, c := range parts {
		cur += "/" + c
		class = sel.Child(class, cur, i < len(parts)-1)
	}
	return class == selection.InScope
}

// accountFile describes the format of one of the files the built-in checks
// parse: colon-separated records of a fixed number of fields.
type accountFile struct {
	path    string
	fields  int
	numeric []field // fields that must be decimal numbers
	// required reports whether a record is the one the file must have;
	// missing is the problem when none is.
	required func(f []string) bool
	missing  string
}

// field names a field of a record by its index.
type field struct {
	idx  int
	name string
}

var accountFiles = []accountFile{
	{
		path: "/etc/passwd", fields: 7, numeric: []field{{2, "uid"}, {3, "gid"}},
		required: func(f []string) bool { return f[0] == "root" && isZero(f[2]) },
		missing:  "no root entry with uid 0",
	},
	{
		path: "/etc/group", fields: 4, numeric: []field{{2, "gid"}},
		required: func(f []string) bool { return isZero(f[2]) },
		missing:  "no group with gid 0",
	},
	{
		path: "/etc/shadow", fields: 9,
		required: func(f []string) bool { return f[0] == "root" },
		missing:  "no root entry",
	},
}

func isZero(s string) bool {
	n, err := strconv.ParseUint(s, 10, 32)
	return err == nil && n == 0
}

// checkAccountFile returns the first problem of af in the snapshot, or "".
func checkAccountFile(loader snapshot.BlobLoader, root index.ID, af accountFile) (string, error) {
	n, _, err := snapshot.Resolve(loader, root, af.path)
	if errors.Is(err, snapshot.ErrNotFound) {
		return af.path + " is in the scope but missing from the snapshot", nil
	}
	if err != nil {
		return "", err
	}
	if n.Type != tree.File {
		return fmt.Sprintf("%s is a %s, not a regular file", af.path, n.Type), nil
	}
	if size := n.Size(); size > maxAccountFile {
		return fmt.Sprintf("%s is %d bytes, more than the %d MiB a sanity check reads", af.path, size, maxAccountFile>>20), nil
	}
	data, err := loadContent(loader, n)
	if err != nil {
		return "", fmt.Errorf("%s: %w", af.path, err)
	}
	return af.parse(data), nil
}

// loadContent returns the content of file node n, holes as zeros. The
// caller bounds n.Size().
func loadContent(loader snapshot.BlobLoader, n *tree.Node) ([]byte, error) {
	data := make([]byte, 0, n.Size())
	for _, e := range n.Content {
		if e.IsHole() {
			data = append(data, make([]byte, e.Length)...)
			continue
		}
		b, err := loader.LoadBlob(e.Blob, nil)
		if err != nil {
			return nil, err
		}
		if uint64(len(b)) != e.Length {
			return nil, fmt.Errorf("blob %s has %d bytes, the tree says %d", e.Blob.Short(), len(b), e.Length)
		}
		data = append(data, b...)
	}
	return data, nil
}

// parse returns the first problem of content data, or "".
func (af accountFile) parse(data []byte) string {
	found := false
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != af.fields {
			return fmt.Sprintf("%s: line %d has %d fields, not %d", af.path, i+1, len(f), af.fields)
		}
		for _, nf := range af.numeric {
			if _, err := strconv.ParseUint(f[nf.idx], 10, 32); err != nil {
				return fmt.Sprintf("%s: line %d: %s %q is not a number", af.path, i+1, nf.name, f[nf.idx])
			}
		}
		if af.required(f) {
			found = true
		}
	}
	if !found {
		return af.path + ": " + af.missing
	}
	return ""
}

// runCheck runs user check c against a fresh staging view of the snapshot
// and returns its problem line, or "".
func runCheck(ctx context.Context, loader snapshot.BlobLoader, id index.ID, rec *snapshot.Record, c SanityCheck, parent string) (problem string, err error) {
	if len(c.Command) == 0 {
		return fmt.Sprintf("check %q has no command", c.Name), nil
	}
	for _, p := range c.Paths {
		if !strings.HasPrefix(p, "/") {
			return fmt.Sprintf("check %q: path %q is not absolute, as the snapshot lists it", c.Name, p), nil
		}
	}
	parent, err = filepath.Abs(parent)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(parent, "staging-")
	if err != nil {
		return "", fmt.Errorf("staging directory: %w", err)
	}
	defer func() {
		if rerr := removeStaging(parent, filepath.Base(dir)); rerr != nil && err == nil {
			err = fmt.Errorf("remove staging directory %s: %w", dir, rerr)
		}
	}()
	if len(c.Paths) > 0 {
		var mu sync.Mutex
		var first string
		warn := func(p string, werr error) {
			mu.Lock()
			defer mu.Unlock()
			if first == "" {
				first = fmt.Sprintf("%s: %v", p, werr)
			}
		}
		_, err := Run(ctx, loader, rec, Options{Target: dir, Paths: slices.Clone(c.Paths), Workers: 2, Warn: warn})
		if errors.Is(err, ErrIncomplete) {
			return fmt.Sprintf("check %q: its staging view is incomplete (%s)", c.Name, first), nil
		}
		if err != nil {
			return "", fmt.Errorf("staging view: %w", err)
		}
	}
	return execCheck(ctx, id, c, dir)
}

// execCheck runs c's command in dir and returns its problem line, or "".
// Only the cancellation of ctx is an error.
func execCheck(ctx context.Context, id index.ID, c SanityCheck, dir string) (string, error) {
	res, err := RunCommand(ctx, c.Command, c.Timeout, dir, "UNDERSTUDY_STAGING="+dir, "UNDERSTUDY_SNAPSHOT="+id.String())
	if err != nil || !res.Failed {
		return "", err
	}
	line := fmt.Sprintf("check %q failed (%s)", c.Name, res.Why)
	if res.LastLine != "" {
		line += ": " + res.LastLine
	}
	return line, nil
}

// CommandResult is how a check command ended.
type CommandResult struct {
	Failed   bool   // it did not exit 0 in time
	Why      string // "exit status 1", "timed out after 30s"; "" when it passed
	LastLine string // the last non-blank line of its output, made printable
	Output   string // the last 4 KiB of its output (stdout and stderr)
}

// RunCommand runs argv as a check: in its own process group, killed whole
// after timeout (a minute when 0) or when ctx ends, in dir ("" for the
// current directory), with env added to this process's environment. Only
// the cancellation of ctx is an error; a command that fails, cannot start
// or times out is a Failed result.
func RunCommand(ctx context.Context, argv []string, timeout time.Duration, dir string, env ...string) (CommandResult, error) {
	if len(argv) == 0 {
		return CommandResult{Failed: true, Why: "no command"}, nil
	}
	if timeout <= 0 {
		timeout = defaultCheckTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := &tailBuffer{max: checkOutputTail}
	cmd := exec.CommandContext(cctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = os.Environ()
	if dir != "" {
		cmd.Env = append(cmd.Env, "PWD="+dir)
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, killed whole: a shell's children go too and
	// release the output pipe.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = checkWaitDelay
	err := cmd.Run()
	res := CommandResult{LastLine: out.lastLine(), Output: strings.ToValidUTF8(string(out.buf), "?")}
	if err == nil {
		return res, nil
	}
	if ctx.Err() != nil {
		return CommandResult{}, ctx.Err()
	}
	res.Failed, res.Why = true, err.Error()
	if cctx.Err() != nil {
		res.Why = "timed out after " + timeout.String()
	}
	return res, nil
}

// removeStaging removes the staging directory name in parent, clearing
// inode flags that the restore set in it.
func removeStaging(parent, name string) error {
	fd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	return removeEntry(fd, name, uint64(st.Dev))
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > t.max {
		p = p[len(p)-t.max:]
	}
	if drop := len(t.buf) + len(p) - t.max; drop > 0 {
		t.buf = t.buf[:copy(t.buf, t.buf[drop:])]
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// lastLine returns the last non-blank line kept, control characters
// replaced, so that it fits on the problem line.
func (t *tailBuffer) lastLine() string {
	b := bytes.TrimRight(t.buf, " \t\r\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(string(b), "?"))
}
