package chunkstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LockMode says how a process holds the repository.
type LockMode int

// Lock modes: readers share the repository, a writer holds it alone.
const (
	Shared LockMode = iota
	Exclusive
)

// LockedError is returned when the repository lock is held by another process.
type LockedError struct {
	Dir    string
	Holder string // "pid 4242 (snapshot since 10:03:00)", or "a reader"
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("repository %s is locked by %s; wait or stop it", e.Dir, e.Holder)
}

// ErrLocked matches a *LockedError with errors.Is.
var ErrLocked = errors.New("repository is locked")

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// lock is a flock on the repository's lock file: the kernel drops it when the
// process dies, so a killed process leaves no stale lock.
type lock struct {
	f    *os.File
	mode LockMode
}

func acquireLock(dir string, mode LockMode, what string, wait time.Duration) (*lock, error) {
	name := filepath.Join(dir, "lock")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", name, err)
	}
	how := unix.LOCK_SH
	if mode == Exclusive {
		how = unix.LOCK_EX
	}
	deadline := time.Now().Add(wait)
	for {
		err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		if time.Now().After(deadline) {
			holder := lockHolder(f)
			f.Close()
			return nil, &LockedError{Dir: dir, Holder: holder}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if mode == Exclusive {
		info := fmt.Sprintf("pid %d (%s since %s)\n", os.Getpid(), what, time.Now().Format("2006-01-02 15:04:05"))
		if err := f.Truncate(0); err == nil {
			f.WriteAt([]byte(info), 0)
		}
	}
	return &lock{f: f, mode: mode}, nil
}

// lockHolder describes the process holding f's lock from what the last
// exclusive holder wrote, if that process is still alive.
func lockHolder(f *os.File) string {
	buf := make([]byte, 256)
	n, _ := f.ReadAt(buf, 0)
	info := strings.TrimSpace(string(buf[:n]))
	if pidText, rest, ok := strings.Cut(strings.TrimPrefix(info, "pid "), " "); ok {
		if pid, err := strconv.Atoi(pidText); err == nil && unix.Kill(pid, 0) == nil {
			return "pid " + pidText + " " + rest
		}
	}
	return "another process reading it"
}

func (l *lock) release() {
	if l == nil || l.f == nil {
		return
	}
	if l.mode == Exclusive {
		l.f.Truncate(0)
	}
	l.f.Close()
	l.f = nil
}
