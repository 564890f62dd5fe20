#!/usr/bin/env bash
# Replication compression: bytes on the wire, catch-up throughput and CPU
# time of leader and follower, for each --replication-compression setting
# and two kinds of values (JSON documents, random bytes).
#
# For each run: a leader (with the codec under test) takes MB megabytes of
# 4 KiB values through `replidb bench`; then a fresh follower starts and
# catches up from the leader's WAL. Measured over the catch-up only: wall
# time until the follower has applied the leader's last LSN, CPU time
# (user + system, from /proc) of both processes, and the leader's
# replidb_replication_bytes_{uncompressed,sent}_total. `--fsync never` on
# both, so the disk does not hide the replication path; the leader does not
# checkpoint (`--checkpoint-interval 1h`), so it keeps its whole WAL and the
# follower catches up from records, not from a snapshot.
#
# Usage: scripts/bench-compression.sh [MB]   (default 64)
#        REPLIDB=path/to/replidb to use another binary (default: release)
set -euo pipefail

BIN=${REPLIDB:-${CARGO_TARGET_DIR:-target}/release/replidb}
MB=${1:-64}
VALUE_BYTES=4096
N=$((MB * 1024 * 1024 / VALUE_BYTES))
HZ=$(getconf CLK_TCK)
BASE_PORT=${BASE_PORT:-17300}

cpu_s() { awk -v hz="$HZ" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
metric() { curl -s "$1/metrics" | awk -v n="$2" 'index($0, n) == 1 { s += $NF } END { printf "%.0f", s }'; }
wait_up() { until curl -sf "$1/health" >/dev/null 2>&1 || curl -s "$1/status" >/dev/null 2>&1; do sleep 0.1; done; }

echo "replidb $("$BIN" --version 2>/dev/null || true); $MB MB of ${VALUE_BYTES}-byte values; $(nproc) CPUs: $(lscpu | sed -n 's/^Model name: *//p')"
echo
echo "| values | codec | plain MB | sent MB | sent/plain | catch-up s | MB/s | leader CPU s | follower CPU s |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
port=$BASE_PORT
for kind in json random; do
  for codec in none lz4 zstd; do
    dir=$(mktemp -d)
    leader="http://127.0.0.1:$port"
    follower="http://127.0.0.1:$((port + 1))"
    "$BIN" server --id n1 --listen "127.0.0.1:$port" --data-dir "$dir/n1" \
      --fsync never --checkpoint-interval 1h --replication-compression "$codec" \
      >"$dir/n1.log" 2>&1 &
    lpid=$!
    wait_up "$leader"
    "$BIN" bench --url "$leader" --clients 16 --requests "$N" --value-bytes "$VALUE_BYTES" \
      --value-kind "$kind" --key-space "$N" >"$dir/bench.txt" 2>&1
    last=$(curl -s "$leader/status" | jq .last_lsn)
    l0=$(cpu_s "$lpid")
    t0=$(date +%s.%N)
    "$BIN" server --id n2 --listen "127.0.0.1:$((port + 1))" --data-dir "$dir/n2" \
      --fsync never --follow "$leader" >"$dir/n2.log" 2>&1 &
    fpid=$!
    deadline=$((SECONDS + 600))
    until [ "$(curl -s "$follower/status" 2>/dev/null | jq -r '.applied_lsn // 0' 2>/dev/null || echo 0)" = "$last" ]; do
      if [ "$SECONDS" -gt "$deadline" ] || ! kill -0 "$fpid" 2>/dev/null; then
        echo "follower did not catch up to lsn $last (log: $dir/n2.log)" >&2
        kill "$lpid" "$fpid" 2>/dev/null || true
        exit 1
      fi
      sleep 0.05
    done
    t1=$(date +%s.%N)
    l1=$(cpu_s "$lpid")
    f1=$(cpu_s "$fpid")
    plain=$(metric "$leader" replidb_replication_bytes_uncompressed_total)
    sent=$(metric "$leader" replidb_replication_bytes_sent_total)
    python3 - "$kind" "$codec" "$plain" "$sent" "$t0" "$t1" "$l0" "$l1" "$f1" <<'PY'
import sys
kind, codec, plain, sent, t0, t1, l0, l1, f1 = sys.argv[1:]
plain, sent = int(plain), int(sent)
secs = float(t1) - float(t0)
mb = plain / 1e6
print(f"| {kind} | {codec} | {mb:.1f} | {sent / 1e6:.1f} | {sent / plain:.2f} | {secs:.2f} "
      f"| {mb / secs:.0f} | {float(l1) - float(l0):.2f} | {float(f1):.2f} |")
PY
    kill "$fpid" "$lpid"
    wait "$fpid" "$lpid" 2>/dev/null || true
    rm -rf "$dir"
    port=$((port + 2))
  done
done
