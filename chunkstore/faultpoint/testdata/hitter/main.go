// Command hitter is the faultpoint tests' program: for i from 1 to 5 it
// prints "NAME i" and calls faultpoint.Hit(NAME) for each NAME of its
// arguments in turn, then prints "done"; a deferred function prints
// "deferred", which a SIGKILL must never let run.
package main

import (
	"fmt"
	"os"

	"github.com/understudy/understudy/chunkstore/faultpoint"
)

func main() {
	defer fmt.Println("deferred")
	for i := 1; i <= 5; i++ {
		for _, name := range os.Args[1:] {
			fmt.Printf("%s %d\n", name, i)
			faultpoint.Hit(name)
		}
	}
	fmt.Println("done")
}
