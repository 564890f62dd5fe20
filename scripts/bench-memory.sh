#!/usr/bin/env bash
# Memory and scale: one node holding N keys of 100-byte values (default ten
# million), and a follower bootstrapping it from a snapshot.
#
# Phases, each reporting the leader's (and the follower's) peak RSS during
# the phase (VmHWM, reset before it through /proc/PID/clear_refs) and RSS
# at its end (VmRSS), with the data directory's size:
#   idle      a fresh leader, empty
#   load      N distinct keys `key:%012d` with random 100-byte values (hex
#             of random bytes), written as MSET batches of 1000 keys over
#             LOADERS parallel `redis-cli --pipe` connections to
#             --resp-listen; every batch is one WAL record, fsynced before
#             it is acknowledged (--fsync always, the default)
#   restart   kill -9 right after the load (so recovery replays the WAL
#             since the last checkpoint), start again, time until a GET of
#             the last key answers
#   get       redis-benchmark GET of random existing keys, 50 connections
#   digest    GET /internal/digest (the whole table, hashed)
#   bootstrap a new follower joins; the leader has trimmed its WAL
#             (16 MiB segments, --wal-retention-bytes 16 MiB), so the follower gets a
#             snapshot, then streams; timed until its applied LSN reaches
#             the leader's last LSN
#
# Usage: scripts/bench-memory.sh [N]   (default 10000000)
#        REPLIDB=path/to/replidb to use another binary (default: release)
#        BASE_PORT (default 17400: HTTP, +1 RESP, +2 follower HTTP)
#        KEEP=1 to keep the data directory
#        EXTRA="--flag value" passed to both servers
# Needs redis-cli, redis-benchmark, curl, jq, python3; about N * 600 bytes
# of disk (table, WAL, the follower's copy). Not part of the test suite.
set -euo pipefail

BIN=${REPLIDB:-${CARGO_TARGET_DIR:-target}/release/replidb}
N=${1:-10000000}
BATCH=1000
LOADERS=${LOADERS:-4}
GETS=${GETS:-1000000}
BASE_PORT=${BASE_PORT:-17400}
EXTRA=${EXTRA:-}
PORT=$BASE_PORT
RESP=$((BASE_PORT + 1))
FPORT=$((BASE_PORT + 2))
LEADER="http://127.0.0.1:$PORT"
FOLLOWER="http://127.0.0.1:$FPORT"
DIR=$(mktemp -d "${TMPDIR:-/tmp}/replidb-bench-memory.XXXXXX")
LPID=
FPID=

