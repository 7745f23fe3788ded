#!/usr/bin/env bash
# Times `understudy status` on repositories of many snapshots (issue 6:
# status answers in under 1 s with 10,000 snapshots). Run it by hand, as
# root, on an idle machine; never in CI.
#
#   bash bench/status.sh             # N=10000 snapshots, best of RUNS=5
#   N=50000 RUNS=3 bash bench/status.sh
#
# A small root tree shaped like the seed's is snapshotted once for each of
# three sets (accounts, os, ssh) with `understudy snapshot --root`, and the
# three snapshots are pushed to a local standby, which applies set os to a
# target directory: the primary then has a push record per set, the standby
# an applied snapshot whose lag status computes. bench/manysnaps then adds
# to each repository older copies of those snapshots, one an hour per set,
# until each holds N (the same records on both: manysnaps is
# deterministic). Taking N snapshots with the CLI would cost most of an
# hour of fsyncs; manysnaps stores each record as `snapshot` does, as the
# last blob of a tree pack of its own indexed in one transaction.
#
# Timed, RUNS times each after a sync, on the primary (with a configuration
# file naming the standby) and on the standby: `status`, `status --json`,
# `status --metrics FILE`. The best wall time of each is reported. Every
# run's output is in $BENCH_DIR/logs/ (default
# /var/tmp/understudy-bench-status, wiped at the start); the table is
# printed at the end and written to $BENCH_DIR/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-/var/tmp/understudy-bench-status}
BENCH_DIR=${BENCH_DIR%/}
N=${N:-10000}
RUNS=${RUNS:-5}
invocation="bash bench/status.sh $*"
# shellcheck source=bench/lib.sh
source bench/lib.sh

