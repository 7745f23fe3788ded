package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
)

// Size of a change; see the package comment.
const (
	modifyPerMille = 10      // files modified in place, per thousand
	addPerMille    = 1       // files added, per thousand
	deletePerMille = 1       // files deleted, per thousand
	maxFlip        = 16      // bytes flipped by one modification, at most
	appendSize     = 8 << 20 // bytes appended to the largest file
)

// file is a regular file of the tree, by path relative to its root.
type file struct {
	rel  string
	size int64
}

// summary counts what applyChange did.
type summary struct {
	files                       int // regular files before the change
	modified, added, deleted    int
	appendedTo                  string
	appendedFrom, appendedBytes int64
}

func (s summary) String() string {
	return fmt.Sprintf("%d regular files: modified %d in place, added %d, deleted %d, appended %d bytes to %s (was %d bytes)",
		s.files, s.modified, s.added, s.deleted, s.appendedBytes, s.appendedTo, s.appendedFrom)
}

// applyChange applies one change to the tree root, printing one line per
// action to w.
//
//	files := regular files below root, sorted by path
//	big := the largest (the first by path among equals); take it out of files
//	shuffle files with the seed, then deal them out in that order:
//	  to modify, while it needs more and the file is not empty
//	  else to delete, while it needs more
//	  else as a source to copy, while it needs more
//	modify, add, delete, append to big
func applyChange(root string, seed uint64, w io.Writer) (summary, error) {
	files, err := regularFiles(root)
	if err != nil {
		return summary{}, err
	}
	if len(files) < 2 {
		return summary{}, fmt.Errorf("%s has %d regular files; a change needs at least 2", root, len(files))
	}
	s := summary{files: len(files)}
	bi := 0
	for i, f := range files {
		if f.size > files[bi].size {
			bi = i
		}
	}
	big := files[bi]
	files = slices.Delete(files, bi, bi+1)

	r := rand.New(rand.NewPCG(seed, 0x6368616e6765)) // "change"
	r.Shuffle(len(files), func(i, j int) { files[i], files[j] = files[j], files[i] })
	nMod, nDel, nAdd := share(s.files, modifyPerMille), share(s.files, deletePerMille), share(s.files, addPerMille)
	var mod, del, src []file
	for _, f := range files {
		switch {
		case len(mod) < nMod && f.size > 0:
			mod = append(mod, f)
		case len(del) < nDel:
			del = append(del, f)
		case len(src) < nAdd:
			src = append(src, f)
		}
	}

	for _, f := range mod {
		if err := modify(r, root, f, w); err != nil {
			return s, err
		}
		s.modified++
	}
	for i, f := range src {
		if err := addCopy(r, root, f, i, w); err != nil {
			return s, err
		}
		s.added++
	}
	for _, f := range del {
		if err := os.Remove(filepath.Join(root, f.rel)); err != nil {
			return s, err
		}
		fmt.Fprintf(w, "delete %s\n", f.rel)
		s.deleted++
	}
	if err := appendText(r, root, big, seed, w); err != nil {
		return s, err
	}
	s.appendedTo, s.appendedFrom, s.appendedBytes = big.rel, big.size, appendSize
	return s, nil
}

// share is perMille thousandths of n, rounded, and at least 1.
func share(n, perMille int) int {
	return max(1, (n*perMille+500)/1000)
}

// regularFiles lists the regular files below root, sorted by path.
func regularFiles(root string) ([]file, error) {
	var files []file
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		files = append(files, file{rel: rel, size: info.Size()})
		return nil
	})
	slices.SortFunc(files, func(a, b file) int { return cmp.Compare(a.rel, b.rel) })
	return files, err
}

// modify flips 1–maxFlip bytes of f at a random offset, in place.
func modify(r *rand.Rand, root string, f file, w io.Writer) error {
	off := r.Int64N(f.size)
	n, err := flipAt(r, filepath.Join(root, f.rel), off, min(int64(1+r.IntN(maxFlip)), f.size-off))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "modify %s: %d bytes at %d\n", f.rel, n, off)
	return nil
}

// flipAt flips n bytes of the file at path from off on.
func flipAt(r *rand.Rand, path string, off, n int64) (int, error) {
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	b := make([]byte, n)
	if _, err := fh.ReadAt(b, off); err != nil {
		fh.Close()
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	flipBytes(r, b)
	if _, err := fh.WriteAt(b, off); err != nil {
		fh.Close()
		return 0, err
	}
	return len(b), fh.Close()
}

// addCopy copies f to a new file beside it, named after f and the number i,
// and flips 1–maxFlip bytes of the copy at a random offset.
func addCopy(r *rand.Rand, root string, f file, i int, w io.Writer) error {
	srcPath := filepath.Join(root, f.rel)
	rel := fmt.Sprintf("%s.new%d", f.rel, i)
	dstPath := filepath.Join(root, rel)
	in, err := os.Open(srcPath)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dstPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
	if err != nil {
		return err
	}
	size, err := io.Copy(out, in)
	if err = errors.Join(err, out.Close()); err != nil {
		return fmt.Errorf("copy %s to %s: %w", srcPath, dstPath, err)
	}
	n := 0
	if size > 0 {
		off := r.Int64N(size)
		if n, err = flipAt(r, dstPath, off, min(int64(1+r.IntN(maxFlip)), size-off)); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "add %s: copy of %s with %d bytes changed\n", rel, f.rel, n)
	return nil
}

// appendText appends appendSize bytes of word-like text to f.
func appendText(r *rand.Rand, root string, f file, seed uint64, w io.Writer) error {
	path := filepath.Join(root, f.rel)
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	text := newTextSource(seed)
	buf := make([]byte, 1<<20)
	for left := appendSize; left > 0; left -= len(buf) {
		b := buf[:min(left, len(buf))]
		text.fillText(r, b)
		if _, err := fh.Write(b); err != nil {
			fh.Close()
			return err
		}
	}
	if err := fh.Close(); err != nil {
		return err
	}
	fmt.Fprintf(w, "append %s: %d bytes after its %d\n", f.rel, appendSize, f.size)
	return nil
}
