package fsmeta

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrUnsupported marks an attribute that the filesystem or kernel
	// refuses as unsupported (EOPNOTSUPP), such as security.selinux where
	// SELinux is absent or inode flags on a filesystem without them. Apply
	// still sets every other attribute; the caller may warn and go on.
	ErrUnsupported = errors.New("not supported by the filesystem")

	// ErrChanged means an entry is no longer what the caller's stat said:
	// another type or another inode took its name in the meantime.
	ErrChanged = errors.New("entry changed while being processed")
)

// Error is a failure to read or write one attribute of one entry.
type Error struct {
	Name string // the entry's name in its directory
	Op   string // what failed, e.g. "set mode" or "read xattr user.a"
	Err  error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s of %s: %v", e.Op, quoteName(e.Name), e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

func newError(name, op string, err error) error {
	return &Error{Name: name, Op: op, Err: err}
}

// unsupported wraps an EOPNOTSUPP from the kernel with ErrUnsupported.
func unsupported(name, op string, err error) error {
	return &Error{Name: name, Op: op, Err: fmt.Errorf("%w (%w)", ErrUnsupported, err)}
}

// quoteName quotes a name only when it holds bytes that would make a message
// ambiguous (spaces, newlines, non-UTF-8).
func quoteName(name string) string {
	if name == "" || strings.ContainsFunc(name, func(r rune) bool {
		return r <= ' ' || r == '"' || r == 0x7f || r == '\uFFFD'
	}) {
		return fmt.Sprintf("%q", name)
	}
	return name
}
