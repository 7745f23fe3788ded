#!/usr/bin/env bash
# Benchmarks `understudy prune` against `restic prune` (issue 6). Run it by
# hand, as root, on an idle machine; never in CI.
#
#   bash bench/prune.sh usr          # a copy of this machine's /usr
#   bash bench/prune.sh copy DIR     # a copy of DIR (as usr does for /usr)
#
# DAYS (default 30) "daily" snapshots, each after `gentree -change` with the
# day as seed, are taken by both tools (untimed); both forget all but the
# last KEEP (default 7), untimed; then each prunes with its defaults, timed
# (/usr/bin/time, after a sync, the repository read beforehand so that the
# page cache is warm). Afterwards, untimed: understudy check --read-data, a
# restore of the latest snapshot that verify must find identical, and
# restic check. Everything happens in $BENCH_DIR (default
# /var/tmp/understudy-bench-prune), which is wiped at the start. The table
# is printed at the end and written to $BENCH_DIR/results.txt; each run's
# output is in $BENCH_DIR/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-/var/tmp/understudy-bench-prune}
BENCH_DIR=${BENCH_DIR%/}
DAYS=${DAYS:-30}
KEEP=${KEEP:-7}
invocation="bash bench/prune.sh $*"
# shellcheck source=bench/lib.sh
source bench/lib.sh

usage() {
  echo "usage: [DAYS=N] [KEEP=N] bash bench/prune.sh usr | copy DIR" >&2
  exit 2
}


# measure PHASE LABEL COMMAND... runs COMMAND in $BENCH_DIR under
# /usr/bin/time, after a sync so that no earlier writes are flushed during
# the run, and appends "PHASE LABEL wall user sys rss_kib" to $rows. Its
# output goes to logs/PHASE-LABEL.out and .err. A failure stops the script.
measure() {
  local phase=$1 label=$2 base rc
  shift 2
  timed "$phase" "$label" "$@"
  [ "$rc" -eq 0 ] || fail_logs "$label failed in phase $phase with exit status $rc; its output is in $base.out and $base.err" "$base"
  record "$phase" "$label" 7
}

# quiet LOG COMMAND... runs COMMAND in $BENCH_DIR (untimed) with its output
# in logs/LOG.out and .err; a failure stops the script.
quiet() {
  local base=$BENCH_DIR/logs/$1
  shift
  (cd "$BENCH_DIR" && exec "$@") >"$base.out" 2>"$base.err" || fail_logs "$* failed; see $base.out and $base.err" "$base"
}

# partial LOG COMMAND... is quiet for a snapshot or backup, which exit 3
# when some files could not be read: that is noted, not fatal.
partial() {
  local name=$1 base=$BENCH_DIR/logs/$1 rc=0
  shift
  (cd "$BENCH_DIR" && exec "$@") >"$base.out" 2>"$base.err" || rc=$?
  if [ "$rc" -eq 3 ]; then
    echo "   WARNING: $name could not read some files (exit 3); see $base.err" | tee -a "$notes"
  elif [ "$rc" -ne 0 ]; then
    fail_logs "$* failed with exit status $rc" "$base"
  fi
}

# record_size PHASE LABEL PATH appends "PHASE LABEL bytes" to $sizes.
record_size() {
  echo "$1 $2 $(du -sb "$3" | cut -f1)" >>"$sizes"
}

