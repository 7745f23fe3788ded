package selection

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// node is one entry of a declarative test tree.
type node struct {
	path   string // relative to the tree root: "etc/init.d/S99x"
	kind   byte   // 'f' file, 'd' directory, 'l' symbolic link
	target string // 'l' only
}

func file(p string) node            { return node{path: p, kind: 'f'} }
func emptyDir(p string) node        { return node{path: p, kind: 'd'} }
func symlink(p, target string) node { return node{path: p, kind: 'l', target: target} }

// buildTree creates nodes under root; missing parents become directories.
func buildTree(t *testing.T, root string, nodes []node) {
	t.Helper()
	for _, n := range nodes {
		full := filepath.Join(root, n.path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch n.kind {
		case 'f':
			err = os.WriteFile(full, []byte(n.path), 0o644)
		case 'd':
			err = os.MkdirAll(full, 0o755)
		case 'l':
			err = os.Symlink(n.target, full)
		default:
			t.Fatalf("node %q: unknown kind %q", n.path, n.kind)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// walkSelection walks the tree under root the way the package doc's
// algorithm says the walker does and returns the class of every path it
// takes (Ancestor or InScope), "/" included.
func walkSelection(t *testing.T, sel *Selection, root string) map[string]Class {
	t.Helper()
	got := map[string]Class{"/": sel.Root()}
	var walk func(dir string, class Class)
	walk = func(dir string, class Class) {
		var names []string
		if class == Ancestor {
			names = sel.Needed(dir)
		} else {
			ents, err := os.ReadDir(root + dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				names = append(names, e.Name())
			}
		}
		for _, name := range names {
			p := childPath(dir, name)
			fi, err := os.Lstat(root + p)
			if class == Ancestor && errors.Is(err, fs.ErrNotExist) {
				continue // a listed path that does not exist
			}
			if err != nil {
				t.Fatal(err)
			}
			c := sel.Child(class, p, fi.IsDir())
			if c == Outside {
				continue
			}
			got[p] = c
			if fi.IsDir() {
				walk(p, c)
			}
		}
	}
	walk("/", sel.Root())
	return got
}

// withClass returns the sorted paths of m that have class c.
func withClass(m map[string]Class, c Class) []string {
	var out []string
	for p, pc := range m {
		if pc == c {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// setDiff returns a readable report of the paths only in a and only in b,
// or "" if the sorted lists are equal.
func setDiff(aName string, a []string, bName string, b []string) string {
	in := func(s []string, x string) bool { _, ok := slices.BinarySearch(s, x); return ok }
	a, b = slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))
	var sb strings.Builder
	for _, x := range a {
		if !in(b, x) {
			sb.WriteString("  only in " + aName + ": " + strconv.Quote(x) + "\n")
		}
	}
	for _, x := range b {
		if !in(a, x) {
			sb.WriteString("  only in " + bName + ": " + strconv.Quote(x) + "\n")
		}
	}
	return sb.String()
}
