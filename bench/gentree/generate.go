package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sync/errgroup"
)

// Shape of a generated tree.
const (
	maxFileSize  = 8 << 10 // bytes; sizes are uniform in [0, maxFileSize]
	leafMin      = 500     // files per leaf directory, uniform in [leafMin, leafMax]
	leafMax      = 1500
	leavesPerTop = 50 // leaf directories below one top directory
	binaryShare  = 5  // one file in binaryShare is binary-like, the rest text
)

// generate writes n files into dir, which must be empty or absent.
//
// The layout: the files are numbered 0..n-1 and cut, in order, into leaf
// directories of leafMin–leafMax files each. Leaf k is d<k/50>/s<k%50>,
// except that every fourth leaf lies inside the one before it
// (d<k/50>/s<k%50-1>/s<k%50>), so the tree has some depth. File i holds
// the bytes of a generator seeded with (seed, i) alone; leaves are written
// in parallel and the result does not depend on their order.
func generate(dir string, n int, seed uint64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if ents, err := os.ReadDir(dir); err != nil {
		return err
	} else if len(ents) > 0 {
		return fmt.Errorf("%s is not empty; give a new or empty directory", dir)
	}

	// starts[k] is the number of the first file of leaf k; the last entry
	// is n.
	layout := rand.New(rand.NewPCG(seed, 0x6c61796f7574)) // "layout"
	starts := []int{0}
	for last := 0; last < n; {
		last = min(n, last+leafMin+layout.IntN(leafMax-leafMin+1))
		starts = append(starts, last)
	}

	text := newTextSource(seed)
	var g errgroup.Group
	g.SetLimit(2 * runtime.GOMAXPROCS(0)) // creating files waits on syscalls, not the CPU
	for k := range len(starts) - 1 {
		g.Go(func() error {
			return writeLeaf(filepath.Join(dir, leafDir(k)), starts[k], starts[k+1], seed, text)
		})
	}
	return g.Wait()
}

// leafDir is the path of leaf k relative to the root of the tree.
func leafDir(k int) string {
	top, s := k/leavesPerTop, k%leavesPerTop
	if k%4 == 3 { // then s%4 is odd, so s ≥ 1
		return fmt.Sprintf("d%03d/s%02d/s%02d", top, s-1, s)
	}
	return fmt.Sprintf("d%03d/s%02d", top, s)
}

// writeLeaf writes the files numbered from..to-1 into dir.
func writeLeaf(dir string, from, to int, seed uint64, text *textSource) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	buf := make([]byte, maxFileSize)
	for i := from; i < to; i++ {
		r := rand.New(rand.NewPCG(seed, uint64(i)))
		b := buf[:r.IntN(maxFileSize+1)]
		ext := "txt"
		if r.IntN(binaryShare) == 0 {
			ext = "bin"
			fillBinary(r, b)
		} else {
			text.fillText(r, b)
		}
		name := fmt.Sprintf("%s-%d.%s", text.words[r.IntN(vocabulary)], i, ext)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
