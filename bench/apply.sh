#!/usr/bin/env bash
# Benchmarks `understudy apply` and `rollback` against restic restore and
# rsync (issue 5). Run it by hand, as root, on an idle machine; never in CI.
# bench/README.md explains the phases.
#
#   bash bench/apply.sh usr          # a copy of this machine's /usr
#   bash bench/apply.sh copy DIR     # a copy of DIR (as usr does for /usr)
#   bash bench/apply.sh small [N]    # N generated small files (default 1000000)
#
# Everything happens in $BENCH_DIR (default /var/tmp/understudy-bench-apply),
# which is wiped at the start. The table is printed at the end and written to
# $BENCH_DIR/results.txt; each run's output is in $BENCH_DIR/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-/var/tmp/understudy-bench-apply}
BENCH_DIR=${BENCH_DIR%/}
invocation="bash bench/apply.sh $*"
# shellcheck source=bench/lib.sh
source bench/lib.sh

usage() {
  echo "usage: bash bench/apply.sh usr | copy DIR | small [N]" >&2
  exit 2
}

# prepare wipes and recreates $BENCH_DIR and the files of this run.
prepare() {
  wipe_bench_dir
  mkdir -p "$BENCH_DIR/cache"
  rows=$BENCH_DIR/rows.txt   # PHASE LABEL wall user sys rss_kib, one line per run
  stats=$BENCH_DIR/stats.txt # PHASE snapshot created replaced metadata linked deleted written reused skipped seconds
  notes=$BENCH_DIR/notes.txt # lines for the head of the results
  : >"$rows"
  : >"$stats"
  : >"$notes"
}


# measure PHASE LABEL COMMAND... runs COMMAND in $BENCH_DIR under
# /usr/bin/time, after a sync so that no earlier writes are flushed during
# the run, and appends "PHASE LABEL wall user sys rss_kib" to $rows. Its
# standard output goes to logs/PHASE-LABEL.out, its standard error to
# logs/PHASE-LABEL.err. A failure stops the script.
measure() {
  local phase=$1 label=$2 base rc
  shift 2
  timed "$phase" "$label" "$@"
  if [ "$rc" -eq 4 ] && [ "$label" = understudy ]; then
    fail_logs "the mass-change guard refused the apply of phase $phase (exit 4); this benchmark does not pass --force" "$base"
  elif [ "$rc" -ne 0 ]; then
    fail_logs "$label failed in phase $phase with exit status $rc; its output is in $base.out and $base.err" "$base"
  fi
  record "$phase" "$label" 9
}

# take_snapshot PHASE takes understudy's snapshot of the corpus (untimed)
# and sets snap to its ID.
take_snapshot() {
  local base=$BENCH_DIR/logs/$1-snapshot rc=0
  warm "$corpus"
  "$us" -r "$repo" --json snapshot --root "$root" "$place" >"$base.out" 2>"$base.err" || rc=$?
  if [ "$rc" -eq 3 ]; then
    echo "   WARNING: understudy snapshot in phase $1 could not read some paths (exit 3); see $base.err" |
      tee -a "$notes"
  elif [ "$rc" -ne 0 ]; then
    fail_logs "understudy snapshot failed in phase $1 with exit status $rc" "$base"
  fi
  snap=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$base.out") ||
    fail_logs "understudy snapshot in phase $1 printed no snapshot ID" "$base"
  echo "   snapshot ${snap:0:8} of $place (root $root)"
}

# run_apply PHASE WANT COMMAND... runs understudy apply or rollback with
# --json under measure, checks that it applied snapshot WANT and appends its
# statistics to $stats.
run_apply() {
  local phase=$1 want=$2 base=$BENCH_DIR/logs/$1-understudy line
  shift 2
  warm "$repo" "$target"
  measure "$phase" understudy "$@"
  line=$(python3 - "$base.out" "$want" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if r["snapshot"] != sys.argv[2]:
    sys.exit("applied snapshot %s, expected %s" % (r["snapshot"], sys.argv[2]))
s = r["stats"]
print(r["snapshot"][:8], *(s[k] for k in ("created", "replaced", "metadata", "linked", "deleted",
    "bytes_written", "bytes_reused", "subtrees_skipped")), r["duration_seconds"])
EOF
  ) || fail_logs "understudy in phase $phase printed no usable result" "$base"
  echo "$phase $line" >>"$stats"
}