cleanup() {
  for p in $FPID $LPID; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then rm -rf "$DIR"; else echo "kept $DIR" >&2; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
# kB fields of /proc/PID/status, printed in MiB.
mib() { awk -v f="$2:" '$1 == f { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
# Reset the peak RSS (VmHWM) to the current RSS.
reset_peak() { echo 5 >"/proc/$1/clear_refs"; }
size_mib() { du -sb "$1" | awk '{ printf "%.0f", $1 / 1048576 }'; }
status() { curl -sf "$1/status" | jq -r ".$2"; }

start_leader() {
  # shellcheck disable=SC2086
  "$BIN" server --id n1 --listen "127.0.0.1:$PORT" --resp-listen "127.0.0.1:$RESP" \
    --data-dir "$DIR/n1" --wal-segment-bytes $((16 << 20)) --wal-retention-bytes $((16 << 20)) $EXTRA \
    >>"$DIR/n1.log" 2>&1 &
  LPID=$!
}

# Wait (at most $2 seconds) for the command $1 to succeed.
wait_for() {
  local deadline=$((SECONDS + $2))
  until eval "$1" >/dev/null 2>&1; do
    if [ "$SECONDS" -gt "$deadline" ]; then
      echo "timed out waiting for: $1 (logs in $DIR)" >&2
      KEEP=1
      exit 1
    fi
    sleep 0.05
  done
}

# MSET batches of keys [from, to) as RESP, on stdout.
gen() {
  python3 - "$1" "$2" "$BATCH" <<'PY'
import os, sys
lo, hi, batch = map(int, sys.argv[1:])
out = sys.stdout.buffer
for start in range(lo, hi, batch):
    n = min(batch, hi - start)
    vals = os.urandom(50 * n).hex().encode()
    parts = [b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * n)]
    for i in range(n):
        parts.append(b"$16\r\nkey:%012d\r\n$100\r\n" % (start + i))
        parts.append(vals[100 * i:100 * i + 100])
        parts.append(b"\r\n")
    out.write(b"".join(parts))
PY
}

row() { # phase, seconds, detail, leader peak, leader end, follower peak, follower end
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" "${6:--}" "${7:--}" \
    "$(size_mib "$DIR/n1")"
}

echo "replidb $("$BIN" --version 2>/dev/null | awk '{print $NF}'); N=$N keys, 100-byte values;" \
  "$(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
echo
echo "| phase | s | what | leader peak RSS MiB | leader RSS MiB | follower peak RSS MiB | follower RSS MiB | leader data MiB |"
echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"

start_leader
wait_for "curl -sf $LEADER/health" 30
row idle 0 "" "$(mib "$LPID" VmHWM)" "$(mib "$LPID" VmRSS)"

# load
reset_peak "$LPID"
t0=$(now)
per=$(((N + LOADERS - 1) / LOADERS))
pids=()
for ((i = 0; i < LOADERS; i++)); do
  lo=$((i * per)); hi=$(((i + 1) * per)); [ "$hi" -gt "$N" ] && hi=$N
  [ "$lo" -ge "$hi" ] && continue
  (gen "$lo" "$hi" | redis-cli -p "$RESP" --pipe >"$DIR/load.$i.txt" 2>&1) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
t1=$(now)
if grep -q "errors: [1-9]" "$DIR"/load.*.txt; then
  echo "load errors:" >&2; cat "$DIR"/load.*.txt >&2; exit 1
fi
keys=$(redis-cli -p "$RESP" dbsize)
[ "$keys" = "$N" ] || { echo "dbsize $keys, expected $N" >&2; exit 1; }
rate=$(awk -v n="$N" -v s="$(secs "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }')
row load "$(secs "$t0" "$t1")" "$rate keys/s; wal $(size_mib "$DIR/n1/wal") MiB, table $(size_mib "$DIR/n1/table.redb") MiB" \
  "$(mib "$LPID" VmHWM)" "$(mib "$LPID" VmRSS)"

# restart after kill -9
kill -9 "$LPID"; wait "$LPID" 2>/dev/null || true
last_key=$(printf 'key:%012d' $((N - 1)))
t0=$(now)
start_leader
wait_for "[ -n \"\$(redis-cli -p $RESP get $last_key)\" ]" 1800
t1=$(now)
row restart "$(secs "$t0" "$t1")" "kill -9, start, until GET answers" "$(mib "$LPID" VmHWM)" "$(mib "$LPID" VmRSS)"

# reads
reset_peak "$LPID"
t0=$(now)
gets=$(redis-benchmark -p "$RESP" -t get -r "$N" -n "$GETS" -c 50 -q 2>/dev/null | tr '\r' '\n' |
  awk '/requests per second/ { print $2 }' | tail -1)
t1=$(now)
row get "$(secs "$t0" "$t1")" "$gets GET/s, 50 connections (keys key:__rand_int__)" "$(mib "$LPID" VmHWM)" "$(mib "$LPID" VmRSS)"

# whole-table digest
reset_peak "$LPID"
t0=$(now)
curl -sf --max-time 1800 "$LEADER/internal/digest" >"$DIR/digest.json"
t1=$(now)
row digest "$(secs "$t0" "$t1")" "GET /internal/digest" "$(mib "$LPID" VmHWM)" "$(mib "$LPID" VmRSS)"

# follower bootstrap from a snapshot: the leader must have trimmed record 1
wait_for "[ \"\$(curl -sf $LEADER/status | jq .first_lsn)\" -gt 1 ]" 120
last=$(status "$LEADER" last_lsn)
reset_peak "$LPID"
t0=$(now)
# shellcheck disable=SC2086
"$BIN" server --id n2 --listen "127.0.0.1:$FPORT" --data-dir "$DIR/n2" --follow "$LEADER" $EXTRA \
  >"$DIR/n2.log" 2>&1 &
FPID=$!
wait_for "[ \"\$(curl -sf $FOLLOWER/status | jq .applied_lsn)\" -ge $last ]" 3600
t1=$(now)
snaps=$(status "$FOLLOWER" snapshots_installed)
[ "$snaps" -ge 1 ] || { echo "the follower caught up without a snapshot" >&2; exit 1; }
row bootstrap "$(secs "$t0" "$t1")" "snapshot of $N keys; follower data $(size_mib "$DIR/n2") MiB" \
  "$(mib "$LPID" VmHWM)" "$(mib "$LPID" VmRSS)" "$(mib "$FPID" VmHWM)" "$(mib "$FPID" VmRSS)"
fdigest=$(curl -sf --max-time 1800 "$FOLLOWER/internal/digest" | jq -r .digest)
if [ "$fdigest" = "$(jq -r .digest "$DIR/digest.json")" ]; then
  echo "follower digest equals the leader's"
else
  echo "follower digest differs from the leader's" >&2
  exit 1
fi
