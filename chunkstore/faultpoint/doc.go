// Package faultpoint lets the crash tests kill understudy at named points of
// its write paths, where a crash is most instructive, rather than only at
// random instants: after a pack file is durable but before the index knows
// it, between the sync of a batch of restored files and their renames,
// between a prune's commit of new packs and the removal of old ones.
//
// The code calls Hit(name) at each such point. In a normal build Hit is an
// empty function that the compiler inlines away: the points cost nothing
// and cannot fire. Built with `-tags faultpoints` (the crash matrix,
// cmd/understudy/crashmatrix_test.go, builds such a binary), Hit reads the
// environment once:
//
//	UNDERSTUDY_FAULT=name     SIGKILL this process at the first Hit(name)
//	UNDERSTUDY_FAULT=name:N   ... at the Nth Hit(name) of the process
//	UNDERSTUDY_FAULT_LOG=F    append "name pid" to file F at every Hit, so
//	                          that a test can count the hits of a whole run
//	                          and pick an N that lands
//
// The kill is SIGKILL sent to the process itself: no deferred function, no
// cleanup, no buffered write runs, exactly as if the machine's OOM killer or
// an operator's kill -9 had struck there. A child process inherits the
// environment, so a push's local serve is armed as well as the push.
//
// The names, and where they are, are listed in docs/design.md ("Write
// ordering and the crash-safety argument").
//
// The faultpoints build keeps the parsed setting and the hit counter in
// package variables: a process has one environment, and the points are
// spread over packages that must not pass a fault injector around.
package faultpoint
