#!/usr/bin/env bash
# Benchmarks `understudy push` against rsync over a real OpenSSH sshd on
# 127.0.0.1 (issue "Replication over SSH"). Run it by hand, as root, on an
# idle machine; never in CI. bench/README.md explains the phases.
#
#   bash bench/push.sh usr          # a copy of this machine's /usr
#   bash bench/push.sh copy DIR     # a copy of DIR (as usr does for /usr)
#   bash bench/push.sh small [N]    # N generated small files (default 1000000)
#
# PUSH_OPTS adds options to every `understudy push`, e.g. PUSH_OPTS=--no-delta.
#
# Everything happens in $BENCH_DIR (default /var/tmp/understudy-bench-push),
# which is wiped at the start. The script starts its own sshd on a free port
# of 127.0.0.1 and stops it when it ends. The table is printed at the end and
# written to $BENCH_DIR/results.txt; each run's output is in $BENCH_DIR/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-/var/tmp/understudy-bench-push}
BENCH_DIR=${BENCH_DIR%/}
read -r -a push_opts <<<"${PUSH_OPTS:-}"
invocation="bash bench/push.sh $*"
# shellcheck source=bench/lib.sh
source bench/lib.sh
sshd_pid='' sshd_log=''
unset SSH_AUTH_SOCK # only the keys made here

usage() {
  echo "usage: bash bench/push.sh usr | copy DIR | small [N]" >&2
  exit 2
}

# prepare wipes and recreates $BENCH_DIR and the files of this run.
prepare() {
  # The paths go unquoted into authorized_keys, an ssh URL and rsync's
  # remote command line.
  [[ $BENCH_DIR =~ ^/[A-Za-z0-9._/+-]+$ ]] ||
    die "BENCH_DIR must be an absolute path other than / of letters, digits and . _ / + -, not '$BENCH_DIR'"
  wipe_bench_dir
  # PHASE TOOL wall user sys rss_kib proto_out proto_in ssh_bytes lo_bytes,
  # then the standby's wall user sys rss_kib ("-" where unknown); one line
  # per run
  rows=$BENCH_DIR/rows.txt
  snaps=$BENCH_DIR/snapshots.txt # PHASE wall user sys rss_kib
  sizes=$BENCH_DIR/sizes.txt     # PHASE primary standby rsync-copy, in bytes
  notes=$BENCH_DIR/notes.txt     # lines for the head of the results
  : >"$rows"
  : >"$snaps"
  : >"$sizes"
  : >"$notes"
}

# ---- the sshd ---------------------------------------------------------------

