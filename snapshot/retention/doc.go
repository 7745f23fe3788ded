// Package retention decides which snapshots of a set `forget` keeps and
// which it removes. It reads nothing and writes nothing: it gets the set's
// snapshots (ID and time) and a policy, and returns a decision with its
// reasons for each snapshot. The semantics are restic's, so that an
// administrator who knows `restic forget` can predict ours.
//
// Terms:
//
//   - Policy: how many snapshots to keep of each kind (Last, Hourly, Daily,
//     Weekly, Monthly, Yearly) and a Span (Within). A count of 0 keeps none
//     of that kind; Unlimited (-1) keeps one in every bucket. A policy with
//     every count 0 and no span is empty, and refused: it would remove
//     every snapshot.
//   - Bucket: the calendar period a snapshot's time falls in, read in the
//     location given (the host's local time): hourly "2006-01-02 15",
//     daily "2006-01-02", weekly the ISO 8601 year and week (Monday to
//     Sunday), monthly "2006-01", yearly "2006". Only buckets that hold a
//     snapshot count; an empty day is skipped, not spent.
//   - Span: years, months, days and hours, written like restic's 1y6m7d12h
//     ("m" is months). Within keeps every snapshot newer than the latest
//     snapshot's time minus the span: the policy is measured from the
//     latest snapshot, not from now, so a host that stopped taking
//     snapshots does not lose them all. Snapshots dated in the future
//     (after now) are not taken as the latest.
//   - Hold: a reason outside the policy to keep a snapshot. The standby
//     state gives three: the snapshot applied to a target ("applied on the
//     standby"), a snapshot whose apply started and did not finish ("being
//     applied"), and a snapshot newer than a target's applied one that is
//     younger than the set's apply delay ("waiting for its apply delay"):
//     the automatic apply will want it.
//
// The algorithm, for one set:
//
//	sort the snapshots newest first (of equal times, the later given is newer)
//	latest := the newest snapshot not after now
//	for each snapshot s, at rank r (0 = newest):
//	    Last = Unlimited or r < Last:        keep, "last snapshot"
//	    for each kind k with a count left (or Unlimited):
//	        s opens a bucket of k that no newer snapshot is in:
//	            keep, "<k> snapshot"; one bucket of k is spent
//	        else s is the oldest snapshot of all:
//	            keep, "oldest <k> snapshot" (the policy asks for more
//	            buckets than there are: the oldest state is kept too)
//	    s.Time after latest − Within:        keep, "within <span>"
//	    s is held:                           keep, with the hold's reasons
//	    no reason:                           remove
//
// A snapshot kept for several reasons lists them all. Since the newest
// snapshot opens every bucket it is in, and is within any span of itself,
// a policy that is not empty always keeps it.
package retention
