#!/usr/bin/env bash
# Benchmarks understudy against restic, borg and rsync (issue 3). Run it by
# hand, as root, on an idle machine; never in CI. bench/README.md explains
# the phases and how to record the results.
#
#   bash bench/compare.sh usr          # a copy of this machine's /usr
#   bash bench/compare.sh copy DIR     # a copy of DIR (as usr does for /usr)
#   bash bench/compare.sh small [N]    # N generated small files (default 1000000)
#   bash bench/compare.sh rss [N...]   # understudy alone on N generated files
#                                      # (default 10000 100000 1000000)
#
# Everything happens in $BENCH_DIR (default /var/tmp/understudy-bench), which
# is wiped at the start. The table is printed at the end and written to
# $BENCH_DIR/results.txt; each run's output is in $BENCH_DIR/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-/var/tmp/understudy-bench}
tools=(understudy restic borg rsync)
invocation="bash bench/compare.sh $*"
# shellcheck source=bench/lib.sh
source bench/lib.sh

usage() {
  echo "usage: bash bench/compare.sh usr | copy DIR | small [N] | rss [N...]" >&2
  exit 2
}

# prepare wipes and recreates $BENCH_DIR and the files of this run.
prepare() {
  wipe_bench_dir
  mkdir -p "$BENCH_DIR/cache"
  raw=$BENCH_DIR/raw.txt    # PHASE LABEL wall user sys rss_kib, one line per run
  sizes=$BENCH_DIR/sizes.txt # PHASE LABEL bytes
  : >"$raw"
  : >"$sizes"
}

# measure PHASE LABEL DIR COMMAND...: runs COMMAND in DIR under
# /usr/bin/time, after a sync so that no earlier writes are flushed during
# the run, and appends "PHASE LABEL wall user sys rss_kib" to $raw.
measure() {
  local phase=$1 label=$2 dir=$3
  shift 3
  local log=$BENCH_DIR/logs/$phase-$label.log tf=$BENCH_DIR/logs/$phase-$label.time rc=0
  sync
  (cd "$dir" && exec /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@") >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    if [ "$label" = borg ] && [ "$rc" -eq 1 ]; then
      echo "   borg ended with warnings (exit 1); see $log"
    else
      tail -n 20 "$log" >&2
      die "$label failed in phase $phase with exit status $rc; its output is in $log"
    fi
  fi
  local wall user sys rss
  read -r wall user sys rss < <(tail -n 1 "$tf")
  echo "$phase $label $wall $user $sys $rss" >>"$raw"
  awk -v p="$phase" -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" \
    'BEGIN { printf "   %-10s %-10s %8.2f s wall %8.2f s CPU %7.1f MiB peak RSS\n", p, l, w, u + s, r / 1024 }'
}

# record_size PHASE LABEL PATH appends the size of PATH to $sizes.
record_size() {
  local b
  b=$(du -sb "$3" | cut -f1)
  echo "$1 $2 $b" >>"$sizes"
  awk -v p="$1" -v l="$2" -v b="$b" 'BEGIN { printf "   %-10s %-10s %10.1f MiB stored\n", p, l, b / 2^20 }'
}

# ---- understudy, restic, borg and rsync on one corpus --------------------

setup_tools() {
  repo_us=$BENCH_DIR/repo-understudy
  copy=$BENCH_DIR/repo-rsync # rsync's "repository" is a plain copy
  export RESTIC_REPOSITORY=$BENCH_DIR/repo-restic RESTIC_PASSWORD=understudy-bench
  export RESTIC_CACHE_DIR=$BENCH_DIR/cache/restic
  export BORG_REPO=$BENCH_DIR/repo-borg BORG_BASE_DIR=$BENCH_DIR/cache/borg
  export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
  restic_init=() restic_opts=() restic_note="no compression (restic before 0.14)"
  # grep without -q reads all, so restic never dies of SIGPIPE (pipefail)
  if restic --help 2>&1 | grep -- '--compression' >/dev/null; then
    restic_init=(--repository-version 2) restic_opts=(--compression auto)
    restic_note="--compression auto, repository version 2"
  fi
  versions="$(restic version | cut -d' ' -f1-2) ($restic_note), $(borg --version) (default compression: lz4), $(rsync --version | awk 'NR == 1 { print "rsync " $3 }')"

  say "initialising the repositories"
  {
    "$us" -r "$repo_us" init
    restic init "${restic_init[@]}"
    borg init --encryption=none
    mkdir "$copy"
  } >"$BENCH_DIR/logs/init.log" 2>&1 || die "initialising failed; see $BENCH_DIR/logs/init.log"
}

# snapshot PHASE TOOL takes TOOL's snapshot of the corpus, or for rsync
# updates the copy.
snapshot() {
  warm "$corpus"
  case $2 in
    understudy) measure "$1" "$2" "$BENCH_DIR" "$us" -r "$repo_us" snapshot "$corpus" ;;
    restic) measure "$1" "$2" "$BENCH_DIR" restic "${restic_opts[@]}" backup "$corpus" ;;
    borg) measure "$1" "$2" "$BENCH_DIR" borg create "$BORG_REPO::$1" "$corpus" ;;
    rsync) measure "$1" "$2" "$BENCH_DIR" rsync -a --delete "$corpus/" "$copy/" ;;
  esac
}

