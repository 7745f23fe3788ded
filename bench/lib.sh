# shellcheck shell=bash
# Helpers shared by the bench scripts; sourced, not run. The caller
# sets BENCH_DIR and invocation ("bash bench/NAME.sh ARGS") first.

marker=.understudy-bench # marks a directory a bench script may wipe
script=${0##*/}

die() { echo "$script: $*" >&2; exit 1; }
say() { echo "== $*"; }
gib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 2^30 }'; }
is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
count_files() { find "$1" -type f | wc -l; }

# need_tools COMMAND=PACKAGE...: installs the packages whose command is
# missing.
need_tools() {
  command -v go >/dev/null || die "go is not on PATH; install Go 1.26"
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}; install them or run as root"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${missing[@]}" || { apt-get update && apt-get install -y "${missing[@]}"; }
}

# wipe_bench_dir wipes and recreates $BENCH_DIR with logs/ and bin/,
# refusing a directory that holds something no bench script made, and
# notes the load average before the run.
wipe_bench_dir() {
  [[ $BENCH_DIR == /?* ]] || die "BENCH_DIR must be an absolute path other than /, not '$BENCH_DIR'"
  if [ -e "$BENCH_DIR" ]; then
    [ -d "$BENCH_DIR" ] || die "BENCH_DIR $BENCH_DIR is not a directory"
    if [ -n "$(ls -A "$BENCH_DIR")" ] && [ ! -e "$BENCH_DIR/$marker" ]; then
      die "$BENCH_DIR is not empty and was not made by a bench script; empty it or set BENCH_DIR"
    fi
    say "wiping $BENCH_DIR"
    rm -rf -- "$BENCH_DIR"
  fi
  mkdir -p "$BENCH_DIR/logs" "$BENCH_DIR/bin"
  touch "$BENCH_DIR/$marker"
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
}

# need_space BYTES INODES WHAT fails unless $BENCH_DIR's filesystem has that
# much room.
need_space() {
  local avail inodes
  avail=$(df -B1 --output=avail "$BENCH_DIR" | tail -n 1 | tr -d ' ')
  inodes=$(df --output=iavail "$BENCH_DIR" | tail -n 1 | tr -d ' ')
  if [ "$avail" -lt "$1" ]; then
    die "$3 needs about $(gib "$1") GiB free in $BENCH_DIR, which has $(gib "$avail") GiB; free some or set BENCH_DIR"
  fi
  if [[ $inodes =~ ^[0-9]+$ ]] && [ "$inodes" -gt 0 ] && [ "$inodes" -lt "$2" ]; then
    die "$3 needs about $2 free inodes in $BENCH_DIR, which has $inodes; set BENCH_DIR to another filesystem"
  fi
}

# build builds understudy and gentree into $BENCH_DIR/bin ($us, $gentree)
# and names the revision, "+changes" when tracked files differ from HEAD.
build() {
  say "building understudy and gentree"
  us=$BENCH_DIR/bin/understudy
  gentree=$BENCH_DIR/bin/gentree
  go build -o "$us" ./cmd/understudy
  go build -o "$gentree" ./bench/gentree
  revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    revision="$revision+changes"
  fi
}

# warm PATH... reads every file and inode below PATH so that the next run
# finds them in the page cache (GNU tar skips reading when it writes
# straight to /dev/null, hence cat).
warm() {
  tar -cf - "$@" 2>/dev/null | cat >/dev/null || true
}

