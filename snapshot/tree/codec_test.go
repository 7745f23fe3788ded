package tree

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/understudy/understudy/index"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// sample is a tree with every node type and field set.
func sample() *Tree {
	return &Tree{Nodes: []Node{
		{Name: "sock", Type: Socket, Mode: 0o755, MtimeSec: 5},
		{Name: "bin", Type: Dir, Mode: 0o755, UID: 0, GID: 0, User: "root", Group: "root",
			MtimeSec: 1700000000, MtimeNsec: 123456789, Subtree: index.Hash([]byte("subtree")),
			Xattrs: []Xattr{{Name: "user.b", Value: []byte{0, 1, 2}}, {Name: "system.posix_acl_default", Value: []byte("acl")}}},
		{Name: "file", Type: File, Mode: 0o4755, UID: 1234, GID: 5678, MtimeSec: -86400, MtimeNsec: 1, Flags: 0x10,
			Content: []Extent{{Blob: index.Hash([]byte("a")), Length: 1}, {Length: 1 << 40}, {Blob: index.Hash([]byte("b")), Length: 1}}},
		{Name: "link", Type: File, Mode: 0o644, LinkTo: "../x/file", Content: []Extent{{Blob: index.Hash([]byte("a")), Length: 1}}},
		{Name: "sym", Type: Symlink, Mode: 0o777, Target: "/etc/\xff\nweird"},
		{Name: "sda", Type: BlockDev, Mode: 0o660, Rdev: 0x801},
		{Name: "tty", Type: CharDev, Mode: 0o620, Rdev: 0x400},
		{Name: "fifo", Type: FIFO, Mode: 0o600},
		{Name: "non-utf8-\xfe\xff", Type: File, Mode: 0o600},
		{Name: "new\nline", Type: File, Mode: 0o600, MtimeSec: 4102444800},
	}}
}

func TestRoundTrip(t *testing.T) {
	data, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	want := sample()
	if _, err := Encode(want); err != nil { // sorts want the same way
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, want)
	}
	again, err := Encode(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, data) {
		t.Fatal("re-encoding a decoded tree gives other bytes")
	}
}

// TestGolden pins the encoding: a change here changes every tree ID.
func TestGolden(t *testing.T) {
	data, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "sample.tree")
	if *update {
		if err := os.WriteFile(golden, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(data, want) {
		t.Fatalf("encoding changed: ID %s, golden %s", index.Hash(data), index.Hash(want))
	}
}

func TestEncodeOrderIndependent(t *testing.T) {
	a, b := sample(), sample()
	for i, j := 0, len(b.Nodes)-1; i < j; i, j = i+1, j-1 {
		b.Nodes[i], b.Nodes[j] = b.Nodes[j], b.Nodes[i]
	}
	da, _ := Encode(a)
	db, _ := Encode(b)
	if !bytes.Equal(da, db) {
		t.Fatal("encoding depends on input order")
	}
}

func TestEncodeRejects(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "nul\x00"} {
		if _, err := Encode(&Tree{Nodes: []Node{{Name: name, Type: File}}}); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if _, err := Encode(&Tree{Nodes: []Node{{Name: "a", Type: File}, {Name: "a", Type: File}}}); err == nil {
		t.Error("duplicate accepted")
	}
	if _, err := Encode(&Tree{Nodes: []Node{{Name: "a", Type: File, Mode: 0o10000}}}); err == nil {
		t.Error("mode with type bits accepted")
	}
}

// encodeRaw builds a tree blob without Encode's checks, as an attacker would.
func encodeRaw(nodes ...Node) []byte {
	buf := []byte{FormatVersion, byte(len(nodes))}
	for i := range nodes {
		var err error
		buf, err = appendNode(buf, &nodes[i])
		if err != nil {
			panic(err)
		}
	}
	return buf
}

func TestDecodeRejectsHostileNames(t *testing.T) {
	for _, name := range []string{"..", ".", "a/b", "/", "", "x\x00y"} {
		_, err := Decode(encodeRaw(Node{Name: name, Type: File}))
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("name %q: got %v, want ErrCorrupt", name, err)
		}
	}
	_, err := Decode(encodeRaw(Node{Name: "b", Type: File}, Node{Name: "a", Type: File}))
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("unsorted: got %v", err)
	}
}

func TestDecodeSmallestEntry(t *testing.T) {
	// A FIFO named "f" with every number zero is the smallest entry: 13
	// bytes. The count bound must admit it, and an overlong varint in it
	// must be refused, so one tree has one encoding.
	blob, err := Encode(&Tree{Nodes: []Node{{Name: "f", Type: FIFO}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(blob) != 2+13 {
		t.Fatalf("smallest tree is %d bytes", len(blob))
	}
	if _, err := Decode(blob); err != nil {
		t.Fatalf("smallest tree: %v", err)
	}
	// The mtime is the ninth byte of the entry; pad it to 0x80 0x80 0x00.
	const mtime = 2 + 8
	long := append(append(append([]byte{}, blob[:mtime]...), 0x80, 0x80, 0x00), blob[mtime+1:]...)
	if _, err := Decode(long); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("overlong varint: got %v", err)
	}
}

func TestDecodeRejectsHugeCounts(t *testing.T) {
	// A count far beyond the blob must fail before allocating for it.
	blob := []byte{FormatVersion, 0xff, 0xff, 0xff, 0xff, 0x0f}
	if _, err := Decode(blob); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("got %v", err)
	}
	good, _ := Encode(sample())
	for i := range good {
		if _, err := Decode(good[:i]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", i)
		}
	}
}

func FuzzDecode(f *testing.F) {
	good, _ := Encode(sample())
	f.Add(good)
	f.Add([]byte{FormatVersion, 0})
	f.Add(encodeRaw(Node{Name: "..", Type: Dir}))
	for _, n := range sample().Nodes {
		one, _ := AppendNode(nil, &n)
		f.Add(one)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// The same bytes as one node (the change cache and a snapshot's
		// root directory hold nodes alone): canonical too.
		if n, err := DecodeNode(data); err == nil {
			again, err := AppendNode(nil, &n)
			if err != nil {
				t.Fatalf("decoded node does not encode: %v", err)
			}
			if !bytes.Equal(again, data) {
				t.Fatalf("node re-encoding differs:\n got %x\nwant %x", again, data)
			}
		}
		tr, err := Decode(data)
		if err != nil {
			return
		}
		for _, n := range tr.Nodes {
			if err := CheckName(n.Name); err != nil {
				t.Fatalf("decoded a bad name: %v", err)
			}
		}
		// The encoding is canonical: whatever decodes re-encodes to the
		// same bytes, so a tree has one ID.
		again, err := Encode(tr)
		if err != nil {
			t.Fatalf("decoded tree does not encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, data)
		}
	})
}
