package fsmeta

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/tree"
)

// xattrHandle names the inode whose xattrs are read or written: an open
// descriptor (the f*xattr calls) or, when fd < 0, a path whose final
// component is not followed (the l*xattr calls).
type xattrHandle struct {
	fd   int
	path string
}

// entryPath returns a path for name in dirfd that the kernel resolves through
// the descriptor, for the calls that only take paths.
func entryPath(dirfd int, name string) string {
	if dirfd == unix.AT_FDCWD {
		return name
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name)
}

func (h xattrHandle) list(buf []byte) (int, error) {
	if h.fd >= 0 {
		return unix.Flistxattr(h.fd, buf)
	}
	return unix.Llistxattr(h.path, buf)
}

func (h xattrHandle) get(name string, buf []byte) (int, error) {
	if h.fd >= 0 {
		return unix.Fgetxattr(h.fd, name, buf)
	}
	return unix.Lgetxattr(h.path, name, buf)
}

func (h xattrHandle) set(name string, value []byte) error {
	if h.fd >= 0 {
		return unix.Fsetxattr(h.fd, name, value, 0)
	}
	return unix.Lsetxattr(h.path, name, value, 0)
}

func (h xattrHandle) remove(name string) error {
	if h.fd >= 0 {
		return unix.Fremovexattr(h.fd, name)
	}
	return unix.Lremovexattr(h.path, name)
}

// notSupported reports whether err means the filesystem has no xattrs (or not
// this one). ENOTSUP and EOPNOTSUPP are the same number on Linux.
func notSupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP)
}

// names lists the xattr names of the inode; none if the filesystem has no
// xattrs.
func (h xattrHandle) names() ([]string, error) {
	buf := make([]byte, 512)
	for {
		n, err := h.list(buf)
		if errors.Is(err, unix.ERANGE) {
			// The list grew since we sized the buffer; ask for its size.
			size, err := h.list(nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, max(size, 2*len(buf)))
			continue
		}
		if err != nil {
			if notSupported(err) {
				return nil, nil
			}
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

// value returns the value of one xattr, reusing buf, and false if it has
// vanished since it was listed.
func (h xattrHandle) value(name string, buf *[]byte) ([]byte, bool, error) {
	for {
		n, err := h.get(name, *buf)
		if errors.Is(err, unix.ERANGE) {
			size, err := h.get(name, nil)
			if err != nil {
				if errors.Is(err, unix.ENODATA) {
					return nil, false, nil
				}
				return nil, false, err
			}
			*buf = make([]byte, max(size, 2*len(*buf)))
			continue
		}
		if err != nil {
			if errors.Is(err, unix.ENODATA) {
				return nil, false, nil
			}
			return nil, false, err
		}
		return bytes.Clone((*buf)[:n]), true, nil
	}
}

// readXattrs returns all xattrs of the inode sorted by name, nil if it has
// none. Empty values are non-nil empty slices.
func readXattrs(h xattrHandle) ([]tree.Xattr, error) {
	names, err := h.names()
	if err != nil || len(names) == 0 {
		return nil, err
	}
	slices.Sort(names)
	buf := make([]byte, 4096)
	xattrs := make([]tree.Xattr, 0, len(names))
	for _, name := range names {
		v, ok, err := h.value(name, &buf)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if !ok {
			continue
		}
		if v == nil {
			v = []byte{}
		}
		xattrs = append(xattrs, tree.Xattr{Name: name, Value: v})
	}
	if len(xattrs) == 0 {
		return nil, nil
	}
	return xattrs, nil
}

// applyXattrs makes the inode's xattrs exactly want: it removes the ones not
// in want and sets every one in want. Attributes the filesystem refuses as
// unsupported are returned in skipped (wrapping ErrUnsupported); any other
// failure stops it.
func applyXattrs(h xattrHandle, entry string, want []tree.Xattr) (skipped []error, err error) {
	have, err := h.names()
	if err != nil {
		return nil, newError(entry, "list xattrs", err)
	}
	for _, name := range have {
		if slices.ContainsFunc(want, func(x tree.Xattr) bool { return x.Name == name }) {
			continue
		}
		err := h.remove(name)
		switch {
		case err == nil, errors.Is(err, unix.ENODATA):
		case notSupported(err):
			skipped = append(skipped, unsupported(entry, "remove xattr "+name, err))
		default:
			return skipped, newError(entry, "remove xattr "+name, err)
		}
	}
	for _, x := range want {
		err := h.set(x.Name, x.Value)
		switch {
		case err == nil:
		case notSupported(err):
			skipped = append(skipped, unsupported(entry, "set xattr "+x.Name, err))
		default:
			return skipped, newError(entry, "set xattr "+x.Name, err)
		}
	}
	return skipped, nil
}