# describe prints the lines that head a results file.
describe() {
  local cpu mem
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || echo unknown)
  mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 2^20 }' /proc/meminfo)
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), \`${invocation:?}\`, understudy $revision, $(go version | cut -d' ' -f3)"
  echo "machine: $(nproc) × $cpu, $mem RAM, Linux $(uname -r)," \
    "$(findmnt -no FSTYPE -T "$BENCH_DIR" 2>/dev/null || echo '?') under $BENCH_DIR;" \
    "load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
}

# fail_logs WHY BASE stops the script with WHY after the last lines of
# BASE.out, BASE.err and BASE.log, those that are not empty.
fail_logs() {
  local f
  for f in "$2.out" "$2.err" "$2.log"; do
    [ -s "$f" ] || continue
    echo "--- $f (last 20 lines):" >&2
    tail -n 20 "$f" >&2
  done
  die "$1"
}

# timed PHASE LABEL COMMAND... runs COMMAND in $BENCH_DIR under
# /usr/bin/time, after a sync so that no earlier writes are flushed during
# the run; its output goes to logs/PHASE-LABEL.out and .err, the times to
# .time. It sets base to logs/PHASE-LABEL and rc to the exit status.
# shellcheck disable=SC2034 # rc is for the caller
timed() {
  local phase=$1 label=$2
  shift 2
  base=$BENCH_DIR/logs/$phase-$label
  rc=0
  sync
  (cd "$BENCH_DIR" && exec /usr/bin/time -f '%e %U %S %M' -o "$base.time" "$@") >"$base.out" 2>"$base.err" || rc=$?
}

# record PHASE LABEL appends "PHASE LABEL wall user sys rss_kib" of the
# last timed run to $rows and prints it, the phase in a column WIDTH wide.
# shellcheck disable=SC2154 # rows is the caller's
record() {
  local phase=$1 label=$2 width=$3 wall user sys rss
  read -r wall user sys rss < <(tail -n 1 "$base.time")
  echo "$phase $label $wall $user $sys $rss" >>"$rows"
  awk -v p="$phase" -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v pw="$width" \
    'BEGIN { printf "   %-*s %-10s %8.2f s wall %8.2f s CPU %7.1f MiB peak RSS\n", pw, p, l, w, u + s, r / 1024 }'
}

# make_corpus copy|small NUM DEN: the corpus of a benchmark: a copy of $src
# (copy) or $n files made by gentree (small), checking first that the
# filesystem has NUM/DEN times the corpus's bytes and inodes (the caller's
# copies and repositories) and 1 GiB more. Builds understudy and sets
# corpus, corpus_name and, through describe_corpus, corpus_desc.
make_corpus() {
  case $1 in
    copy)
      [ -d "$src" ] || die "$src is not a directory"
      local src_bytes
      src_bytes=$(du -sb "$src" | cut -f1)
      need_space $((src_bytes * $2 / $3 + (1 << 30))) \
        $(($(find "$src" -xdev | wc -l) * $2 / $3)) "a benchmark on $src"
      corpus=$BENCH_DIR/corpus/$(basename "$src")
      corpus_name="a copy of $src"
      say "copying $src ($(gib "$src_bytes") GiB) to $corpus"
      mkdir -p "$BENCH_DIR/corpus"
      cp -a "$src" "$corpus"
      build
      ;;
    small)
      # a generated file takes about 6 KiB of disk
      need_space $((n * 6 * 1024 * $2 / $3 + (1 << 30))) $((n * $2 / $3)) "$n small files"
      build
      corpus=$BENCH_DIR/corpus/small
      corpus_name="$n generated small files (gentree, seed 1)"
      say "generating $n small files in $corpus"
      "$gentree" -gen "$corpus" -n "$n" -seed 1 >"$BENCH_DIR/logs/gentree.log"
      ;;
  esac
  describe_corpus
}

# describe_corpus sets corpus_desc (files, directories, size of $corpus)
# and says it.
describe_corpus() {
  corpus_files=$(count_files "$corpus")
  corpus_desc="$corpus_files regular files, $(find "$corpus" -type d | wc -l) directories, $(du -sb "$corpus" | awk '{ printf "%.2f GiB", $1 / 2^30 }')"
  say "corpus: $corpus_desc"
}

# publish REPORT: writes what the function REPORT prints to
# $BENCH_DIR/results.txt and shows it.
publish() {
  "$1" >"$BENCH_DIR/results.txt"
  echo
  cat "$BENCH_DIR/results.txt"
  echo
  say "written to $BENCH_DIR/results.txt; logs in $BENCH_DIR/logs"
}

# corpus_main BENCH ARGS...: the command line of a corpus benchmark
# (usr | copy DIR | small [N]); runs BENCH copy with $src set, or BENCH
# small with $n set.
corpus_main() {
  local bench=$1
  shift
  case ${1:-} in
    usr)
      [ $# -eq 1 ] || usage
      src=/usr
      "$bench" copy ;;
    copy)
      [ $# -eq 2 ] || usage
      src=$(realpath -e "$2") || die "$2 does not exist"
      [ "$src" != / ] || die "copying / is not supported; name a directory below it"
      "$bench" copy ;;
    small)
      [ $# -le 2 ] || usage
      n=${2:-1000000}
      is_count "$n" || usage
      "$bench" small ;;
    *) usage ;;
  esac
}