# check_target PHASE SNAP runs understudy verify of the target against SNAP
# (untimed) and stops the script unless it finds no difference.
check_target() {
  local base=$BENCH_DIR/logs/$1-verify
  "$us" -r "$repo" verify --target "$target" "$2" >"$base.out" 2>"$base.err" ||
    fail_logs "understudy verify of $target against ${2:0:8} found differences or failed after phase $1" "$base"
  echo "   verified: $(tail -n 1 "$base.out")"
}

# check_rsync PHASE asks rsync whether the target's copy of the corpus
# differs from the corpus in anything rsync -aHAXS compares, content by
# checksum (untimed); it must print nothing.
check_rsync() {
  local base=$BENCH_DIR/logs/$1-rsync-check
  rsync -aHAXS --numeric-ids --checksum --dry-run --itemize-changes --delete \
    "$corpus/" "$target$place/" >"$base.out" 2>"$base.err" ||
    fail_logs "rsync's check of $target$place failed after phase $1" "$base"
  [ ! -s "$base.out" ] ||
    fail_logs "rsync finds $(wc -l <"$base.out") differences between $corpus and $target$place after phase $1" "$base"
  echo "   rsync --checksum --dry-run: no difference between the corpus and $target$place"
}

# restic_restore writes restic's latest snapshot into an empty directory,
# checks that it holds as many regular files as the corpus, and deletes it.
restic_restore() {
  local dest=$BENCH_DIR/restore n
  mkdir "$dest"
  warm "$RESTIC_REPOSITORY" "$RESTIC_CACHE_DIR"
  measure initial restic restic restore latest --target "$dest"
  n=$(count_files "$dest")
  if [ "$n" -ne "$corpus_files" ]; then
    echo "   WARNING: restic restored $n regular files, the corpus has $corpus_files" | tee -a "$notes"
  fi
  rm -rf -- "$dest"
}

# ---- the benchmark ----------------------------------------------------------

apply_bench() {
  need_tools restic=restic rsync=rsync tar=tar /usr/bin/time=time python3=python3
  prepare
  # the corpus, understudy's target and restic's restore (later the rsync
  # copy) at 1× each, two repositories at up to 0.5× each
  [ "$1" != copy ] || [ "$(id -u)" = 0 ] || die "copying $src with its owners needs root"
  make_corpus "$1" 4 1
  # The snapshot is of /NAME inside the root $BENCH_DIR/corpus, so that apply
  # places it at TARGET/NAME.
  root=$BENCH_DIR/corpus place=/$(basename "$corpus")

  repo=$BENCH_DIR/repo-understudy target=$BENCH_DIR/target rcopy=$BENCH_DIR/rsync-target
  export RESTIC_REPOSITORY=$BENCH_DIR/repo-restic RESTIC_PASSWORD=understudy-bench
  export RESTIC_CACHE_DIR=$BENCH_DIR/cache/restic
  local restic_init=() restic_opts=() restic_note="no compression (restic before 0.14)"
  # grep without -q reads all, so restic never dies of SIGPIPE (pipefail)
  if restic --help 2>&1 | grep -- '--compression' >/dev/null; then
    restic_init=(--repository-version 2) restic_opts=(--compression auto)
    restic_note="--compression auto, repository version 2"
  fi
  versions="$(restic version | cut -d' ' -f1-2) ($restic_note), $(rsync --version | awk 'NR == 1 { print "rsync " $3 }')"
  rsync_opts=(-aHAXS --numeric-ids --delete)

  say "initialising the repositories, snapshots of the corpus (untimed)"
  { "$us" -r "$repo" init && restic init "${restic_init[@]}" && mkdir "$target"; } \
    >"$BENCH_DIR/logs/init.log" 2>&1 || die "initialising failed; see $BENCH_DIR/logs/init.log"
  take_snapshot initial
  snap1=$snap
  warm "$corpus"
  (cd "$BENCH_DIR" && restic "${restic_opts[@]}" backup "$corpus") >"$BENCH_DIR/logs/initial-restic-backup.log" 2>&1 ||
    fail_logs "restic backup failed" "$BENCH_DIR/logs/initial-restic-backup"

  say "(1) initial: into an empty directory"
  run_apply initial "$snap1" "$us" -r "$repo" --json apply --target "$target"
  check_target initial "$snap1"
  restic_restore

  say "(2) noop: the same snapshot again"
  run_apply noop "$snap1" "$us" -r "$repo" --json apply "$snap1" --target "$target"
  check_target noop "$snap1"

  say "(3) changed: one change to the corpus, its snapshot applied"
  rsync "${rsync_opts[@]}" "$corpus/" "$rcopy/" >"$BENCH_DIR/logs/rsync-copy.log" 2>&1 ||
    fail_logs "copying the corpus to $rcopy failed" "$BENCH_DIR/logs/rsync-copy"
  "$gentree" -change "$corpus" -seed 1 >"$BENCH_DIR/logs/change.log"
  change_desc=$(tail -n 1 "$BENCH_DIR/logs/change.log" | sed 's/^gentree: [^:]*: //')
  echo "   $change_desc"
  take_snapshot changed
  snap2=$snap
  run_apply changed "$snap2" "$us" -r "$repo" --json apply --target "$target"
  check_target changed "$snap2"
  check_rsync changed
  warm "$corpus" "$rcopy"
  measure changed rsync rsync "${rsync_opts[@]}" "$corpus/" "$rcopy/"

  say "(4) rollback: one snapshot back"
  run_apply rollback "$snap1" "$us" -r "$repo" --json rollback --target "$target" --steps 1 --set default
  check_target rollback "$snap1"

  publish report
}