# restore TOOL writes TOOL's latest snapshot into an empty directory, checks
# that it holds as many regular files as the corpus, and deletes it.
restore() {
  local target=$BENCH_DIR/restore n
  mkdir "$target"
  case $1 in
    understudy)
      warm "$repo_us"
      measure restore "$1" "$BENCH_DIR" "$us" -r "$repo_us" restore latest --target "$target" ;;
    restic)
      warm "$RESTIC_REPOSITORY" "$RESTIC_CACHE_DIR"
      measure restore "$1" "$BENCH_DIR" restic restore latest --target "$target" ;;
    borg)
      warm "$BORG_REPO" "$BORG_BASE_DIR"
      measure restore "$1" "$target" borg extract "$BORG_REPO::changed" ;;
    rsync)
      warm "$copy"
      measure restore "$1" "$BENCH_DIR" rsync -a "$copy/" "$target/" ;;
  esac
  n=$(count_files "$target")
  if [ "$n" -ne "$corpus_files" ]; then
    echo "   WARNING: $1 restored $n regular files, the corpus has $corpus_files" | tee -a "$BENCH_DIR/warnings.txt"
  fi
  rm -rf -- "$target"
}

compare() {
  local t
  need_tools restic=restic borg=borgbackup rsync=rsync tar=tar /usr/bin/time=time
  prepare
  # corpus, rsync copy and one restore at 1× each, three repositories at
  # up to 0.5× each
  [ "$1" != copy ] || [ "$(id -u)" = 0 ] || die "copying $src with its owners needs root"
  make_corpus "$1" 7 2
  setup_tools

  say "(a) initial snapshot"
  for t in "${tools[@]}"; do snapshot initial "$t"; done
  record_sizes initial
  say "(b) rerun, nothing changed"
  for t in "${tools[@]}"; do snapshot rerun "$t"; done
  say "(c) one change to the corpus, then a rerun"
  "$gentree" -change "$corpus" -seed 1 >"$BENCH_DIR/logs/change.log"
  change_desc=$(tail -n 1 "$BENCH_DIR/logs/change.log" | sed 's/^gentree: [^:]*: //')
  echo "   $change_desc"
  for t in "${tools[@]}"; do snapshot changed "$t"; done
  record_sizes changed
  corpus_files=$(count_files "$corpus")
  say "(d) full restore into an empty directory"
  for t in "${tools[@]}"; do restore "$t"; done

  publish report_compare
}

record_sizes() {
  record_size "$1" understudy "$repo_us"
  record_size "$1" restic "$RESTIC_REPOSITORY"
  record_size "$1" borg "$BORG_REPO"
  record_size "$1" rsync "$copy"
}

