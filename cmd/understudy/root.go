package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strings"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/snapshot/fsmeta"
)

// Exit codes (PRODUCT.md).
const (
	exitOK      = 0
	exitError   = 1
	exitUsage   = 2
	exitPartial = 3 // snapshot taken, but some paths could not be read or changed while being read
	exitRefused = 4 // refused by a guard
)

// exitError carries an exit code other than exitError.
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &codedError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// exitCode maps an error to the process exit code: the one place that does.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	return exitError
}

// globals are the flags every command has.
type globals struct {
	repo        string
	conf        configSource // -c/--config, read on first use (cmd_config.go)
	json        bool
	quiet       bool
	verbose     bool
	cpuProfile  string
	traceFile   string
	memProfile  string
	stopProfile func()
	stdout      io.Writer
	stderr      io.Writer
}

func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRootCmd(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if g.stopProfile != nil {
		g.stopProfile()
	}
	if err != nil {
		err = fsmeta.NoSpace(err, "") // a full disk: name its filesystem
		var ce *codedError
		if !errors.As(err, &ce) && isUsage(err) {
			err = &codedError{code: exitUsage, err: err}
		}
		if !(errors.As(err, &ce) && ce.err == errReported) {
			fmt.Fprintf(stderr, "understudy: %v\n", err)
		}
	}
	return exitCode(err)
}

// errReported marks an error whose details were already printed.
var errReported = errors.New("reported")

// isUsage recognises cobra's own argument and flag errors.
func isUsage(err error) bool {
	msg := err.Error()
	for _, s := range []string{"unknown command", "unknown flag", "unknown shorthand", "flag needs an argument",
		"invalid argument", "accepts ", "requires at least", "required flag", "arg(s)"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "understudy",
		Short: "Keep a standby host a faithful, versioned copy of a primary's OS tree",
		Long: `understudy takes content-defined-chunked, compressed point-in-time snapshots
of a host's operating system tree, replicates them to a standby, and restores
or rolls back any of them.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &codedError{code: exitUsage, err: err}
	})
	pf := root.PersistentFlags()
	pf.StringVarP(&g.repo, "repo", "r", os.Getenv("UNDERSTUDY_REPO"), "repository directory (env UNDERSTUDY_REPO)")
	pf.VarP(&g.conf, "config", "c", "configuration `FILE` (default "+defaultConfigPath+" when present; \"\" for none)")
	pf.BoolVar(&g.json, "json", false, "print machine-readable JSON")
	pf.BoolVarP(&g.quiet, "quiet", "q", false, "print only errors")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "print more detail")
	pf.StringVar(&g.cpuProfile, "cpuprofile", "", "write a CPU profile of the command to `FILE` (for bench/)")
	pf.MarkHidden("cpuprofile")
	pf.StringVar(&g.traceFile, "trace", "", "write an execution trace of the command to `FILE` (for bench/)")
	pf.MarkHidden("trace")
	pf.StringVar(&g.memProfile, "memprofile", "", "write a heap profile, sampled every 64 KiB, at the end of the command to `FILE` (for bench/)")
	pf.MarkHidden("memprofile")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		switch {
		case g.cpuProfile != "":
			f, err := os.Create(g.cpuProfile)
			if err != nil {
				return err
			}
			g.stopProfile = func() { pprof.StopCPUProfile(); f.Close() }
			return pprof.StartCPUProfile(f)
		case g.memProfile != "":
			runtime.MemProfileRate = 64 << 10
			g.stopProfile = func() {
				if f, err := os.Create(g.memProfile); err == nil {
					pprof.Lookup("allocs").WriteTo(f, 0)
					f.Close()
				}
			}
		case g.traceFile != "":
			f, err := os.Create(g.traceFile)
			if err != nil {
				return err
			}
			g.stopProfile = func() { trace.Stop(); f.Close() }
			return trace.Start(f)
		}
		return nil
	}
	root.AddCommand(
		newInitCmd(g),
		newSnapshotCmd(g),
		newSnapshotsCmd(g),
		newLsCmd(g),
		newCatCmd(g),
		newDiffCmd(g),
		newRestoreCmd(g),
		newCheckCmd(g),
		newRepairCmd(g),
		newServeCmd(g),
		newPushCmd(g),
		newPromoteCmd(g),
		newDemoteCmd(g),
		newVerifyCmd(g),
		newApplyCmd(g),
		newRollbackCmd(g),
		newHoldCmd(g, true),
		newHoldCmd(g, false),
		newProtectCmd(g),
		newStandbyCmd(g),
		newStatusCmd(g),
		newForgetCmd(g),
		newPruneCmd(g),
		newConfigCmd(g),
		newRunCmd(g),
		newDaemonCmd(g),
		newSystemdUnitsCmd(g),
	)
	return root
}

// openRepo opens the repository named by --repo.
func (g *globals) openRepo(mode chunkstore.LockMode, what string) (*chunkstore.Repo, error) {
	return g.openRepoWith(chunkstore.OpenOptions{Mode: mode, What: what})
}

// openRepoWith opens the repository named by --repo with opts. An
// exclusive holder saves status.json when it closes the repository, for
// the status commands its lock kept out (init opens it directly, before
// there is anything to show).
func (g *globals) openRepoWith(opts chunkstore.OpenOptions) (*chunkstore.Repo, error) {
	if err := g.repoFromConfig(); err != nil {
		return nil, err
	}
	if g.repo == "" {
		return nil, usageErrorf("no repository: give --repo DIR, set UNDERSTUDY_REPO or repo in the configuration file")
	}
	if opts.Mode == chunkstore.Exclusive && opts.BeforeClose == nil {
		opts.BeforeClose = g.saveStatus
	}
	return chunkstore.Open(g.repo, opts)
}

// printf prints unless --quiet.
func (g *globals) printf(format string, args ...any) {
	if !g.quiet {
		fmt.Fprintf(g.stdout, format, args...)
	}
}