report() {
  echo "### understudy apply and rollback, restic restore and rsync on $corpus_name"
  echo
  describe
  echo "corpus: $corpus_desc; snapshot of $place with --root $root, applied at $target$place"
  echo "tools: $versions"
  echo "change (3): $change_desc"
  if [ -s "$notes" ]; then sed 's/^ *//' "$notes"; fi
  echo "checks: understudy verify found no difference after each phase; rsync --checksum --dry-run none after (3)"
  echo
  echo "| phase | tool | wall | CPU (user+sys) | peak RSS |"
  echo "|---|---|---:|---:|---:|"
  awk 'BEGIN {
      name["initial understudy"] = "understudy apply"; name["noop understudy"] = "understudy apply"
      name["changed understudy"] = "understudy apply"; name["rollback understudy"] = "understudy rollback --steps 1"
      name["initial restic"] = "restic restore"; name["changed rsync"] = "rsync -aHAXS --numeric-ids --delete"
    }
    { printf "| %s | %s | %.2f s | %.2f s (%.2f + %.2f) | %.1f MiB |\n", $1, name[$1 " " $2], $3, $4 + $5, $4, $5, $6 / 1024 }' "$rows"
  echo
  echo "What understudy did (\`--json\`; written: bytes from the repository, reused: copied from the old file):"
  echo
  echo "| phase | snapshot | created | replaced | metadata | linked | deleted | written | reused | subtrees skipped | its own duration |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk '{ printf "| %s | %s | %d | %d | %d | %d | %d | %.1f MiB | %.1f MiB | %d | %.2f s |\n", \
      $1, $2, $3, $4, $5, $6, $7, $8 / 2^20, $9 / 2^20, $10, $11 }' "$stats"
  echo
  echo "Against the targets of issue 5 (ratio understudy / peer; below 1: understudy is faster):"
  echo
  echo "| phase | understudy | peer | ratio | target | met? |"
  echo "|---|---:|---|---:|---|---|"
  awk 'function met(ok) { return ok ? "met" : "missed" }
    { wall[$1 " " $2] = $3 }
    END {
      u = wall["initial understudy"]; p = wall["initial restic"]
      printf "| initial | %.2f s | restic restore %.2f s | %.2f | ≤ 1.00 | %s |\n", u, p, u / p, met(u <= p)
      u = wall["changed understudy"]; p = wall["changed rsync"]
      printf "| changed | %.2f s | rsync -aHAXS --delete %.2f s | %.2f | ≤ 1.00 | %s |\n", u, p, u / p, met(u <= p)
      u = wall["rollback understudy"]
      printf "| rollback | %.2f s | – | – | < 10 s | %s |\n", u, met(u < 10)
      printf "| noop | %.2f s | – | – | (recorded) | – |\n", wall["noop understudy"]
    }' "$rows"
}

corpus_main apply_bench "$@"
