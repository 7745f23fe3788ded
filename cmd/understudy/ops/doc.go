// Package ops holds what the operational commands (run, daemon) need that is
// more than wiring: the log with its rotation and syslog copy of failures,
// and the daemon's schedule of sets. It is a package of its own because the
// CLI package is wiring only; it lives under cmd/understudy because nothing
// but the CLI uses it.
package ops
