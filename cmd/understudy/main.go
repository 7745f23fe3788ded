// Command understudy keeps a standby host a faithful, versioned copy of a
// primary host's operating system tree. This package is wiring only: each
// cmd_<verb>.go parses flags and calls a run<Verb> function; the work is done
// by the packages snapshot, chunkstore, index, sync and restore.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

func main() {
	// Most of the heap is long-lived buffers; collecting at 50 % growth
	// instead of 100 % lowers the peak RSS at no measurable cost
	// (bench/RESULTS.md). GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