report_compare() {
  echo "### understudy, restic, borg and rsync on $corpus_name"
  echo
  describe
  echo "corpus: $corpus_desc"
  echo "tools: $versions"
  echo "change (c): $change_desc"
  if [ -s "$BENCH_DIR/warnings.txt" ]; then sed 's/^ *//' "$BENCH_DIR/warnings.txt"; fi
  echo
  echo "| phase | tool | wall | CPU (user+sys) | peak RSS | repository |"
  echo "|---|---|---:|---:|---:|---:|"
  awk 'NR == FNR { size[$1 " " $2] = $3; next }
    {
      k = $1 " " $2
      repo = (k in size) ? sprintf("%.1f MiB", size[k] / 2^20) : ""
      printf "| %s | %s | %.2f s | %.2f s (%.2f + %.2f) | %.1f MiB | %s |\n", \
        $1, $2, $3, $4 + $5, $4, $5, $6 / 1024, repo
    }' "$sizes" "$raw"
  echo
  echo "Ratios understudy / peer (below 1: understudy is faster, smaller):"
  echo
  echo "| phase | peer | wall | peak RSS | repository |"
  echo "|---|---|---:|---:|---:|"
  awk 'function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "–" }
    BEGIN { nt = split("understudy restic borg rsync", tool, " ") }
    NR == FNR { size[$1 " " $2] = $3; next }
    { wall[$1 " " $2] = $3; rss[$1 " " $2] = $6
      if (!($1 in seen)) { seen[$1] = 1; phases[++np] = $1 } }
    END {
      for (i = 1; i <= np; i++) {
        p = phases[i]
        for (j = 2; j <= nt; j++) {
          u = p " understudy"; k = p " " tool[j]
          repo = (k in size) ? ratio(size[u], size[k]) : ""
          printf "| %s | %s | %s | %s | %s |\n", p, tool[j], ratio(wall[u], wall[k]), ratio(rss[u], rss[k]), repo
        }
      }
    }' "$sizes" "$raw"
}

# ---- understudy alone: memory on growing trees ---------------------------

rss() {
  local counts=("$@") n largest=0
  [ ${#counts[@]} -gt 0 ] || counts=(10000 100000 1000000)
  for n in "${counts[@]}"; do
    is_count "$n" || usage
    [ "$n" -gt "$largest" ] && largest=$n
  done
  need_tools tar=tar /usr/bin/time=time
  prepare
  # one tree and its repository at a time: 6 KiB per file, twice, 1 GiB to spare
  need_space $((largest * 6 * 1024 * 2 + (1 << 30))) $((largest * 2)) "$largest files"
  build
  for n in "${counts[@]}"; do
    local tree=$BENCH_DIR/tree-$n repo=$BENCH_DIR/repo-$n
    say "$n files: generating, snapshot, rerun"
    "$gentree" -gen "$tree" -n "$n" -seed 1 >"$BENCH_DIR/logs/gentree-$n.log"
    "$us" -r "$repo" init >"$BENCH_DIR/logs/init-$n.log" 2>&1
    warm "$tree"
    measure initial "$n" "$BENCH_DIR" "$us" -r "$repo" snapshot "$tree"
    record_size initial "$n" "$repo"
    warm "$tree"
    measure rerun "$n" "$BENCH_DIR" "$us" -r "$repo" snapshot "$tree"
    rm -rf -- "$tree" "$repo"
  done

  {
    echo "### understudy's peak RSS on generated trees"
    echo
    describe
    echo
    echo "| files | phase | wall | CPU (user+sys) | peak RSS | repository |"
    echo "|---:|---|---:|---:|---:|---:|"
    awk 'NR == FNR { size[$1 " " $2] = $3; next }
      {
        k = $1 " " $2
        repo = (k in size) ? sprintf("%.1f MiB", size[k] / 2^20) : ""
        printf "| %d | %s | %.2f s | %.2f s (%.2f + %.2f) | %.1f MiB | %s |\n", \
          $2, $1, $3, $4 + $5, $4, $5, $6 / 1024, repo
      }' "$sizes" "$raw"
  } >"$BENCH_DIR/results.txt"
  echo
  cat "$BENCH_DIR/results.txt"
  echo
  say "written to $BENCH_DIR/results.txt; logs in $BENCH_DIR/logs"
}

if [ "${1:-}" = rss ]; then
  shift
  rss "$@"
else
  corpus_main compare "$@"
fi