prune_bench() {
  need_tools restic=restic tar=tar /usr/bin/time=time python3=python3
  if ! is_count "$DAYS" || ! is_count "$KEEP" || [ "$KEEP" -ge "$DAYS" ]; then
    die "DAYS and KEEP must be counts with KEEP < DAYS"
  fi
  [ "$(id -u)" = 0 ] || die "copying $src with its owners needs root"
  [ -d "$src" ] || die "$src is not a directory"
  wipe_bench_dir
  mkdir -p "$BENCH_DIR/cache"
  rows=$BENCH_DIR/rows.txt sizes=$BENCH_DIR/sizes.txt notes=$BENCH_DIR/notes.txt
  : >"$rows"
  : >"$sizes"
  : >"$notes"
  local src_bytes
  src_bytes=$(du -sb "$src" | cut -f1)
  # the corpus at 1×, two repositories at up to 0.5× each plus what the days
  # add (a few per cent each), one restore at 1×, and 2 GiB to spare
  need_space $((src_bytes * 3 + src_bytes * DAYS / 25 + (2 << 30))) \
    $(($(find "$src" -xdev | wc -l) * 3)) "a benchmark on $src"
  corpus=$BENCH_DIR/corpus/$(basename "$src")
  say "copying $src ($(gib "$src_bytes") GiB) to $corpus"
  mkdir -p "$BENCH_DIR/corpus"
  cp -a "$src" "$corpus"
  build
  describe_corpus

  repo=$BENCH_DIR/repo-understudy
  export RESTIC_REPOSITORY=$BENCH_DIR/repo-restic RESTIC_PASSWORD=understudy-bench
  export RESTIC_CACHE_DIR=$BENCH_DIR/cache/restic
  local restic_init=() restic_opts=() restic_note="no compression (restic before 0.14)"
  # grep without -q reads all, so restic never dies of SIGPIPE (pipefail)
  if restic --help 2>&1 | grep -- '--compression' >/dev/null; then
    restic_init=(--repository-version 2) restic_opts=(--compression auto)
    restic_note="--compression auto, repository version 2"
  fi
  versions="$(restic version | cut -d' ' -f1-2) ($restic_note)"
  quiet init "$us" -r "$repo" init
  quiet restic-init restic init "${restic_init[@]}"

  say "$DAYS daily snapshots by both tools, each after gentree -change -seed DAY (untimed)"
  local day
  for day in $(seq 1 "$DAYS"); do
    "$gentree" -change "$corpus" -seed "$day" >"$BENCH_DIR/logs/change-$day.log"
    warm "$corpus"
    local t0 t1 t2
    t0=$(date +%s.%N)
    partial "snapshot-$day" "$us" -r "$repo" snapshot "$corpus"
    t1=$(date +%s.%N)
    partial "backup-$day" restic "${restic_opts[@]}" backup "$corpus"
    t2=$(date +%s.%N)
    awk -v d="$day" -v a="$t0" -v b="$t1" -v c="$t2" \
      'BEGIN { printf "   day %2d: understudy snapshot %6.1f s, restic backup %6.1f s\n", d, b - a, c - b }'
  done
  change_desc=$(tail -n 1 "$BENCH_DIR/logs/change-1.log" | sed 's/^gentree: [^:]*: //')

  say "forget all but the last $KEEP (untimed)"
  # grep without -q reads all, so understudy never dies of SIGPIPE (pipefail)
  if "$us" forget --help 2>&1 | grep -- '--keep-last' >/dev/null; then
    quiet forget-understudy "$us" -r "$repo" forget --keep-last "$KEEP"
    forget_how="understudy forget --keep-last $KEEP"
  else
    die "this understudy has no forget --keep-last; the benchmark needs it to remove snapshots"
  fi
  quiet forget-restic restic forget --keep-last "$KEEP"
  local n_us n_restic
  n_us=$("$us" -r "$repo" --json snapshots | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')
  n_restic=$(restic snapshots --json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')
  if [ "$n_us" -ne "$KEEP" ] || [ "$n_restic" -ne "$KEEP" ]; then
    die "after forget understudy has $n_us snapshots and restic $n_restic, not $KEEP"
  fi

  say "prune, timed"
  record_size before understudy "$repo"
  record_size before restic "$RESTIC_REPOSITORY"
  warm "$repo"
  measure prune understudy "$us" -r "$repo" --json prune
  warm "$RESTIC_REPOSITORY" "$RESTIC_CACHE_DIR"
  measure prune restic restic prune
  record_size after understudy "$repo"
  record_size after restic "$RESTIC_REPOSITORY"
  us_stats=$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("%d packs deleted, %d repacked into %d (%d blobs, %.1f MiB copied), %d unindexed removed, %d blobs removed, %.1f MiB freed, %.1f MiB unused kept; %d trees read" % (
    r["packs_deleted"], r["packs_repacked"], r["packs_written"], r["blobs_repacked"], r["bytes_repacked"] / 2**20,
    r["packs_unindexed"], r["blobs_removed"], r["bytes_freed"] / 2**20, r["bytes_unused_kept"] / 2**20, r["trees"]))' \
    "$BENCH_DIR/logs/prune-understudy.out")
  restic_stats=$(grep -E '^(to repack|this removes|to delete|total prune|remaining|unused size after)' \
    "$BENCH_DIR/logs/prune-restic.out" | sed 's/  */ /g' | paste -sd ';' - | sed 's/;/; /g' || true)

  say "checks (untimed): understudy check --read-data, restore and verify of the latest snapshot; restic check"
  quiet check-understudy "$us" -r "$repo" check --read-data
  local dest=$BENCH_DIR/restore
  quiet restore-understudy "$us" -r "$repo" restore latest --target "$dest"
  quiet verify-understudy "$us" -r "$repo" verify --target "$dest" latest
  rm -rf -- "$dest"
  quiet check-restic restic check

  publish report
}

report() {
  echo "### understudy prune and restic prune after $DAYS daily snapshots of a copy of $src, all but $KEEP forgotten"
  echo
  describe
  echo "corpus: $corpus_desc at the start; each day \`gentree -change -seed DAY\` (day 1: $change_desc)"
  echo "tools: $versions; understudy's snapshots forgotten with \`$forget_how\`, restic's with \`restic forget --keep-last $KEEP\`; both prune with their defaults (understudy: a pack is repacked above 10 % unused; restic: --max-unused 5 % of the repository)"
  echo "understudy: $us_stats"
  echo "restic: $restic_stats"
  if [ -s "$notes" ]; then sed 's/^ *//' "$notes"; fi
  echo "checks: understudy check --read-data found nothing, the latest snapshot restored and verify found no difference; restic check found nothing"
  echo
  echo "| tool | wall | CPU (user+sys) | peak RSS | repository before | after | freed |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  awk 'NR == FNR { size[$1 " " $2] = $3; next }
    { b = size["before " $2]; a = size["after " $2]
      printf "| %s prune | %.2f s | %.2f s (%.2f + %.2f) | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB |\n", \
        $2, $3, $4 + $5, $4, $5, $6 / 1024, b / 2^20, a / 2^20, (b - a) / 2^20 }' "$sizes" "$rows"
  echo
  awk '{ wall[$2] = $3 }
    END {
      u = wall["understudy"]; p = wall["restic"]
      printf "Target of issue 6: understudy prune ≤ 0.5 × restic prune: %.2f s / %.2f s = %.2f, %s.\n", \
        u, p, u / p, (u <= 0.5 * p) ? "met" : "missed"
    }' "$rows"
}

case ${1:-} in
  usr)
    [ $# -eq 1 ] || usage
    src=/usr
    prune_bench ;;
  copy)
    [ $# -eq 2 ] || usage
    src=$(realpath -e "$2") || die "$2 does not exist"
    [ "$src" != / ] || die "copying / is not supported; name a directory below it"
    prune_bench ;;
  *) usage ;;
esac
