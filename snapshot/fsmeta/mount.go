package fsmeta

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// NoSpaceError is a write that failed because the filesystem holding the
// file is full (ENOSPC). Its message names the filesystem by its mount
// point and type, so that the operator knows where to free space; Err
// still matches syscall.ENOSPC.
type NoSpaceError struct {
	File   string // the file being written; "" if unknown
	Mount  string // the mount point of its filesystem; "" if not found
	FSType string // that filesystem's type, e.g. "ext4" or "tmpfs"
	Err    error  // the error as it came
}

func (e *NoSpaceError) Error() string {
	var b strings.Builder
	b.WriteString("no space left on device")
	where := "on its filesystem"
	if e.Mount != "" {
		fmt.Fprintf(&b, " on %s (%s)", e.Mount, e.FSType)
		where = "there"
	}
	if e.File != "" {
		fmt.Fprintf(&b, " while writing %s", e.File)
	}
	fmt.Fprintf(&b, ": free space %s and run the command again: what was committed is kept", where)
	return b.String()
}

func (e *NoSpaceError) Unwrap() error { return e.Err }

// NoSpace turns an error that matches syscall.ENOSPC into a *NoSpaceError
// naming file and its filesystem; any other error, and one that is already
// a *NoSpaceError, is returned as it is. An empty file means the absolute
// path err itself names (an *fs.PathError's or the new name of an
// *os.LinkError), if any.
func NoSpace(err error, file string) error {
	if err == nil || !errors.Is(err, syscall.ENOSPC) {
		return err
	}
	var ns *NoSpaceError
	if errors.As(err, &ns) {
		return err
	}
	if file == "" {
		file = pathIn(err)
	}
	e := &NoSpaceError{File: file, Err: err}
	if file != "" {
		e.Mount, e.FSType, _ = MountOf(file)
	}
	return e
}

// pathIn returns the absolute path an error names, or "".
func pathIn(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) && filepath.IsAbs(pe.Path) {
		return pe.Path
	}
	var le *os.LinkError
	if errors.As(err, &le) && filepath.IsAbs(le.New) {
		return le.New
	}
	return ""
}

// MountOf returns the mount point of the filesystem that holds path and
// its type, as /proc/self/mountinfo lists them. path need not exist: its
// deepest existing ancestor decides, after symlinks are resolved. Of the
// mounts whose mount point contains the path, the deepest one with the
// path's device number wins (the last mounted, for a mount point mounted
// over); if no such mount has that device number (btrfs subvolumes report
// their own), the deepest one does.
func MountOf(path string) (mountPoint, fsType string, err error) {
	p, err := filepath.Abs(path)
	if err != nil {
		return "", "", err
	}
	var st unix.Stat_t
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			err = unix.Stat(real, &st)
		}
		if err == nil {
			p = real
			break
		}
		if p == "/" {
			return "", "", fmt.Errorf("find the filesystem of %s: %w", path, err)
		}
		p = filepath.Dir(p)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", fmt.Errorf("find the filesystem of %s: %w", path, err)
	}
	defer f.Close()
	mountPoint, fsType, err = mountOf(f, p, uint64(st.Dev))
	if err != nil {
		return "", "", fmt.Errorf("find the filesystem of %s: %w", path, err)
	}
	return mountPoint, fsType, nil
}

// mountOf picks the mount of the absolute, symlink-free path p on device
// dev from the mountinfo text r (proc(5)).
func mountOf(r io.Reader, p string, dev uint64) (mountPoint, fsType string, err error) {
	type mount struct {
		point, fsType string
		dev           uint64
	}
	var best, bestDev *mount
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		m := &mount{point: unescapeMountinfo(fields[4]), fsType: fields[sep+1]}
		if !within(p, m.point) {
			continue
		}
		if maj, min, ok := strings.Cut(fields[2], ":"); ok {
			a, err1 := strconv.ParseUint(maj, 10, 32)
			b, err2 := strconv.ParseUint(min, 10, 32)
			if err1 == nil && err2 == nil {
				m.dev = unix.Mkdev(uint32(a), uint32(b))
			}
		}
		// Later lines are mounted later: on a tie they are on top.
		if best == nil || len(m.point) >= len(best.point) {
			best = m
		}
		if m.dev == dev && (bestDev == nil || len(m.point) >= len(bestDev.point)) {
			bestDev = m
		}
	}
	if err := sc.Err(); err != nil {
		return "", "", err
	}
	if bestDev != nil {
		best = bestDev
	}
	if best == nil {
		return "", "", fmt.Errorf("no mount holds %s", p)
	}
	return best.point, best.fsType, nil
}

// within reports whether path p is dir or below it.
func within(p, dir string) bool {
	if dir == "/" || p == dir {
		return true
	}
	return strings.HasPrefix(p, dir) && p[len(dir)] == '/'
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, \011,
// \012, \134) of a mountinfo path field.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
