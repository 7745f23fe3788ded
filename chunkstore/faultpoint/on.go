//go:build faultpoints

package faultpoint

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// armed is the fault point of this process, read from the environment at
// the first Hit.
var armed struct {
	once sync.Once
	name string
	at   int64        // the hit that kills
	hits atomic.Int64 // hits of name so far
	log  *os.File     // UNDERSTUDY_FAULT_LOG, if set
	pid  string
}

func load() {
	name, at, err := Parse(os.Getenv(Env))
	if err != nil {
		fmt.Fprintf(os.Stderr, "understudy (faultpoints build): %v\n", err)
		os.Exit(2)
	}
	armed.name, armed.at = name, at
	armed.pid = strconv.Itoa(os.Getpid())
	if p := os.Getenv(LogEnv); p != "" {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "understudy (faultpoints build): %s: %v\n", LogEnv, err)
			os.Exit(2)
		}
		armed.log = f
	}
}

// Hit kills the process with SIGKILL if name is the armed fault point and
// this is its armed hit; see the package documentation.
func Hit(name string) {
	armed.once.Do(load)
	if armed.log != nil {
		// One write(2) to an O_APPEND file: lines of several processes
		// (push and its serve) never interleave.
		armed.log.WriteString(name + " " + armed.pid + "\n")
	}
	if name != armed.name || armed.hits.Add(1) != armed.at {
		return
	}
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	for { // the signal is already pending: never return to the caller
		time.Sleep(time.Hour)
	}
}
