package main

import (
	"crypto/sha256"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// treeSums maps each regular file below root to the hash of its content.
func treeSums(t *testing.T, root string) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		sums[rel] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

// TestDeterministic generates and changes two trees with the same seed and
// expects the same bytes, and the counts of the package comment.
func TestDeterministic(t *testing.T) {
	const n = 1000
	var sums [2]map[string][32]byte
	var logs [2]string
	for i := range 2 {
		dir := t.TempDir()
		if err := generate(dir, n, 7); err != nil {
			t.Fatal(err)
		}
		before := treeSums(t, dir)
		if len(before) != n {
			t.Fatalf("generated %d files, want %d", len(before), n)
		}
		var log strings.Builder
		s, err := applyChange(dir, 7, &log)
		if err != nil {
			t.Fatal(err)
		}
		if s.modified != 10 || s.added != 1 || s.deleted != 1 {
			t.Errorf("change: %s; want 10 modified, 1 added, 1 deleted", s)
		}
		sums[i], logs[i] = treeSums(t, dir), log.String()

		changed, gone := 0, 0
		for p, sum := range before {
			if after, ok := sums[i][p]; !ok {
				gone++
			} else if after != sum {
				changed++
			}
		}
		if gone != 1 || changed != 11 || len(sums[i]) != n {
			t.Errorf("%d files gone, %d changed, %d now; want 1, 11 (with the appended one), %d", gone, changed, len(sums[i]), n)
		}
	}
	if !maps.Equal(sums[0], sums[1]) || logs[0] != logs[1] {
		t.Error("two runs with the same seed made different trees")
	}
}

// TestGenerateRefusesNonEmpty keeps gentree from mixing into a tree.
func TestGenerateRefusesNonEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := generate(dir, 1, 1); err == nil {
		t.Fatal("generate wrote into a non-empty directory")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory now holds %d entries, want 1", len(ents))
	}
}
