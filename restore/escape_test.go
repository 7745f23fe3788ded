package restore_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/tree"
)

// rawEntry encodes one tree entry the way tree.Encode would, but without its
// checks: what a hostile repository could hold.
type rawEntry struct {
	name    string
	typ     tree.Type
	linkTo  string
	target  string
	subtree index.ID
	content []byte // file content, stored as one blob
}

func appendBytes(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func rawTree(entries ...rawEntry) []byte {
	b := []byte{tree.FormatVersion}
	b = binary.AppendUvarint(b, uint64(len(entries)))
	for _, e := range entries {
		b = appendBytes(b, e.name)
		b = append(b, byte(e.typ))
		b = binary.AppendUvarint(b, 0o644) // mode
		b = binary.AppendUvarint(b, 0)     // uid
		b = binary.AppendUvarint(b, 0)     // gid
		b = appendBytes(b, "")             // user
		b = appendBytes(b, "")             // group
		b = binary.AppendVarint(b, 1)      // mtime
		b = binary.AppendUvarint(b, 0)     // nsec
		b = binary.AppendUvarint(b, 0)     // flags
		b = binary.AppendUvarint(b, 0)     // xattrs
		b = appendBytes(b, e.linkTo)
		switch e.typ {
		case tree.File:
			if len(e.content) == 0 {
				b = binary.AppendUvarint(b, 0)
				break
			}
			b = binary.AppendUvarint(b, 1)
			id := index.Hash(e.content)
			b = append(b, 0)
			b = append(b, id[:]...)
			b = binary.AppendUvarint(b, uint64(len(e.content)))
		case tree.Dir:
			b = append(b, e.subtree[:]...)
		case tree.Symlink:
			b = appendBytes(b, e.target)
		}
	}
	return b
}

// storeHostile writes the given tree blobs (the last is the root) and data
// blobs into a repository with a snapshot of "/" naming the root.
func storeHostile(t *testing.T, r *chunkstore.Repo, data [][]byte, trees ...[]byte) *snapshot.Record {
	t.Helper()
	ctx := context.Background()
	up := r.NewUploader()
	defer up.Close()
	for _, d := range data {
		if _, err := up.Save(ctx, index.DataBlob, index.Hash(d), d); err != nil {
			t.Fatal(err)
		}
	}
	for _, tb := range trees {
		if _, err := up.Save(ctx, index.TreeBlob, index.Hash(tb), tb); err != nil {
			t.Fatal(err)
		}
	}
	root := index.Hash(trees[len(trees)-1])
	rootDir, err := snapshot.EncodeRootDir(tree.Node{Type: tree.Dir, Mode: 0o755, Subtree: root})
	if err != nil {
		t.Fatal(err)
	}
	rec := &snapshot.Record{Version: snapshot.RecordVersion, Time: time.Now(), Root: root, RootDir: rootDir,
		Set: "evil", Paths: []string{"/"}}
	b, err := rec.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.Flush(b); err != nil {
		t.Fatal(err)
	}
	return rec
}

// outsideUntouched fails if anything appeared next to the target.
func outsideUntouched(t *testing.T, base string, allowed ...string) {
	t.Helper()
	entries, err := os.ReadDir(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		ok := false
		for _, a := range allowed {
			ok = ok || e.Name() == a
		}
		if !ok {
			t.Errorf("restore wrote %s outside its target", filepath.Join(base, e.Name()))
		}
	}
}

func TestRestoreRejectsHostileNames(t *testing.T) {
	for _, name := range []string{"..", ".", "a/b", "../../escape", "nul\x00"} {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			r := openRepo(t)
			content := []byte("pwned")
			rec := storeHostile(t, r, [][]byte{content}, rawTree(rawEntry{name: name, typ: tree.File, content: content}))
			base := t.TempDir()
			target := filepath.Join(base, "target")
			_, err := restore.Run(context.Background(), r, rec, restore.Options{Target: target})
			if !errors.Is(err, tree.ErrCorrupt) {
				t.Fatalf("got %v, want a corrupt tree error", err)
			}
			outsideUntouched(t, base, "target")
			if entries, _ := os.ReadDir(target); len(entries) != 0 {
				t.Fatalf("target holds %d entries", len(entries))
			}
		})
	}
}

// A hostile snapshot holds a symlink "s" to a directory outside the target,
// then a directory "s" cannot follow it (names are unique), so it tries a
// hard link through it and a file in a directory reached through it.
func TestRestoreNeverFollowsSymlinks(t *testing.T) {
	r := openRepo(t)
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(outside, "victim"), []byte("safe"), 0o644)
	content := []byte("pwned")
	inner := rawTree(rawEntry{name: "victim", typ: tree.File, content: content})
	root := rawTree(
		rawEntry{name: "a-link", typ: tree.File, linkTo: "s/victim", content: content},
		rawEntry{name: "b-link", typ: tree.File, linkTo: "../outside/victim", content: content},
		rawEntry{name: "s", typ: tree.Symlink, target: outside},
	)
	rec := storeHostile(t, r, [][]byte{content}, inner, root)
	target := filepath.Join(base, "target")
	// The target already has "d" as a symlink to outside; the snapshot's
	// directory "d" must replace it, not write through it.
	os.MkdirAll(target, 0o755)
	os.Symlink(outside, filepath.Join(target, "d"))
	root2 := rawTree(rawEntry{name: "d", typ: tree.Dir, subtree: index.Hash(inner)})
	rec2 := storeHostile(t, r, nil, root2)

	for _, rc := range []*snapshot.Record{rec, rec2} {
		if _, err := restore.Run(context.Background(), r, rc, restore.Options{Target: target}); err != nil && !errors.Is(err, restore.ErrIncomplete) {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(filepath.Join(outside, "victim"))
	if string(got) != "safe" {
		t.Fatalf("a file outside the target was written: %q", got)
	}
	outsideUntouched(t, base, "target", "outside")
	if fi, err := os.Lstat(filepath.Join(target, "d")); err != nil || !fi.IsDir() {
		t.Fatalf("d should now be a real directory: %v", err)
	}
}
