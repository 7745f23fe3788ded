package selection

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestCleanPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/", "/"},
		{"//", "/"},
		{"/./", "/"},
		{"/.", "/"},
		{"/etc", "/etc"},
		{"/etc/", "/etc"},
		{"/etc//", "/etc"},
		{"//etc", "/etc"},
		{"/etc//./init.d/", "/etc/init.d"},
		{"/etc/init.d/.", "/etc/init.d"},
		{"/...", "/..."},
		{"/a/..b/c..", "/a/..b/c.."},
		{"/.hidden/", "/.hidden"},
		{"/new\nline/", "/new\nline"},
		{"/bad\xff\xfe/x", "/bad\xff\xfe/x"},
		{`/back\slash`, `/back\slash`},
		{"/with space/", "/with space"},
	} {
		got, err := cleanPath(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("cleanPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "empty path"},
		{"etc/passwd", "not absolute"},
		{"./etc", "not absolute"},
		{"/..", `".."`},
		{"/etc/..", `".."`},
		{"/etc/../passwd", `".."`},
		{"/a/./../b/", `".."`},
		{"/a\x00b", "NUL"},
	} {
		got, err := cleanPath(tc.in)
		if err == nil {
			t.Errorf("cleanPath(%q) = %q, want an error", tc.in, got)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || (tc.in != "" && !strings.Contains(err.Error(), strconv.Quote(tc.in))) {
			t.Errorf("cleanPath(%q): error %q should name the path and say %q", tc.in, err, tc.want)
		}
	}
}

func TestParentDir(t *testing.T) {
	for _, tc := range []struct{ p, dir, name string }{
		{"/etc", "/", "etc"},
		{"/etc/init.d", "/etc", "init.d"},
		{"/a/b/c", "/a/b", "c"},
	} {
		dir, name := parentDir(tc.p)
		if dir != tc.dir || name != tc.name {
			t.Errorf("parentDir(%q) = %q, %q; want %q, %q", tc.p, dir, name, tc.dir, tc.name)
		}
		if got := childPath(dir, name); got != tc.p {
			t.Errorf("childPath(%q, %q) = %q, want %q", dir, name, got, tc.p)
		}
	}
}

func TestNew(t *testing.T) {
	paths := []string{"/etc/passwd", "/etc//init.d/", "/", "/etc/passwd/", "/etc/./init.d", "/usr"}
	excludes := []string{"/etc/", "- core"}
	sel, err := New(paths, excludes, true)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sel.Paths(), []string{"/", "/etc/init.d", "/etc/passwd", "/usr"}; !slices.Equal(got, want) {
		t.Errorf("Paths() = %q, want %q", got, want)
	}
	if got := sel.Excludes(); !slices.Equal(got, excludes) {
		t.Errorf("Excludes() = %q, want %q", got, excludes)
	}
	if !sel.OneFileSystem() {
		t.Error("OneFileSystem() = false")
	}
	// The accessors hand out copies.
	sel.Paths()[0] = "/x"
	sel.Excludes()[0] = "/x"
	sel.Needed("/etc")[0] = "x"
	if sel.Paths()[0] != "/" || sel.Excludes()[0] != "/etc/" || sel.Needed("/etc")[0] != "init.d" {
		t.Error("a caller changed the selection through a returned slice")
	}
	excludes[0] = "/y"
	if sel.Excludes()[0] != "/etc/" {
		t.Error("New kept the caller's excludes slice")
	}

	if _, err := New(nil, nil, false); err == nil {
		t.Error("New with no paths: no error")
	}
	for _, bad := range []string{"etc", "/etc/../passwd", ""} {
		if _, err := New([]string{"/", bad}, nil, false); err == nil {
			t.Errorf("New with path %q: no error", bad)
		}
	}
	if _, err := New([]string{"/"}, []string{"/ok", "+ /etc/"}, false); err == nil {
		t.Error(`New with exclude "+ /etc/": no error`)
	}
}

func TestClassString(t *testing.T) {
	for c, want := range map[Class]string{Outside: "outside", Ancestor: "ancestor", InScope: "in scope", 7: "Class(7)"} {
		if got := c.String(); got != want {
			t.Errorf("Class(%d).String() = %q, want %q", c, got, want)
		}
	}
}

// seedSelection is the seed script's whole selection, with a few more
// listed paths below excluded directories.
func seedSelection(t *testing.T) *Selection {
	t.Helper()
	paths := append(slices.Clone(seedIncludes), "/var/adm/sa/keep", "/dev/dsk/")
	sel, err := New(paths, seedExcludes, true)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

func TestRootAndNeeded(t *testing.T) {
	sel := seedSelection(t)
	if got := sel.Root(); got != InScope {
		t.Errorf(`Root() = %v with "/" listed, want in scope`, got)
	}
	for dir, want := range map[string][]string{
		"/":        {"dev", "etc", "var"},
		"/etc":     {"group", "inet", "init.d", "lp", "net", "opt", "passwd", "printers.conf", "profile", "rc0.d", "rc2.d", "rc3.d", "rcS.d", "resolv.conf", "shadow", "ssh", "system", "vfstab"},
		"/var":     {"adm"},
		"/var/adm": {"sa"},
		"/dev":     {"dsk"},
	} {
		if got := sel.Needed(dir); !slices.Equal(got, want) {
			t.Errorf("Needed(%q) = %q, want %q", dir, got, want)
		}
	}
	for _, dir := range []string{"/usr", "/etc/init.d", "/etc/passwd", "/var/adm/sa/keep", "/dev/dsk"} {
		if got := sel.Needed(dir); got != nil {
			t.Errorf("Needed(%q) = %q, want nil", dir, got)
		}
	}

	sel, err := New([]string{"/etc/passwd", "/etc/group", "/export/home/"}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := sel.Root(); got != Ancestor {
		t.Errorf(`Root() = %v without "/" listed, want ancestor`, got)
	}
	if got, want := sel.Needed("/"), []string{"etc", "export"}; !slices.Equal(got, want) {
		t.Errorf(`Needed("/") = %q, want %q`, got, want)
	}
	if got, want := sel.Needed("/etc"), []string{"group", "passwd"}; !slices.Equal(got, want) {
		t.Errorf(`Needed("/etc") = %q, want %q`, got, want)
	}
}

func TestChild(t *testing.T) {
	sel := seedSelection(t)
	for _, tc := range []struct {
		parent Class
		p      string
		dir    bool
		want   Class
	}{
		{InScope, "/usr", true, InScope},
		{InScope, "/usr/bin/ls", false, InScope},
		// An excluded directory holding listed paths is an Ancestor...
		{InScope, "/etc", true, Ancestor},
		{InScope, "/var/adm/sa", true, Ancestor},
		{InScope, "/dev", true, Ancestor},
		// "/etc/" excludes directories only: a file /etc is taken.
		{InScope, "/etc", false, InScope},
		// Only a directory is an Ancestor.
		{Ancestor, "/var/adm", false, Outside},
		// Excluded, with nothing listed below: outside.
		{InScope, "/devices", true, Outside},
		{InScope, "/proc", true, Outside},
		{InScope, "/kernel/drv/sd.conf", false, Outside},
		{InScope, "/usr/emc/API/symapi/db", true, Outside},
		{InScope, "/usr/emc/API/symapi/log", false, Outside},
		// Listed paths are taken under an excluded directory...
		{Ancestor, "/etc/passwd", false, InScope},
		{Ancestor, "/etc/init.d", true, InScope},
		{Ancestor, "/var/adm/sa/keep", false, InScope},
		{Ancestor, "/dev/dsk", true, InScope},
		// ...and the rest of it is not.
		{Ancestor, "/etc/hosts", false, Outside},
		{Ancestor, "/etc/default", true, Outside},
		{Ancestor, "/var/adm/sa/sa01", false, Outside},
		{Ancestor, "/dev/null", false, Outside},
		// Under a listed directory, the patterns still apply.
		{InScope, "/etc/init.d/volmgt", false, InScope},
		{InScope, "/dev/dsk/c0t0d0s0", false, InScope},
		// A listed path is never excluded, whatever its parent.
		{InScope, "/etc/passwd", false, InScope},
		{Outside, "/etc/passwd", false, InScope},
		{Outside, "/etc/init.d", true, InScope},
		// Not listed, not in scope, not an ancestor.
		{Outside, "/usr", true, Outside},
		{Ancestor, "/etc/init.d.old", true, Outside},
	} {
		if got := sel.Child(tc.parent, tc.p, tc.dir); got != tc.want {
			t.Errorf("Child(%v, %q, dir=%v) = %v, want %v", tc.parent, tc.p, tc.dir, got, tc.want)
		}
	}
}

// TestListedUnderExcluded walks a tree: a listed path is always taken even
// under an excluded directory, with the patterns applying below it, and
// its excluded ancestors are Ancestor directories, of which only the
// needed children are visited.
func TestListedUnderExcluded(t *testing.T) {
	root := t.TempDir()
	buildTree(t, root, []node{
		file("etc/passwd"),
		file("etc/hosts"),
		file("etc/init.d/S99x"),
		file("etc/init.d/S99x.bak"),
		file("etc/init.d/core/x"),
		file("var/adm/sa/keep/sa01"),
		file("var/adm/sa/keep/core"),
		file("var/adm/sa/sa02"),
		file("var/adm/messages"),
		file("var/log/core"),
		file("usr/bin/ls"),
		file("core"),
	})
	sel, err := New(
		[]string{"/etc/passwd", "/etc/init.d/", "/var/adm/sa/keep/", "/var/adm/missing", "/etc/core"},
		[]string{"/etc/", "/var/adm/sa/", "core", "*.bak"},
		false)
	if err != nil {
		t.Fatal(err)
	}
	got := walkSelection(t, sel, root)
	want := map[string]Class{
		"/":                     Ancestor,
		"/etc":                  Ancestor,
		"/etc/passwd":           InScope,
		"/etc/init.d":           InScope,
		"/etc/init.d/S99x":      InScope,
		"/var":                  Ancestor,
		"/var/adm":              Ancestor,
		"/var/adm/sa":           Ancestor,
		"/var/adm/sa/keep":      InScope,
		"/var/adm/sa/keep/sa01": InScope,
	}
	var gotList, wantList []string
	for p, c := range got {
		gotList = append(gotList, p+" "+c.String())
	}
	for p, c := range want {
		wantList = append(wantList, p+" "+c.String())
	}
	if d := setDiff("walk", gotList, "want", wantList); d != "" {
		t.Errorf("walk:\n%s", d)
	}
}

// TestConcurrentUse exercises the claim that a Selection is safe for
// concurrent use (run with -race).
func TestConcurrentUse(t *testing.T) {
	sel := seedSelection(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				if sel.Child(InScope, "/etc", true) != Ancestor || !sel.Excluded("/proc", true) ||
					len(sel.Needed("/etc")) == 0 || len(sel.Paths()) == 0 {
					t.Error("wrong answer under concurrent use")
					return
				}
			}
		})
	}
	wg.Wait()
}