# lo_tx prints the bytes the loopback interface has sent. Every byte between
# two local sockets goes through lo once, so the difference over a run is the
# traffic of both directions, TCP/IP headers included.
lo_tx() {
  awk '/^ *lo:/ { sub(/^ *lo:/, ""); print $9 }' /proc/net/dev
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_sshd() {
  if [ -n "$sshd_pid" ]; then
    kill "$sshd_pid" 2>/dev/null || true
    wait "$sshd_pid" 2>/dev/null || true
    sshd_pid=
  fi
}

# start_sshd makes the keys, authorized_keys and known_hosts in $ssh_dir and
# starts sshd on a free port of 127.0.0.1, trying another port if one is
# taken meanwhile. Key understudy may only run `understudy serve` on the
# standby, under /usr/bin/time so that the standby's side is measured too;
# key rsync runs any command (rsync needs that), without a pty or forwarding.
start_sshd() {
  ssh_dir=$BENCH_DIR/ssh
  mkdir -m 700 "$ssh_dir"
  key_us=$ssh_dir/key-understudy key_rsync=$ssh_dir/key-rsync
  known_hosts=$ssh_dir/known_hosts serve_time=$ssh_dir/serve.time
  sshd_log=$ssh_dir/sshd.log
  local k
  for k in host-key key-understudy key-rsync; do
    ssh-keygen -q -t ed25519 -N '' -C "understudy-bench-$k" -f "$ssh_dir/$k"
  done
  {
    echo "command=\"/usr/bin/time -o $serve_time -f '%e %U %S %M' $us serve --repo $repo_s\",restrict $(cat "$key_us.pub")"
    echo "restrict $(cat "$key_rsync.pub")"
  } >"$ssh_dir/authorized_keys"
  mkdir -p /run/sshd # the privilege separation directory; sshd needs it

  local attempt i conf=$ssh_dir/sshd_config
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    cat >"$conf" <<EOF
ListenAddress 127.0.0.1:$port
HostKey $ssh_dir/host-key
AuthorizedKeysFile $ssh_dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PrintMotd no
PrintLastLog no
UseDNS no
PidFile none
LogLevel DEBUG1
EOF
    /usr/sbin/sshd -t -f "$conf" >>"$sshd_log" 2>&1 ||
      die "sshd refuses its configuration $conf; see $sshd_log"
    echo "[127.0.0.1]:$port $(cut -d' ' -f1-2 "$ssh_dir/host-key.pub")" >"$known_hosts"
    ssh_cmd=(ssh -F /dev/null -p "$port" -i "$key_rsync" -o IdentitiesOnly=yes -o BatchMode=yes
      -o ConnectTimeout=10 -o LogLevel=VERBOSE -o UserKnownHostsFile="$known_hosts" -o GlobalKnownHostsFile=/dev/null
      -o StrictHostKeyChecking=yes)
    /usr/sbin/sshd -D -e -f "$conf" 2>>"$sshd_log" &
    sshd_pid=$!
    for i in $(seq 100); do
      if ! kill -0 "$sshd_pid" 2>/dev/null; then
        wait "$sshd_pid" 2>/dev/null || true
        sshd_pid=
        break
      fi
      if "${ssh_cmd[@]}" root@127.0.0.1 true >>"$ssh_dir/probe.log" 2>&1; then
        say "sshd listens on 127.0.0.1:$port (pid $sshd_pid, attempt $attempt)"
        return
      fi
      [ "$i" -lt 100 ] || { stop_sshd; die "sshd on port $port does not let key-rsync in; see $sshd_log and $ssh_dir/probe.log"; }
      sleep 0.1
    done
    echo "   sshd did not start on port $port; trying another" >&2
  done
  die "sshd did not start; see $sshd_log"
}

# ssh_stats LINE CLIENTLOG waits until sshd has logged the end of the
# connection that began after line LINE of its log, then sets cipher to the
# cipher it negotiated and ssh_bytes to the bytes of the SSH stream, both
# directions, that is the TCP payload. OpenSSH logs them as "Transferred:
# sent N, received M bytes": sshd when the client closed the session (as
# understudy does), otherwise the ssh client at LogLevel VERBOSE in
# CLIENTLOG (as under rsync). "-" when neither did.
ssh_stats() {
  local i
  for i in $(seq 50); do
    tail -n +"$(($1 + 1))" "$sshd_log" | grep -Eq '^(Closing connection to|Disconnected from) ' && break
    sleep 0.1
  done
  cipher=$(tail -n +"$(($1 + 1))" "$sshd_log" |
    awk '/kex: client->server cipher:/ { for (i = 1; i < NF; i++) if ($i == "cipher:") c = $(i + 1) } END { print c }')
  # shellcheck disable=SC2016 # an awk program
  local transferred='/^Transferred: sent/ { gsub(/,/, ""); b += $3 + $5; n++ } END { if (n) print b }'
  ssh_bytes=$(tail -n +"$(($1 + 1))" "$sshd_log" | awk "$transferred")
  [ -n "$ssh_bytes" ] || ssh_bytes=$(awk "$transferred" "$2")
  [ -n "$ssh_bytes" ] || ssh_bytes=-
}

# ---- the runs ---------------------------------------------------------------

# measure PHASE LABEL COMMAND... runs COMMAND in $BENCH_DIR under
# /usr/bin/time, after a sync so that no earlier writes are flushed during
# the run. Its standard output goes to logs/PHASE-LABEL.out, its standard
# error to logs/PHASE-LABEL.err. It sets times to "wall user sys rss_kib"
# and lo to the loopback bytes of the run, and for a run over ssh (every
# LABEL but snapshot) cipher and ssh_bytes (see ssh_stats). A failure stops
# the script with the end of the output and of sshd's log.
measure() {
  local phase=$1 label=$2
  shift 2
  local base=$BENCH_DIR/logs/$phase-$label rc=0 lo0 lo1 log0
  sync
  log0=$(wc -l <"$sshd_log")
  lo0=$(lo_tx)
  (cd "$BENCH_DIR" && exec /usr/bin/time -f '%e %U %S %M' -o "$base.time" "$@") >"$base.out" 2>"$base.err" || rc=$?
  lo1=$(lo_tx)
  lo=$((lo1 - lo0))
  [ "$label" = snapshot ] || ssh_stats "$log0" "$base.err"
  if [ "$rc" -eq 3 ] && [ "$label" = snapshot ]; then
    echo "   WARNING: understudy snapshot in phase $phase could not read some paths (exit 3); see $base.err" |
      tee -a "$notes"
  elif [ "$rc" -ne 0 ]; then
    fail "$label failed in phase $phase with exit status $rc" "$base" "$@"
  fi
  local wall user sys rss
  read -r wall user sys rss < <(tail -n 1 "$base.time")
  times="$wall $user $sys $rss"
  awk -v p="$phase" -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" \
    'BEGIN { printf "   %-8s %-10s %8.2f s wall %8.2f s CPU %7.1f MiB peak RSS\n", p, l, w, u + s, r / 1024 }'
}

# fail WHY BASE [COMMAND...] stops the script, showing the command, the end
# of its output (BASE.out, BASE.err or BASE.log) and of sshd's log. The same
# goes to $BENCH_DIR/FAILED.txt.
fail() {
  local why=$1 base=$2 f
  shift 2
  {
    echo "push.sh: $why"
    if [ $# -gt 0 ]; then
      printf 'command:'
      printf ' %q' "$@"
      echo
    fi
    for f in "$base.out" "$base.err" "$base.log" "$sshd_log"; do
      [ -s "$f" ] || continue
      echo "--- $f (last 20 lines):"
      tail -n 20 "$f"
    done
  } | tee "$BENCH_DIR/FAILED.txt" >&2
  exit 1
}

# standby_time FILE prints "wall user sys rss_kib" from /usr/bin/time's FILE
# on the standby's side, or "- - - -" if it never appeared.
standby_time() {
  local i
  for i in $(seq 50); do
    [ -s "$1" ] && break
    sleep 0.1
  done
  if [ -s "$1" ]; then tail -n 1 "$1"; else echo "- - - -"; fi
}

# run_snapshot PHASE takes the primary's snapshot of the corpus.
run_snapshot() {
  warm "$corpus"
  measure "$1" snapshot "$us" -r "$repo_p" snapshot "$corpus"
  echo "$1 $times" >>"$snaps"
}

# run_push PHASE pushes the primary's latest snapshot to the standby over
# ssh, then checks the standby (untimed).
run_push() {
  local phase=$1 base=$BENCH_DIR/logs/$1-understudy wire
  warm "$repo_p" "$repo_s"
  rm -f "$serve_time"
  measure "$phase" understudy "$us" -r "$repo_p" --json push --to "ssh://root@127.0.0.1:$port$repo_s" \
    -i "$key_us" --known-hosts "$known_hosts" ${push_opts[@]+"${push_opts[@]}"}
  mv "$serve_time" "$base.standby.time" 2>/dev/null || true
  echo "understudy $cipher" >>"$BENCH_DIR/ciphers.txt"
  wire=$(python3 - "$base.out" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if len(r) != 1 or r[0].get("error"):
    sys.exit("push result: %r" % r)
print(r[0]["wire_bytes_out"], r[0]["wire_bytes_in"])
EOF
  ) || fail "understudy push in phase $phase printed no usable result" "$base"
  echo "$phase understudy $times $wire $ssh_bytes $lo $(standby_time "$base.standby.time")" >>"$rows"
  verify_standby "$phase"
}

# verify_standby PHASE runs check on the standby and fails unless the
# snapshot just pushed is there with the primary's root tree.
verify_standby() {
  local phase=$1 base=$BENCH_DIR/logs/$1 got got_id got_root got_n
  "$us" -r "$repo_s" check >"$base-check.log" 2>&1 || fail "understudy check of the standby failed after phase $phase" "$base-check"
  "$us" -r "$repo_p" --json snapshots >"$base-primary.json" 2>"$base-primary.err" ||
    fail "understudy snapshots of the primary failed after phase $phase" "$base-primary"
  "$us" -r "$repo_s" --json snapshots >"$base-standby.json" 2>"$base-standby.err" ||
    fail "understudy snapshots of the standby failed after phase $phase" "$base-standby"
  got=$(python3 - "$base-understudy.out" "$base-primary.json" "$base-standby.json" <<'EOF'
import json, sys
push, primary, standby = (json.load(open(f)) for f in sys.argv[1:])
want = push[0]["snapshots"][-1]["snapshot"]
p = {s["id"]: s["root"] for s in primary}
s = {s["id"]: s["root"] for s in standby}
if want not in p:
    sys.exit("the primary has no snapshot %s" % want)
if want not in s:
    sys.exit("the standby has no snapshot %s; it has %s" % (want, sorted(s)))
if s[want] != p[want]:
    sys.exit("snapshot %s has root %s on the standby, %s on the primary" % (want, s[want], p[want]))
print(want[:12], p[want][:12], len(s))
EOF
  ) || fail "the standby does not hold what was pushed in phase $phase" "$base-standby"
  read -r got_id got_root got_n <<<"$got"
  echo "   standby checked: snapshot $got_id (root $got_root) is there, $got_n snapshot(s) in all"
}

# run_rsync PHASE LABEL DEST OPTION... updates DEST on the "remote" side with
# rsync over ssh, timing rsync's server side too.
run_rsync() {
  local phase=$1 label=$2 dest=$3 base=$BENCH_DIR/logs/$1-$2 wire
  shift 3
  warm "$corpus" "$dest"
  measure "$phase" "$label" rsync "$@" --stats -e "${ssh_cmd[*]}" \
    --rsync-path="/usr/bin/time -o $base.standby.time -f '%e %U %S %M' rsync" \
    "$corpus/" "root@127.0.0.1:$dest/"
  echo "$label $cipher" >>"$BENCH_DIR/ciphers.txt"
  wire=$(awk '/^Total bytes sent:/ { gsub(/[^0-9]/, "", $4); s = $4 }
    /^Total bytes received:/ { gsub(/[^0-9]/, "", $4); r = $4 }
    END { if (s == "" || r == "") exit 1; print s, r }' "$base.out") ||
    fail "rsync printed no --stats in phase $phase" "$base"
  echo "$phase $label $times $wire $ssh_bytes $lo $(standby_time "$base.standby.time")" >>"$rows"
}

record_sizes() {
  echo "$1 $(du -sb "$repo_p" | cut -f1) $(du -sb "$repo_s" | cut -f1) $(du -sb "$rcopy" | cut -f1)" >>"$sizes"
}

# pick_rename prints the subdirectory of the corpus, one or two levels down,
# with the most regular files below it but no more than half of them.
pick_rename() {
  find "$corpus" -mindepth 2 -type f -printf '%P\n' | awk -F/ -v total="$corpus_files" '
    { n[$1]++; if (NF >= 3) n[$1 "/" $2]++ }
    END {
      for (d in n) if (2 * n[d] <= total && (n[d] > bn || (n[d] == bn && d < best))) { best = d; bn = n[d] }
      if (best != "") print bn "\t" best
    }'
}

# ---- the benchmark ----------------------------------------------------------

push_bench() {
  need_tools rsync=rsync /usr/sbin/sshd=openssh-server ssh=openssh-client ssh-keygen=openssh-client \
    /usr/bin/time=time tar=tar python3=python3
  prepare
  # the corpus and two rsync copies (one at a time after the first) at 1×
  # each, two repositories at up to 0.5× each
  make_corpus "$1" 4 1

  repo_p=$BENCH_DIR/repo-primary repo_s=$BENCH_DIR/repo-standby
  rcopy=$BENCH_DIR/rsync-copy rcopy_az=$BENCH_DIR/rsync-copy-az
  rsync_opts=(-aHAXS -z --delete --numeric-ids)
  say "initialising the primary and the standby"
  { "$us" -r "$repo_p" init && "$us" -r "$repo_s" init && mkdir "$rcopy" "$rcopy_az"; } \
    >"$BENCH_DIR/logs/init.log" 2>&1 || die "initialising failed; see $BENCH_DIR/logs/init.log"
  trap stop_sshd EXIT
  trap 'exit 130' INT TERM
  start_sshd
  versions="$(rsync --version | awk 'NR == 1 { print "rsync " $3 " (protocol " $6 ")" }')"
  versions+=", $(ssh -V 2>&1 | cut -d, -f1) (client and sshd)"
  versions+=", understudy's ssh: golang.org/x/crypto $(awk '$1 == "golang.org/x/crypto" { print $2 }' go.mod)"

  say "(1) initial: first snapshot, pushed"
  run_snapshot initial
  run_push initial
  run_rsync initial rsync-az "$rcopy_az" -az
  # deleted only now, so that the next run does not pay for the deletion
  run_rsync initial rsync "$rcopy" "${rsync_opts[@]}"
  rm -rf -- "$rcopy_az"
  record_sizes initial

  say "(2) changed: one change to the corpus, then snapshot and push"
  "$gentree" -change "$corpus" -seed 1 >"$BENCH_DIR/logs/change.log"
  change_desc=$(tail -n 1 "$BENCH_DIR/logs/change.log" | sed 's/^gentree: [^:]*: //')
  echo "   $change_desc"
  run_snapshot changed
  run_push changed
  run_rsync changed rsync "$rcopy" "${rsync_opts[@]}"
  record_sizes changed

  corpus_files=$(count_files "$corpus")
  local pick
  pick=$(pick_rename)
  if [ -z "$pick" ]; then
    rename_desc="none: no subdirectory holds at most half of the files; phase skipped"
    say "(3) renamed: skipped, $rename_desc"
  else
    local files=${pick%%$'\t'*} dir=${pick#*$'\t'}
    if [ ! -d "$corpus/$dir" ] || [ -e "$corpus/$dir-renamed" ]; then
      die "cannot rename $corpus/$dir to $dir-renamed"
    fi
    rename_desc="$dir → $dir-renamed ($files of $corpus_files regular files)"
    say "(3) renamed: $rename_desc, then snapshot and push"
    mv -- "$corpus/$dir" "$corpus/$dir-renamed"
    run_snapshot renamed
    run_push renamed
    run_rsync renamed rsync "$rcopy" "${rsync_opts[@]}"
    record_sizes renamed
  fi

  say "reading every blob of the standby (check --read-data, untimed)"
  "$us" -r "$repo_s" check --read-data >"$BENCH_DIR/logs/check-read-data.log" 2>&1 ||
    fail "understudy check --read-data of the standby failed" "$BENCH_DIR/logs/check-read-data"
  stop_sshd

  publish report
}

report() {
  local ciphers
  ciphers=$(awk '!seen[$0]++ { printf "%s%s %s", sep, $1, $2; sep = ", " }' "$BENCH_DIR/ciphers.txt")
  echo "### understudy push and rsync over ssh on $corpus_name"
  echo
  describe
  echo "corpus: $corpus_desc"
  echo "tools: $versions; ciphers: $ciphers"
  echo "push options: ${push_opts[*]:-none beyond --to -i --known-hosts --json}"
  echo "change (2): $change_desc"
  echo "rename (3): $rename_desc"
  if [ -s "$notes" ]; then sed 's/^ *//' "$notes"; fi
  echo
  echo "| phase | tool | wall | CPU (user+sys) | peak RSS | wire bytes (protocol) | ssh bytes | loopback bytes | standby CPU | standby peak RSS |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk "$awk_size"'
    BEGIN { name["understudy"] = "understudy push"; name["rsync"] = "rsync -aHAXS -z"; name["rsync-az"] = "rsync -az" }
    {
      scpu = ($11 == "-") ? "–" : sprintf("%.2f s", $12 + $13)
      srss = ($11 == "-") ? "–" : size($14 * 1024)
      sshb = ($9 == "-") ? "–" : size($9)
      printf "| %s | %s | %.2f s | %.2f s (%.2f + %.2f) | %s | %s (%s out + %s in) | %s | %s | %s | %s |\n", \
        $1, name[$2], $3, $4 + $5, $4, $5, size($6 * 1024), size($7 + $8), size($7), size($8), sshb, size($10), scpu, srss
    }' "$rows"
  echo
  echo "understudy snapshot on the primary (before each push, not part of it), and sizes after the phase:"
  echo
  echo "| phase | wall | CPU (user+sys) | peak RSS | primary repository | standby repository | rsync copy |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  awk "$awk_size"'
    NR == FNR { sizes[$1] = size($2) " | " size($3) " | " size($4); next }
    { printf "| %s | %.2f s | %.2f s (%.2f + %.2f) | %s | %s |\n", $1, $2, $3 + $4, $3, $4, size($5 * 1024), sizes[$1] }' \
    "$sizes" "$snaps"
  echo
  echo "Ratios understudy push / rsync (below 1: understudy is faster, sends less):"
  echo
  echo "| phase | rsync | wall | CPU (user+sys) | wire bytes (protocol) | ssh bytes | loopback bytes |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  awk 'function ratio(a, b) { return (a != "-" && b != "-" && b > 0) ? sprintf("%.2f", a / b) : "–" }
    BEGIN { name["rsync"] = "-aHAXS -z"; name["rsync-az"] = "-az" }
    { k = $1 " " $2; wall[k] = $3; cpu[k] = $4 + $5; wire[k] = $7 + $8; sshb[k] = $9; lo[k] = $10
      if (!($1 in seen)) { seen[$1] = 1; phases[++np] = $1 }
      if ($2 != "understudy") peers[$1] = peers[$1] " " $2 }
    END {
      for (i = 1; i <= np; i++) {
        p = phases[i]; u = p " understudy"
        n = split(peers[p], peer, " ")
        for (j = 1; j <= n; j++) {
          k = p " " peer[j]
          printf "| %s | %s | %s | %s | %s | %s | %s |\n", p, name[peer[j]], ratio(wall[u], wall[k]), \
            ratio(cpu[u], cpu[k]), ratio(wire[u], wire[k]), ratio(sshb[u], sshb[k]), ratio(lo[u], lo[k])
        }
      }
    }' "$rows"
}

# awk_size defines size(BYTES) for the report's awk programs.
awk_size='function size(b) {
  if (b < 2^20) return sprintf("%.1f KiB", b / 2^10)
  if (b < 2^30) return sprintf("%.1f MiB", b / 2^20)
  return sprintf("%.2f GiB", b / 2^30)
}'

[ "$(id -u)" = 0 ] || die "run it as root: it copies with owners and starts sshd for root logins"
corpus_main push_bench "$@"
