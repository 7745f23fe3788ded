// Package testtree builds filesystem trees for tests and compares two trees
// down to every piece of metadata that understudy restores.
//
// Build creates a tree from a declarative description (Dir, File, Symlink,
// Hardlink, Dev, FIFO, Socket, Directory); Every builds one holding every
// file type and every metadata case; Compare fails a test when two trees
// differ, using rsync -aHAXS --checksum plus its own walk for what rsync does
// not see (inode flags, nanosecond mtimes, holes). ClearFlags makes a tree
// deletable again; Build registers it as a cleanup.
//
// Everything works through directory file descriptors, so trees deeper than
// PATH_MAX can be built and compared. The helpers need root (owners,
// devices, trusted.* xattrs, flags) and are meant for tests that run as root;
// what the filesystem refuses (flags or xattrs on some filesystems) is
// skipped with a t.Log saying so.
//
// testtree deliberately does not use package fsmeta: it checks fsmeta's work
// with separate code.
package testtree
