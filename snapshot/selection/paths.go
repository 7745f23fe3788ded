package selection

import (
	"errors"
	"fmt"
	"strings"
)

// cleanPath returns the clean form of the absolute path p: duplicate
// slashes, "." components and a trailing "/" removed, "/" for the root.
// Nothing else changes: bytes are kept as they are and ".." is refused, as
// it could change meaning across a symbolic link.
func cleanPath(p string) (string, error) {
	switch {
	case p == "":
		return "", errors.New("empty path")
	case p[0] != '/':
		return "", fmt.Errorf("path %q: not absolute (listed paths start with /)", p)
	case strings.IndexByte(p, 0) >= 0:
		return "", fmt.Errorf("path %q: contains a NUL byte", p)
	}
	var b strings.Builder
	b.Grow(len(p))
	rest := p
	for rest != "" {
		var comp string
		comp, rest, _ = strings.Cut(rest, "/")
		switch comp {
		case "", ".":
			continue
		case "..":
			return "", fmt.Errorf("path %q: \"..\" is not allowed in a listed path", p)
		}
		b.WriteByte('/')
		b.WriteString(comp)
	}
	if b.Len() == 0 {
		return "/", nil
	}
	return b.String(), nil
}

// parentDir returns the directory holding the clean path p ("/" for
// "/etc") and p's final component.
func parentDir(p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/", p[i+1:]
	}
	return p[:i], p[i+1:]
}

// childPath joins the clean directory dir and a name.
func childPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}
