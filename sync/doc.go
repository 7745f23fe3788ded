// Package sync replicates snapshots from one repository to another: the
// client side (Session.Push, used by `understudy push`), the standby side
// (Serve, `understudy serve`), the framed protocol between them, and the
// transports (a child process on a pipe, or a remote command over SSH with
// golang.org/x/crypto/ssh). The protocol is documented byte by byte in
// docs/design.md, "Replication protocol".
//
// The name shadows the standard library's sync, which files of this package
// import as stdsync; other packages import this one as usync.
//
// A push, per snapshot:
//
//	have/want    the snapshot, then a base (a snapshot the standby holds),
//	             then the trees the standby lacks, level by level, with the
//	             data blobs of the level above: one round trip per level
//	send         data blobs (stored form, or a zstd delta against the
//	             predecessor chunk), then trees children first, read and
//	             encoded by one worker per core ahead of the writer
//	commit       the snapshot record, answered once it is committed
//	apply        optionally, after the last commit: serve runs the standby's
//	             automatic apply of the snapshot's set into a target its
//	             own command line allows (--allow-target), and says what
//	             it did
//
// Serve verifies every blob against its ID (data blobs on one goroutine per
// core), stores it through chunkstore.Uploader, refuses a tree whose blobs
// it does not hold and a record whose tree it does not hold, and commits what
// it received however the session ends, so that the next push resumes.
//
// Files: frame.go and proto.go (the wire format), client.go (session),
// push.go (the walk), send.go (sending), serve.go (the standby), apply.go
// (apply on request, both sides), fetch.go (blobs fetched from the peer
// for repair --from, both sides), transport.go (destinations, the local
// pipe), ssh.go, sshurl.go and sshkeys.go (SSH). The package does not
// apply anything itself: serve is given an ApplyFunc by its caller.
// Package sshdtest runs a real sshd for tests.
package sync
