package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/term"
)

// printJSON writes v as indented JSON followed by a newline.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// humanBytes formats a byte count with binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// showPath prints a path as it is when that is safe on a terminal, else
// with Go escapes (non-UTF-8 bytes, newlines, control characters).
func showPath(p string) string {
	q := strconv.Quote(p)
	if q[1:len(q)-1] == p {
		return p
	}
	return q
}

// progress prints a one-line status to stderr, rewriting it in place, only
// when stderr is a terminal and neither --quiet nor --json is set.
type progress struct {
	mu     sync.Mutex
	w      io.Writer
	active bool
	last   int
}

func (g *globals) newProgress() *progress {
	p := &progress{w: g.stderr}
	if f, ok := g.stderr.(*os.File); ok && !g.quiet && !g.json && term.IsTerminal(int(f.Fd())) {
		p.active = true
	}
	return p
}

func (p *progress) show(format string, args ...any) {
	if !p.active {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	line := fmt.Sprintf(format, args...)
	pad := p.last - len(line)
	p.last = len(line)
	if pad < 0 {
		pad = 0
	}
	fmt.Fprintf(p.w, "\r%s%*s", line, pad, "")
}

// done clears the status line.
func (p *progress) done() {
	if !p.active {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "\r%*s\r", p.last, "")
	p.last = 0
}

func fmtDuration(sec float64) string {
	return (time.Duration(sec*float64(time.Second)) / time.Millisecond * time.Millisecond).String()
}

// writeFileAtomic writes data to path through a temporary file in its
// directory, synced and renamed over path: a reader sees the old file or
// the new one, never part of it.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
