// Command understudy keeps a standby host a faithful, versioned copy of a
// primary host's operating system tree. This package is wiring only: each
// cmd_<verb>.go parses flags and calls a run<Verb> function; the work is done
// by the packages snapshot, chunkstore, index, sync and restore.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