[ $# -eq 0 ] || { echo "usage: [N=10000] [RUNS=5] bash bench/status.sh" >&2; exit 2; }

# quiet LOG COMMAND... runs COMMAND in $BENCH_DIR (untimed) with its output
# in logs/LOG.out and .err; a failure stops the script.
quiet() {
  local base=$BENCH_DIR/logs/$1
  shift
  (cd "$BENCH_DIR" && exec "$@") >"$base.out" 2>"$base.err" || fail_logs "$* failed; see $base.out and $base.err" "$base"
}

# measure HOST LABEL COMMAND... runs COMMAND $RUNS times under timed and
# records each run; a failure stops the script.
measure() {
  local host=$1 label=$2 i
  shift 2
  for i in $(seq 1 "$RUNS"); do
    timed "$host" "$label-$i" "$@"
    [ "$rc" -eq 0 ] || fail_logs "$label on the $host failed with exit status $rc" "$base"
    record "$host" "$label" 7
  done
}

status_bench() {
  need_tools /usr/bin/time=time
  is_count "$N" && [ "$N" -ge 3 ] || die "N must be a count of at least 3"
  is_count "$RUNS" || die "RUNS must be a count"
  [ "$(id -u)" = 0 ] || die "run it as root: the standby's apply sets owners"
  wipe_bench_dir
  # about 1.5 KiB a snapshot in each repository: its pack and index entry
  need_space $((N * 4096 + (256 << 20))) $((N * 3)) "a benchmark of $N snapshots"
  build
  local manysnaps=$BENCH_DIR/bin/manysnaps
  go build -o "$manysnaps" ./bench/manysnaps
  rows=$BENCH_DIR/rows.txt
  : >"$rows"

  local root=$BENCH_DIR/root primary=$BENCH_DIR/primary standby=$BENCH_DIR/standby
  local target=$BENCH_DIR/target config=$BENCH_DIR/understudy.toml
  mkdir -p "$root"/etc/ssh "$root"/etc/init.d "$root"/usr/bin "$root"/var/adm/sa "$root"/dev "$target"
  echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
  echo "root:*:19000:0:99999:7:::" >"$root/etc/shadow"
  echo "root:x:0:" >"$root/etc/group"
  echo "PermitRootLogin prohibit-password" >"$root/etc/ssh/sshd_config"
  printf '#!/bin/sh\necho tool\n' >"$root/usr/bin/tool"
  echo "sar data" >"$root/var/adm/sa/sa01"
  cat >"$config" <<EOF
repo = "$primary"

[standby.dr]
url = "$standby"
target = "$target"

[set.accounts]
paths = ["/etc/passwd", "/etc/shadow", "/etc/group"]
to = ["dr"]

[set.os]
paths = ["/", "/etc/init.d/", "/etc/ssh/", "/etc/passwd"]
exclude = ["/etc/", "/dev/", "/var/adm/sa/"]
to = ["dr"]

[set.ssh]
paths = ["/etc/ssh/"]
to = ["dr"]
EOF
  quiet init-primary "$us" -r "$primary" init
  quiet init-standby "$us" -r "$standby" init
  say "one snapshot per set, pushed to the standby, which applies set os"
  quiet snapshot-accounts "$us" -r "$primary" snapshot --root "$root" --set accounts /etc/passwd /etc/shadow /etc/group
  quiet snapshot-os "$us" -r "$primary" snapshot --root "$root" --set os \
    --exclude /etc/ --exclude /dev/ --exclude /var/adm/sa/ / /etc/init.d/ /etc/ssh/ /etc/passwd
  quiet snapshot-ssh "$us" -r "$primary" snapshot --root "$root" --set ssh /etc/ssh/
  local set
  for set in accounts os ssh; do
    quiet "push-$set" "$us" -r "$primary" push --set "$set" --to "$standby"
  done
  quiet apply "$us" -r "$standby" apply latest --set os --target "$target"

  say "filling both repositories to $N snapshots with manysnaps"
  local t0 t1
  t0=$(date +%s.%N)
  quiet fill-primary "$manysnaps" -repo "$primary" -n "$N"
  t1=$(date +%s.%N)
  quiet fill-standby "$manysnaps" -repo "$standby" -n "$N"
  fill_time=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')
  local held
  held=$("$us" -r "$primary" --json snapshots | grep -c '"id"' || true)
  [ "$held" -eq "$N" ] || die "the primary holds $held snapshots, not $N"
  quiet check-primary "$us" -r "$primary" check

  say "status, status --json, status --metrics: best of $RUNS"
  measure primary status "$us" -c "$config" status
  measure primary json "$us" -c "$config" --json status
  measure primary metrics "$us" -c "$config" status --metrics "$BENCH_DIR/primary.prom"
  measure standby status "$us" -c "" -r "$standby" status
  measure standby json "$us" -c "" -r "$standby" --json status
  measure standby metrics "$us" -c "" -r "$standby" status --metrics "$BENCH_DIR/standby.prom"
  grep -q 'understudy_push_error{set="os",standby="dr"} 0' "$BENCH_DIR/primary.prom" ||
    die "the primary's metrics lack the push to dr; see $BENCH_DIR/primary.prom"
  grep -q "understudy_apply_lag_seconds{set=\"os\",target=\"$target\"}" "$BENCH_DIR/standby.prom" ||
    die "the standby's metrics lack the applied target; see $BENCH_DIR/standby.prom"

  {
    describe
    echo "$N snapshots in each repository, 3 sets (${fill_time} s to fill one with manysnaps);" \
      "the primary's index.db $(du -h "$primary/index.db" | cut -f1), $(find "$primary/packs" -type f | wc -l) packs"
    echo
    echo "| host | command | best wall | its CPU (user+sys) | its peak RSS |"
    echo "|---|---|---|---|---|"
    awk '{ k = $1 " " $2; if (!(k in best) || $3 < best[k]) { best[k] = $3; cpu[k] = $4 + $5; rss[k] = $6 } if (!(k in seen)) { seen[k] = 1; order[n++] = k } }
      END { for (i = 0; i < n; i++) { k = order[i]; split(k, p, " ");
        cmd = p[2] == "status" ? "status" : p[2] == "json" ? "status --json" : "status --metrics FILE";
        printf "| %s | `%s` | %.2f s | %.2f s | %.1f MiB |\n", p[1], cmd, best[k], cpu[k], rss[k] / 1024 } }' "$rows"
  } | tee "$BENCH_DIR/results.txt"
}

status_bench
