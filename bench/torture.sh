#!/usr/bin/env bash
# Runs the crash matrix long: `bash bench/torture.sh [CRASHES]` (default 200)
# kills snapshot, push (client or serve), apply, rollback and prune with
# SIGKILL that many times, at fault points of a -tags faultpoints build and at
# random instants, and checks after each kill what TestCrashMatrix
# (cmd/understudy/crashmatrix_test.go) says: check --read-data passes, no
# target file is torn, the command run again converges. Run it as root (the
# corpus holds devices, owners and flags). UNDERSTUDY_CRASH_SEED=N repeats a
# run's choices. The whole output goes to $TORTURE_LOG (default a file in
# /tmp, named at the end); the summary gives the crashes per command and kind,
# the failures, the duration and the machine, for bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
if [ "$(id -u)" != 0 ]; then
  echo "torture.sh: run it as root (the crash matrix skips otherwise)" >&2
  exit 2
fi
log=${TORTURE_LOG:-$(mktemp /tmp/understudy-torture.XXXXXX)}
rev=$(git rev-parse --short HEAD)
git diff --quiet HEAD 2>/dev/null || rev="$rev-dirty"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
UNDERSTUDY_CRASHES=$n go test ./cmd/understudy/ -run CrashMatrix -count=1 -timeout 2h -v >"$log" 2>&1
status=$?
secs=$(($(date +%s) - start))

crashes=$(grep -cE -- '--- (PASS|FAIL): TestCrashMatrix/' "$log")
failures=$(grep -cE -- '--- FAIL: TestCrashMatrix/' "$log")
echo "command:  UNDERSTUDY_CRASHES=$n go test ./cmd/understudy/ -run CrashMatrix -count=1 -timeout 2h -v"
echo "revision: $rev, $(go version | cut -d' ' -f3)"
echo "machine:  $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r)"
echo "load:     $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
grep -m1 'UNDERSTUDY_CRASH_SEED=' "$log" | sed 's/^ *[^ ]*: /seed:     /'
echo "per command and kind:"
grep -E '^ +(snapshot|push|apply|rollback|prune) +(fault|timed) ' "$log"
grep -m1 'crash matrix:' "$log" | sed 's/^ *[^ ]*: /result:   /'
echo "crashes:  $crashes, failures: $failures, $((secs / 60))m$((secs % 60))s; go test exit $status"
echo "log:      $log"
# The output of each failed crash (or the end of the log if none is named).
failed=$(grep -oE -- '--- FAIL: TestCrashMatrix/[^ ]+' "$log" | sed 's/.*TestCrashMatrix\///')
for f in $failed; do
  awk -v name="TestCrashMatrix/$f" '$1 == "===" { on = ($3 == name) } on' "$log" | head -30
done
[ "$status" != 0 ] && [ -z "$failed" ] && tail -30 "$log"
exit "$status"
