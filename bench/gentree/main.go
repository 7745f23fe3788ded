// Command gentree makes and changes the corpora of the benchmark in
// bench/compare.sh. Both jobs are deterministic for a given seed, so two
// machines given the same arguments benchmark the same bytes.
//
//	gentree -gen DIR -n N [-seed S]   write N small files into the new or empty DIR
//	gentree -change DIR [-seed S]     apply one realistic change to the tree DIR
//
// Generated files hold 0–8 KiB of word-like text or of binary-like data with
// zero runs, so that they compress about as well as ordinary system files.
// They lie in leaf directories of 500–1500 entries, two or three levels
// below DIR (see layout in generate.go).
//
// A change, over the regular files found below DIR (symlinks are not
// followed), is:
//
//	modify  1 % of the non-empty files in place: 1–16 bytes at a random
//	        offset are flipped, the size stays, the mtime moves on its own
//	add     0.1 % new files, each a copy of a random existing file with a
//	        few bytes flipped, in that file's directory
//	delete  0.1 % of the files
//	append  8 MiB of word-like text to the largest file
//
// The largest file takes no part in the random choices, and no file is both
// modified and deleted. Every action is printed as one line, then a summary.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	gen := flag.String("gen", "", "write a tree of small files into the new or empty `DIR`")
	n := flag.Int("n", 1000000, "number of files for -gen")
	change := flag.String("change", "", "apply one realistic change to the tree `DIR`")
	seed := flag.Uint64("seed", 1, "seed of every random choice")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: gentree -gen DIR -n N [-seed S] | gentree -change DIR [-seed S]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 || (*gen == "") == (*change == "") || *n < 0 {
		flag.Usage()
		os.Exit(2)
	}

	var err error
	if *gen != "" {
		err = generate(*gen, *n, *seed)
		if err == nil {
			fmt.Printf("gentree: wrote %d files into %s (seed %d)\n", *n, *gen, *seed)
		}
	} else {
		var s summary
		s, err = applyChange(*change, *seed, os.Stdout)
		if err == nil {
			fmt.Printf("gentree: %s: %s (seed %d)\n", *change, s, *seed)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gentree: %v\n", err)
		os.Exit(1)
	}
}
