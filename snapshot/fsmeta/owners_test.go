package fsmeta

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestNewOwners(t *testing.T) {
	for _, p := range []string{"/etc/passwd", "/etc/group"} {
		data, err := os.ReadFile(p)
		if err != nil || !strings.HasPrefix(string(data), "root:") && !strings.Contains(string(data), "\nroot:") {
			t.Skipf("%s has no root entry (%v)", p, err)
		}
	}
	o := NewOwners()
	if u, g := o.User(0), o.Group(0); u != "root" || g != "root" {
		t.Errorf("uid 0 is %q, gid 0 is %q; want root and root", u, g)
	}
	const unknown = 3999999999
	if u, g := o.User(unknown), o.Group(unknown); u != "" || g != "" {
		t.Errorf("unknown id: %q, %q; want no names", u, g)
	}
}

func TestOwnersNilAndMissingFiles(t *testing.T) {
	var nilOwners *Owners
	if nilOwners.User(0) != "" || nilOwners.Group(0) != "" {
		t.Error("a nil Owners knows names")
	}
	dir := t.TempDir()
	o := &Owners{passwdPath: filepath.Join(dir, "none"), groupPath: dir} // a directory: unreadable as a file
	if o.User(0) != "" || o.Group(0) != "" {
		t.Error("names from missing files")
	}
}

// TestOwnersConcurrent is for the race detector: the first use loads the
// files once, whoever asks.
func TestOwnersConcurrent(t *testing.T) {
	o := testOwners(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if i%2 == 0 && o.User(1234) != "alice" {
				t.Error("uid 1234 is not alice")
			}
			if i%2 == 1 && o.Group(5678) != "staff" {
				t.Error("gid 5678 is not staff")
			}
		})
	}
	wg.Wait()
}

func TestParseIDs(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     map[uint32]string
	}{
		{"passwd", "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/sbin/nologin\n",
			map[uint32]string{0: "root", 1: "daemon"}},
		{"group", "root:x:0:\nstaff:x:5678:alice,bob\n", map[uint32]string{0: "root", 5678: "staff"}},
		{"first name of an id wins", "toor:x:0:0::/:/bin/sh\nroot:x:0:0::/:/bin/sh\n", map[uint32]string{0: "toor"}},
		{"comments, NIS and blank lines", "# comment\n\n+nis:x:5::\n-minus:x:6::\n+\nok:x:7::\n", map[uint32]string{7: "ok"}},
		{"bad lines", "noid\nshort:x\nempty::9:\n:x:10:\nneg:x:-1:\nbig:x:4294967296:\nword:x:abc:\nmax:x:4294967295:\n",
			map[uint32]string{9: "empty", 4294967295: "max"}},
		{"no final newline, CRLF", "a:x:1:1\r\nb:x:2:2", map[uint32]string{1: "a", 2: "b"}},
		{"empty", "", map[uint32]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := make(map[uint32]string)
			parseIDs(strings.NewReader(tc.in), got)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parseIDs = %v, want %v", got, tc.want)
			}
		})
	}
}

// FuzzParseIDs feeds arbitrary passwd/group files: the parser must not panic,
// must return only names that a file line can hold, and must read its own
// rendering of the result back to the same map.
func FuzzParseIDs(f *testing.F) {
	f.Add("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/bin/false\n")
	f.Add("# c\n+x\n-y:1:2\nstaff:x:5678:a,b\n\n:x:1:\nq:x:99999999999:\n")
	f.Add("a:b:c:d\r\n\x00:\x00:1\n\xff:x:7:\n")
	f.Fuzz(func(t *testing.T, in string) {
		got := make(map[uint32]string)
		parseIDs(strings.NewReader(in), got)
		var b strings.Builder
		for _, id := range slices.Sorted(maps.Keys(got)) {
			name := got[id]
			if name == "" || strings.ContainsAny(name, ":\n") || strings.IndexAny(name[:1], "#+-") == 0 {
				t.Fatalf("id %d has the name %q", id, name)
			}
			if !strings.Contains(in, name+":") {
				t.Fatalf("name %q not in the input", name)
			}
			fmt.Fprintf(&b, "%s:x:%d:\n", name, id)
		}
		again := make(map[uint32]string)
		parseIDs(strings.NewReader(b.String()), again)
		if !reflect.DeepEqual(got, again) {
			t.Fatalf("re-parsing %q gives %v, want %v", b.String(), again, got)
		}
	})
}
