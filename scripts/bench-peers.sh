#!/usr/bin/env bash
# replidb side by side with Redis and etcd on the same machine: every row of
# the performance targets (issue 13), measured in one run.
#
# Each row runs its peer and replidb with the same load generator settings
# (CONNS connections, VALUE_BYTES-byte values, KEYS distinct keys, DURATION
# seconds per measurement), alternating for ROUNDS rounds; the order flips
# every round (peer first, then replidb first), so a machine that gets
# busier or quieter during a row does not favour one side. Every process,
# the load generators included, shares the machine's cores.
#
#   1  durable writes, 1 node, fsync always, HTTP: wrk PUT /v1/kv/<random key>
#      vs redis-server --appendonly yes --appendfsync always, redis-benchmark SET
#   2  the same over replidb's Redis protocol listener: redis-benchmark SET on both
#   3  follower reads over HTTP (wrk GET ?consistency=eventual on a follower)
#      vs redis-benchmark GET on a Redis replica
#   4  follower reads over the Redis protocol: redis-benchmark GET on both
#   5  w=majority writes on 3 nodes (wrk PUT ?w=majority on the leader) vs a
#      3-member etcd (wrk POST /v3/kv/put, its v3 JSON gateway, on its leader)
#   6  write acknowledged -> visible on a follower, by polling the follower
#      (`replidb bench --mode visibility-poll`, one client, Redis protocol on
#      both: SET on the leader/master, then GET on the follower/replica back
#      to back until the value is there), idle and while redis-benchmark
#      writes with CONNS connections to the leader/master
#   7  failover: leader kill -9 -> first successful w=majority write on the
#      new leader (replidb with --coordinator etcd, TRIALS trials), while a
#      writer keeps writing; every acknowledged write is then read back.
#      The peer: a Redis master, two replicas and three Sentinels at tight
#      settings, SET + WAIT 1 as the majority write (SENTINEL=0 skips it)
#
# Rows 2 and 4 also run a third side, "floor" (scripts/floor.c, built with
# cc when one is installed): a server that does nothing but read, fsync a
# batch (row 2) and answer "+OK", like redis-server's loop with none of its
# work. What the generator reaches against it is the most any server can
# reach here; the summary gives it as a ratio to the peer.
#
# Rows 1-5 also account for the CPU: each side's server processes and the
# load generator, per request, and how busy the machine was. From the
# generator's own cost the summary derives the fastest any server could
# be on this machine with this generator (a single-threaded redis-benchmark
# at 100% of a core is a ceiling no server can pass), and from replidb's
# cost the rate its CPU alone would allow.
#
# Topologies: rows 1-2 one replidb node and one redis-server; rows 3, 4, 6 a
# replidb leader + follower and a Redis master + replica; row 5 three replidb
# nodes (static leader) and three etcd members; row 7 three replidb nodes and
# a single-member etcd with --election-timeout 500 --heartbeat-interval 50,
# beside a Redis master + 2 replicas + 3 Sentinels (trials alternate).
# Both sides are durable the same way: replidb --fsync always on every node,
# Redis appendfsync always on master and replica, etcd fsyncs its WAL.
#
# Usage: scripts/bench-peers.sh
# Environment (defaults in brackets):
#   REPLIDB=path   replidb binary [build the release binary with cargo]
#   ROUNDS [2]  DURATION seconds per measurement [10]  CONNS [50]
#   VALUE_BYTES [16]  KEYS [10000]  TRIALS failovers [5]
#   WRK_THREADS [1]: wrk's threads. One, like redis-benchmark on the
#      peer's side: two generators of one thread each, with the same
#      connections. (With two, wrk's threads sleep and wake more often and
#      every wake-up costs both wrk and the server kernel time: on a
#      2-vCPU VM, ~5 us more server CPU per HTTP GET.)
#   ROWS comma-separated rows to run [1,2,3,4,5,6,7]
#   BASE_PORT [22000]: uses BASE_PORT .. BASE_PORT+50 on 127.0.0.1
#   SENTINEL=0 skips the Redis Sentinel peer of row 7; SENTINEL_DOWN_AFTER_MS [100]
#   KEEP=1 keeps the working directory (logs, data) instead of removing it
# Needs redis-server, redis-benchmark, redis-cli, etcd, wrk, curl, jq; on
# Debian, missing ones are installed with apt-get (redis-server redis-tools
# etcd-server etcd-client wrk curl jq). Not part of the test suite.
set -euo pipefail

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
VALUE_BYTES=${VALUE_BYTES:-16}
KEYS=${KEYS:-10000}
TRIALS=${TRIALS:-5}
WRK_THREADS=${WRK_THREADS:-1}
ROWS=${ROWS:-1,2,3,4,5,6,7}
BASE_PORT=${BASE_PORT:-22000}
HOST=127.0.0.1

# ---------------------------------------------------------------- tools --

need_tools() {
  local missing=()
  for t in redis-server redis-benchmark redis-cli etcd wrk curl jq; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  [ ${#missing[@]} -eq 0 ] && return
  echo "missing: ${missing[*]}; installing with apt-get" >&2
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
    redis-server redis-tools etcd-server etcd-client wrk curl jq >/dev/null
  # Debian starts the packaged services; this script runs its own.
  "${sudo[@]}" systemctl disable --now redis-server etcd >/dev/null 2>&1 || true
}
need_tools

if [ -n "${REPLIDB:-}" ]; then
  BIN=$REPLIDB
else
  echo "building the release binary (cargo build --release -p replidb)..." >&2
  cargo build --release -p replidb >&2
  BIN=${CARGO_TARGET_DIR:-target}/release/replidb
fi
[ -x "$BIN" ] || { echo "no replidb binary at $BIN" >&2; exit 1; }

# ------------------------------------------------------ processes, cleanup --

WORK=$(mktemp -d "${TMPDIR:-/tmp}/peers-bench.XXXXXX")
PIDS=()

# Stop every process this script started (SIGTERM, then SIGKILL after 3 s),
# then remove the working directory unless KEEP=1.
cleanup() {
  local pid deadline
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 3))
  for pid in "${PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
  done
  PIDS=()
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# start NAME CMD...: run CMD in the background, its output in WORK/NAME.log.
# The pid is in $LAST_PID (and PIDS, for cleanup).
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# forget PID...: no longer ours to stop (it has been reaped).
forget() {
  local keep=() p
  for p in "${PIDS[@]}"; do
    [[ " $* " == *" $p "* ]] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

# stop PID...: SIGTERM and wait (at most 5 s, then SIGKILL).
stop() {
  local pid deadline
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 5))
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  forget "$@"
}

# wait_until DESC SECONDS CMD...: poll CMD every 50 ms until it succeeds;
# fail the run after SECONDS.
wait_until() {
  local desc=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "gave up after ${limit}s waiting for: $desc (logs in $WORK; KEEP=1 keeps them)" >&2
      KEEP=1
      exit 1
    fi
    sleep 0.05
  done
}

port() { echo $((BASE_PORT + $1)); }
http_up() { curl -sf --max-time 1 "$1/health" >/dev/null || curl -s --max-time 1 "$1/status" | jq -e .role >/dev/null; }
redis_up() { [ "$(redis-cli -p "$1" --no-raw PING 2>/dev/null)" = PONG ]; }
status() { curl -s --max-time 2 "$1/status"; }
streaming() { [ "$(status "$1" | jq '[.followers[]? | select(.state == "streaming")] | length')" -ge "$2" ]; }
caught_up() { # follower applied everything the leader has
  local l f
  l=$(status "$1" | jq -e .last_lsn) && f=$(status "$2" | jq -e .applied_lsn) && [ "$l" = "$f" ]
}
redis_synced() { # replica holds the master's offset
  local m r
  m=$(redis-cli -p "$1" INFO replication | tr -d '\r' | sed -n 's/^master_repl_offset://p')
  r=$(redis-cli -p "$2" INFO replication | tr -d '\r' | sed -n 's/^slave_repl_offset://p')
  [ -n "$m" ] && [ "$m" = "$r" ] && [ "$m" -gt 0 ]
}

# Every topology has its own node ids, so no node starts on another's data
# directory (and its voting set).
replidb_node() { # NAME HTTP_PORT RESP_PORT [ARGS...]
  local name=$1 hp=$2 rp=$3
  shift 3
  start "$name" "$BIN" server --id "$name" --listen "$HOST:$hp" --resp-listen "$HOST:$rp" \
    --data-dir "$WORK/$name" --fsync always "$@"
  wait_until "$name up" 30 http_up "http://$HOST:$hp"
}

# Durable like a replidb node (AOF, fsync always), no RDB snapshots, and no
# 5 s wait before a full resync (repl-diskless-sync-delay's default, meant
# to batch replicas; it would add 5 s to a Sentinel failover).
redis_node() { # NAME PORT [ARGS...]
  local name=$1 p=$2
  shift 2
  mkdir -p "$WORK/$name"
  start "$name" redis-server --port "$p" --bind "$HOST" --dir "$WORK/$name" --save '' \
    --appendonly yes --appendfsync always --protected-mode no --repl-diskless-sync-delay 0 "$@"
  wait_until "$name up" 30 redis_up "$p"
}

# Fill KEYS keys key:000000000000.. (redis-benchmark's key names) with
# VALUE_BYTES-byte values: MSET batches of 1000 keys, one atomic write each.
preload() { # RESP_PORT
  local value
  value=$(head -c "$VALUE_BYTES" /dev/zero | tr '\0' v)
  awk -v n="$KEYS" -v v="$value" 'BEGIN {
    for (i = 0; i < n; i++) {
      if (i % 1000 == 0) { if (i) printf "\n"; printf "MSET" }
      printf " key:%012d %s", i, v
    }
    printf "\n"
  }' | timeout 120 redis-cli -p "$1" >/dev/null
}

# ------------------------------------------------------- load generators --

cat >"$WORK/kv.lua" <<'LUA'
-- wrk: one request per call on a random key key:NNNNNNNNNNNN (the names
-- redis-benchmark uses). BENCH_METHOD PUT|GET, BENCH_QUERY appended to the
-- path, BENCH_KEYS keys, BENCH_VALUE_BYTES-byte bodies for PUT. Every
-- request is formatted once per thread, in init: formatting one per call
-- (wrk.format in request) cost wrk ~1.5 us of Lua per request, load
-- generator CPU that redis-benchmark, on the peer's side, does not spend.
local method = os.getenv("BENCH_METHOD") or "GET"
local query = os.getenv("BENCH_QUERY") or ""
local keys = tonumber(os.getenv("BENCH_KEYS") or "10000")
local body = nil
if method == "PUT" then
  body = string.rep("v", tonumber(os.getenv("BENCH_VALUE_BYTES") or "16"))
end
local counter = 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
local requests = {}
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
  for i = 0, keys - 1 do
    requests[i + 1] = wrk.format(method, string.format("/v1/kv/key:%012d%s", i, query), nil, body)
  end
end
local random = math.random
function request()
  return requests[random(keys)]
end
LUA

cat >"$WORK/etcd_put.lua" <<'LUA'
-- wrk: POST /v3/kv/put (etcd's v3 JSON gateway) on a random key
-- key:NNNNNNNNNNNN with a BENCH_VALUE_BYTES-byte value, base64 as the
-- gateway wants; the bodies are built once per thread.
local keys = tonumber(os.getenv("BENCH_KEYS") or "10000")
local value = string.rep("v", tonumber(os.getenv("BENCH_VALUE_BYTES") or "16"))
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  return ((s:gsub(".", function(c)
    local b, byte = "", c:byte()
    for i = 8, 1, -1 do b = b .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0") end
    return b
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return alphabet:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end
local counter = 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
local bodies = {}
function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
  local v = b64(value)
  for i = 0, keys - 1 do
    bodies[i] = string.format('{"key":"%s","value":"%s"}', b64(string.format("key:%012d", i)), v)
  end
end
function request()
  return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" },
    bodies[math.random(0, keys - 1)])
end
LUA

RESULTS=$WORK/results.tsv
: >"$RESULTS"

# record ROW SIDE ROUND RPS P50_MS P99_MS ERRORS [SERVER_US CLIENT_US BUSY_PCT]
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" \
  "${8:-}" "${9:-}" "${10:-}" >>"$RESULTS"; }

# ------------------------------------------------------ CPU accounting --
#
# Where a throughput row's CPU went: the servers' and the load generator's
# CPU time per request, and how busy the whole machine was. With every
# process on the same cores, a server's rate is bounded by what the load
# generator itself costs: see the summary's second table.

# PIDS_OF[SIDE]: the server processes of a side in the current row.
declare -A PIDS_OF
TICK_HZ=$(getconf CLK_TCK)

# cpu_ticks PID...: user + system clock ticks used so far by the processes
# (fields 14-15 of /proc/PID/stat; 16-17 add the children they reaped).
cpu_ticks() {
  local pid total=0 f
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    # The command name (field 2) may hold spaces: count fields after ")".
    f=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + $(echo "$f" | awk '{ print $12 + $13 + $14 + $15 }')))
  done
  echo "$total"
}

# machine_ticks: "BUSY TOTAL" clock ticks of all CPUs since boot.
machine_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

# measured OUT CMD...: run the load generator CMD (output to OUT) and
# account for it: sets GEN_TICKS (the generator's CPU, its children
# included), SERVER_TICKS (the current side's servers, MEASURED_PIDS) and
# BUSY_PCT (the machine). Returns CMD's status.
MEASURED_PIDS=""
measured() {
  local out=$1 s0 s1 m0 m1 after rc=0
  shift
  s0=$(cpu_ticks $MEASURED_PIDS)
  read -r -a m0 <<<"$(machine_ticks)"
  # A shell runs CMD and, once it has reaped it, prints its own stat line,
  # whose children's counters (cutime, cstime) are CMD's CPU.
  after=$(OUT=$out bash -c '"$@" >"$OUT" 2>&1; rc=$?; sed "s/^.*) //" /proc/$$/stat; exit $rc' \
    measured "$@") || rc=$?
  s1=$(cpu_ticks $MEASURED_PIDS)
  read -r -a m1 <<<"$(machine_ticks)"
  GEN_TICKS=$(echo "$after" | awk '{ print $14 + $15 }')
  SERVER_TICKS=$((s1 - s0))
  BUSY_PCT=$(awk -v b="$((m1[0] - m0[0]))" -v t="$((m1[1] - m0[1]))" 'BEGIN { printf "%.0f", t ? 100 * b / t : 0 }')
  return "$rc"
}

# us_per TICKS REQUESTS: microseconds of CPU per request.
us_per() { awk -v t="$1" -v n="$2" -v hz="$TICK_HZ" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }'; }

# wrk_run ROW SIDE ROUND URL METHOD QUERY SCRIPT
wrk_run() {
  local row=$1 side=$2 round=$3 url=$4 method=$5 query=$6 script=$7 out
  out=$WORK/wrk-$row-$side-$round.txt
  MEASURED_PIDS=${PIDS_OF[$side]:-}
  BENCH_METHOD=$method BENCH_QUERY=$query BENCH_KEYS=$KEYS BENCH_VALUE_BYTES=$VALUE_BYTES \
    measured "$out" timeout $((DURATION + 60)) wrk -t "$WRK_THREADS" -c "$CONNS" -d "${DURATION}s" --timeout 10s \
    --latency -s "$script" "$url" || { echo "wrk failed: $(cat "$out")" >&2; exit 1; }
  # Latency lines read "50%  1.23ms" (units us, ms or s).
  local ms='function ms(x) { if (x ~ /us$/) return x / 1000; if (x ~ /ms$/) return x + 0; if (x ~ /m$/) return x * 60000; return x * 1000 }'
  local rps p50 p99 errors
  rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
  p50=$(awk "$ms"' $1 == "50%" { printf "%.3f", ms($2) }' "$out")
  p99=$(awk "$ms"' $1 == "99%" { printf "%.3f", ms($2) }' "$out")
  errors=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
  local requests server_us gen_us
  requests=$(awk '/requests in/ { print $1 }' "$out")
  server_us=$(us_per "$SERVER_TICKS" "$requests")
  gen_us=$(us_per "$GEN_TICKS" "$requests")
  record "$row" "$side" "$round" "$rps" "$p50" "$p99" "$errors" "$server_us" "$gen_us" "$BUSY_PCT"
  printf '  row %s round %s %-8s %8s req/s  p50 %s ms  p99 %s ms  CPU/req server %s us, wrk %s us, machine %s%% busy%s\n' \
    "$row" "$round" "$side" "$rps" "$p50" "$p99" "$server_us" "$gen_us" "$BUSY_PCT" \
    "$([ "$errors" = 0 ] || echo "  ERRORS $errors")"
}

# redis-benchmark runs a number of requests, not a duration: the first
# round of each (row, side) calibrates with a short run, later rounds use
# the rate measured last to run for about DURATION seconds.
declare -A RB_RATE
rb_run() { # ROW SIDE ROUND PORT TEST
  local row=$1 side=$2 round=$3 p=$4 t=$5 key="$1/$2" n line
  if [ -z "${RB_RATE[$key]:-}" ]; then
    line=$(timeout 120 redis-benchmark -p "$p" -t "$t" -n $((CONNS * 100)) -c "$CONNS" \
      -d "$VALUE_BYTES" -r "$KEYS" --csv 2>>"$WORK/redis-benchmark.err" | tail -1)
    RB_RATE[$key]=$(echo "$line" | tr -d '"' | cut -d, -f2 | cut -d. -f1)
  fi
  n=$((RB_RATE[$key] * DURATION))
  [ "$n" -ge 1000 ] || n=1000
  local out=$WORK/rb-$row-$side-$round.csv
  MEASURED_PIDS=${PIDS_OF[$side]:-}
  measured "$out" timeout $((DURATION * 5 + 120)) redis-benchmark -p "$p" -t "$t" -n "$n" \
    -c "$CONNS" -d "$VALUE_BYTES" -r "$KEYS" --csv || true
  line=$(grep -v '^"test"' "$out" | tail -1 | tr -d '"')
  local rps p50 p99 server_us gen_us
  rps=$(echo "$line" | cut -d, -f2 | cut -d. -f1)
  p50=$(echo "$line" | cut -d, -f5)
  p99=$(echo "$line" | cut -d, -f7)
  [ -n "$rps" ] && [ "$rps" -gt 0 ] || { echo "redis-benchmark on port $p failed: $line" >&2; exit 1; }
  RB_RATE[$key]=$rps
  server_us=$(us_per "$SERVER_TICKS" "$n")
  gen_us=$(us_per "$GEN_TICKS" "$n")
  record "$row" "$side" "$round" "$rps" "$p50" "$p99" 0 "$server_us" "$gen_us" "$BUSY_PCT"
  printf '  row %s round %s %-8s %8s req/s  p50 %s ms  p99 %s ms  CPU/req server %s us, redis-benchmark %s us, machine %s%% busy\n' \
    "$row" "$round" "$side" "$rps" "$p50" "$p99" "$server_us" "$gen_us" "$BUSY_PCT"
}

# vis_run ROW SIDE ROUND LEADER_URL FOLLOWER_URL (redis:// or http://)
vis_run() {
  local row=$1 side=$2 round=$3 out line
  out=$WORK/vis-$row-$side-$round.txt
  timeout $((DURATION + 120)) "$BIN" bench --mode visibility-poll \
    --url "$4" --follower "$5" --clients 1 \
    --duration "${DURATION}s" --value-bytes "$VALUE_BYTES" --key-space "$KEYS" >"$out" 2>&1 ||
    { echo "replidb bench failed: $(cat "$out")" >&2; exit 1; }
  # | clients | ops | errors | ops/s | p50 | p99 | p999 | max |
  line=$(grep '^| 1 |' "$out" | tr -d ' ')
  IFS='|' read -r _ _ ops errors rps p50 p99 _ max _ <<<"$line"
  record "$row" "$side" "$round" "$rps" "$p50" "$p99" "$errors"
  echo "$max" >"$WORK/max-$row-$side-$round"
  printf '  row %s round %s %-8s %6s writes  p50 %s ms  p99 %s ms  max %s ms%s\n' "$row" "$round" \
    "$side" "$ops" "$p50" "$p99" "$max" "$([ "$errors" = 0 ] || echo "  ERRORS $errors")"
}

# alternate ROUND FN_PEER FN_REPLIDB: peer first in odd rounds, replidb first
# in even ones.
alternate() {
  if [ $(($1 % 2)) -eq 1 ]; then "$2" "$1"; "$3" "$1"; else "$3" "$1"; "$2" "$1"; fi
}

row_on() { [[ ",$ROWS," == *",$1,"* ]]; }

echo "replidb side by side with Redis and etcd"
echo "machine: $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p')), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$("$BIN" --version); $(redis-server --version | cut -d' ' -f1-3); etcd $(etcd --version | sed -n 's/^etcd Version: //p'); $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "settings: ROUNDS=$ROUNDS DURATION=${DURATION}s CONNS=$CONNS VALUE_BYTES=$VALUE_BYTES KEYS=$KEYS TRIALS=$TRIALS WRK_THREADS=$WRK_THREADS"
echo

# ------------------------------------------------------------ the floor --

# floor_node NAME PORT DURABLE: start scripts/floor.c's server (built once
# into WORK); sets FLOOR_PID, empty when there is no C compiler.
FLOOR_BIN=""
floor_node() {
  local name=$1 p=$2 durable=$3
  FLOOR_PID=""
  if [ -z "$FLOOR_BIN" ]; then
    local src
    src="$(dirname "${BASH_SOURCE[0]}")/floor.c"
    if ! command -v cc >/dev/null 2>&1 || ! cc -O2 -o "$WORK/floor" "$src" 2>"$WORK/floor-build.log"; then
      echo "  (no floor: cannot build $src with cc)" >&2
      return 0
    fi
    FLOOR_BIN=$WORK/floor
  fi
  start "$name" "$FLOOR_BIN" "$p" "$durable" "$WORK/$name.data"
  FLOOR_PID=$LAST_PID
  wait_until "$name up" 30 floor_up "$p"
}
floor_up() { [ "$(redis-cli -p "$1" PING 2>/dev/null)" = OK ]; }

# ------------------------------------------------- rows 1-2: single node --

if row_on 1 || row_on 2; then
  echo "rows 1-2: durable writes on one node (replidb --fsync always; redis appendfsync always)"
  redis_node redis1 "$(port 2)"
  r1_pid=$LAST_PID
  replidb_node s1 "$(port 0)" "$(port 1)"
  n1_pid=$LAST_PID
  FLOOR_PID=""
  row_on 2 && floor_node floor-durable "$(port 4)" 1
  f1_pid=$FLOOR_PID
  PIDS_OF=([redis]=$r1_pid [replidb]=$n1_pid [floor]=$f1_pid)
  peer_set() { rb_run 1 redis "$1" "$(port 2)" set; }
  ours_http_put() { wrk_run 1 replidb "$1" "http://$HOST:$(port 0)" PUT "" "$WORK/kv.lua"; }
  peer_set2() { rb_run 2 redis "$1" "$(port 2)" set; }
  ours_resp_set() { rb_run 2 replidb "$1" "$(port 1)" set; }
  for round in $(seq 1 "$ROUNDS"); do
    row_on 1 && alternate "$round" peer_set ours_http_put
    row_on 2 && alternate "$round" peer_set2 ours_resp_set
    [ -n "$f1_pid" ] && rb_run 2 floor "$round" "$(port 4)" set
  done
  stop "$r1_pid" "$n1_pid" $f1_pid
  echo
fi

# --------------------------------- rows 3, 4, 6: leader/master + follower --

if row_on 3 || row_on 4 || row_on 6; then
  echo "rows 3, 4, 6: replidb leader + follower; Redis master + replica (reads on the replica)"
  redis_node redis-m "$(port 2)"
  rm_pid=$LAST_PID
  redis_node redis-r "$(port 3)" --replicaof "$HOST" "$(port 2)"
  rr_pid=$LAST_PID
  replidb_node r1 "$(port 10)" "$(port 11)"
  l_pid=$LAST_PID
  replidb_node r2 "$(port 12)" "$(port 13)" --follow "http://$HOST:$(port 10)"
  f_pid=$LAST_PID
  wait_until "the replidb follower streaming" 60 streaming "http://$HOST:$(port 10)" 1
  preload "$(port 2)"
  preload "$(port 11)"
  wait_until "the Redis replica in sync" 60 redis_synced "$(port 2)" "$(port 3)"
  wait_until "the replidb follower caught up" 60 caught_up "http://$HOST:$(port 10)" "http://$HOST:$(port 12)"
  FLOOR_PID=""
  row_on 4 && floor_node floor "$(port 5)" 0
  f0_pid=$FLOOR_PID
  PIDS_OF=([redis]="$rm_pid $rr_pid" [replidb]="$l_pid $f_pid" [floor]=$f0_pid)
  peer_get3() { rb_run 3 redis "$1" "$(port 3)" get; }
  ours_http_get() { wrk_run 3 replidb "$1" "http://$HOST:$(port 12)" GET "?consistency=eventual" "$WORK/kv.lua"; }
  peer_get4() { rb_run 4 redis "$1" "$(port 3)" get; }
  ours_resp_get() { rb_run 4 replidb "$1" "$(port 13)" get; }
  resp() { echo "redis://$HOST:$(port "$1")"; }
  peer_vis() { vis_run 6i redis "$1" "$(resp 2)" "$(resp 3)"; }
  ours_vis() { vis_run 6i replidb "$1" "$(resp 11)" "$(resp 13)"; }
  # For reference, replidb's HTTP API by the same method (PUT, then GET
  # ?consistency=eventual on the follower until the value is there).
  ours_vis_http() { vis_run 6h replidb "$1" "http://$HOST:$(port 10)" "http://$HOST:$(port 12)"; }
  # Under load: redis-benchmark SET with CONNS connections on the writer
  # side while the probe measures.
  loaded() { # FN PORT ROUND
    local lp
    start load redis-benchmark -p "$2" -t set -n 100000000 -c "$CONNS" -d "$VALUE_BYTES" -r "$KEYS" -q
    lp=$LAST_PID
    sleep 1
    "$1" "$3"
    stop "$lp"
  }
  peer_vis_l() { loaded peer_vis_l_ "$(port 2)" "$1"; }
  peer_vis_l_() { vis_run 6l redis "$1" "$(resp 2)" "$(resp 3)"; }
  ours_vis_l() { loaded ours_vis_l_ "$(port 11)" "$1"; }
  ours_vis_l_() { vis_run 6l replidb "$1" "$(resp 11)" "$(resp 13)"; }
  for round in $(seq 1 "$ROUNDS"); do
    row_on 3 && alternate "$round" peer_get3 ours_http_get
    row_on 4 && alternate "$round" peer_get4 ours_resp_get
    row_on 4 && [ -n "$f0_pid" ] && rb_run 4 floor "$round" "$(port 5)" get
    row_on 6 && alternate "$round" peer_vis ours_vis
    row_on 6 && ours_vis_http "$round"
    row_on 6 && alternate "$round" peer_vis_l ours_vis_l
  done
  stop "$rm_pid" "$rr_pid" "$l_pid" "$f_pid" $f0_pid
  echo
fi

# ----------------------------------------------- row 5: w=majority on 3 --

etcd_member() { # NAME CLIENT_PORT PEER_PORT INITIAL_CLUSTER [ARGS...]
  local name=$1 cp=$2 pp=$3 cluster=$4
  shift 4
  start "$name" etcd --name "$name" --data-dir "$WORK/$name" \
    --listen-client-urls "http://$HOST:$cp" --advertise-client-urls "http://$HOST:$cp" \
    --listen-peer-urls "http://$HOST:$pp" --initial-advertise-peer-urls "http://$HOST:$pp" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench-peers \
    --logger zap --log-level error "$@"
}
etcd_healthy() { curl -s --max-time 1 "$1/health" | jq -e '.health == "true"'; }

if row_on 5; then
  echo "row 5: w=majority writes, replidb leader + 2 followers vs a 3-member etcd"
  cluster="e1=http://$HOST:$(port 24),e2=http://$HOST:$(port 26),e3=http://$HOST:$(port 28)"
  etcd_pids=()
  for i in 1 2 3; do
    etcd_member "e$i" "$(port $((21 + 2 * i)))" "$(port $((22 + 2 * i)))" "$cluster"
    etcd_pids+=("$LAST_PID")
  done
  for i in 1 2 3; do wait_until "etcd e$i healthy" 60 etcd_healthy "http://$HOST:$(port $((21 + 2 * i)))"; done
  # Send to the etcd leader, as replidb's writes go to its leader.
  etcd_leader=""
  for i in 1 2 3; do
    u="http://$HOST:$(port $((21 + 2 * i)))"
    if curl -s --max-time 2 -XPOST "$u/v3/maintenance/status" -d '{}' |
      jq -e '.leader == .header.member_id' >/dev/null; then etcd_leader=$u; fi
  done
  [ -n "$etcd_leader" ] || { echo "no etcd leader" >&2; exit 1; }
  replidb_node m1 "$(port 20)" "$(port 30)"
  n_pids=("$LAST_PID")
  for i in 2 3; do
    replidb_node "m$i" "$(port $((19 + i)))" "$(port $((29 + i)))" --follow "http://$HOST:$(port 20)"
    n_pids+=("$LAST_PID")
  done
  wait_until "2 replidb followers streaming" 60 streaming "http://$HOST:$(port 20)" 2
  PIDS_OF=([etcd]="${etcd_pids[*]}" [replidb]="${n_pids[*]}")
  peer_maj() { wrk_run 5 etcd "$1" "$etcd_leader" POST "" "$WORK/etcd_put.lua"; }
  ours_maj() { wrk_run 5 replidb "$1" "http://$HOST:$(port 20)" PUT "?w=majority" "$WORK/kv.lua"; }
  for round in $(seq 1 "$ROUNDS"); do alternate "$round" peer_maj ours_maj; done
  stop "${etcd_pids[@]}" "${n_pids[@]}"
  echo
fi

# --------------------------------------------------------- row 7: failover --

if row_on 7; then
  echo "row 7: leader kill -9 -> first acknowledged majority write on the new leader ($TRIALS trials each)"
  # replidb: three nodes with --coordinator etcd (a single-member etcd with
  # the short election timeout the failover tests use, so the 1 s lease is
  # allowed); a write counts when it is acknowledged at w=majority.
  etcd_url="http://$HOST:$(port 40)"
  etcd_member ef "$(port 40)" "$(port 41)" "ef=http://$HOST:$(port 41)" \
    --election-timeout 500 --heartbeat-interval 50
  ef_pid=$LAST_PID
  wait_until "etcd healthy" 60 etcd_healthy "$etcd_url"
  fo_url() { echo "http://$HOST:$(port $((41 + $1)))"; }
  declare -A FO_PID
  fo_start() { # I
    start "f$1" "$BIN" server --id "f$1" --listen "$HOST:$(port $((41 + $1)))" \
      --data-dir "$WORK/f$1" --fsync always --coordinator etcd --etcd "$etcd_url" \
      --cluster bench --backoff-base 50ms --backoff-max 500ms
    FO_PID[$1]=$LAST_PID
    wait_until "f$1 up" 30 http_up "$(fo_url "$1")"
  }
  writable_leader() { status "$(fo_url "$1")" | jq -e '.role == "leader" and .writable == true'; }
  fo_leader() { # prints the index of a writable leader
    local i
    for i in 1 2 3; do
      if writable_leader "$i" >/dev/null 2>&1; then echo "$i"; return 0; fi
    done
    return 1
  }
  fo_ready() { local l; l=$(fo_leader) && streaming "$(fo_url "$l")" 2; }
  fo_write() { # I KEY VALUE TIMEOUT_MS: 0 when acknowledged at w=majority
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -XPUT \
      "$(fo_url "$1")/v1/kv/$2?w=majority&timeout_ms=$4" -d "$3" 2>/dev/null)" = 200 ]
  }
  fo_start 1
  wait_until "f1 leading" 30 fo_leader
  fo_start 2
  fo_start 3

  # Redis: a master, two replicas (appendfsync always, like the replidb
  # nodes) and three Sentinels (quorum 2) at tight settings; a write counts
  # when SET is followed by WAIT 1 (the master and one of two replicas: a
  # majority) answering 1 or more.
  SENTINEL_DOWN_AFTER_MS=${SENTINEL_DOWN_AFTER_MS:-100}
  rs_port() { port $((44 + $1)); }
  sentinel_port() { port $((47 + $1)); }
  declare -A RS_PID
  sentinel_pids=()
  rs_start() { # I
    if [ "$1" = 1 ]; then
      redis_node "rs$1" "$(rs_port 1)"
    else
      redis_node "rs$1" "$(rs_port "$1")" --replicaof "$HOST" "$(rs_port 1)"
    fi
    RS_PID[$1]=$LAST_PID
  }
  rs_start 1
  rs_start 2
  rs_start 3
  for i in 1 2 3; do
    cat >"$WORK/sentinel$i.conf" <<EOF
port $(sentinel_port "$i")
bind $HOST
dir $WORK
sentinel monitor peers $HOST $(rs_port 1) 2
sentinel down-after-milliseconds peers $SENTINEL_DOWN_AFTER_MS
sentinel failover-timeout peers 1000
sentinel parallel-syncs peers 2
EOF
    start "sentinel$i" redis-server "$WORK/sentinel$i.conf" --sentinel
    sentinel_pids+=("$LAST_PID")
    wait_until "sentinel $i up" 30 redis_up "$(sentinel_port "$i")"
  done
  rs_master() { # the master's port, as Sentinel 1 names it
    redis-cli -p "$(sentinel_port 1)" SENTINEL get-master-addr-by-name peers 2>/dev/null | tail -1
  }
  rs_ready() { # every Sentinel agrees on a healthy master that has 2 replicas
    local m i
    m=$(rs_master) && [ -n "$m" ] || return 1
    [ "$(redis-cli -p "$m" INFO replication 2>/dev/null | tr -d '\r' | sed -n 's/^connected_slaves://p')" = 2 ] || return 1
    for i in 1 2 3; do
      redis-cli -p "$(sentinel_port "$i")" SENTINEL master peers 2>/dev/null | awk -v m="$m" '
        NR % 2 == 1 { k = $0; next } { v[k] = $0 }
        END { exit !(v["flags"] == "master" && v["num-other-sentinels"] == 2 && v["port"] == m) }' || return 1
    done
  }
  rs_write() { # PORT KEY VALUE TIMEOUT_MS: 0 when SET is OK and WAIT 1 answers >= 1
    local out
    out=$(printf 'SET %s %s\nWAIT 1 %s\n' "$2" "$3" "$4" | timeout 3 redis-cli -p "$1" 2>/dev/null) || return 1
    [ "$(echo "$out" | sed -n 1p)" = OK ] && [ "$(echo "$out" | sed -n 2p)" -ge 1 ] 2>/dev/null
  }
  wait_until "Redis master with 2 replicas, 3 Sentinels agreeing" 60 rs_ready

  # Writers that keep writing unique keys, each to whichever node takes
  # them, and log the acknowledged ones.
  : >"$WORK/acked-replidb"
  : >"$WORK/acked-redis"
  fo_writer() {
    local n=0 i
    while [ ! -e "$WORK/stop-writers" ]; do
      n=$((n + 1))
      for i in 1 2 3; do
        if fo_write "$i" "fo-$n" "$n" 1000; then echo "fo-$n" >>"$WORK/acked-replidb"; break; fi
      done
    done
  }
  rs_writer() {
    local n=0 m
    while [ ! -e "$WORK/stop-writers" ]; do
      n=$((n + 1))
      m=$(rs_master) || continue
      if [ -n "$m" ] && rs_write "$m" "fo-$n" "$n" 1000; then echo "fo-$n" >>"$WORK/acked-redis"; fi
    done
  }
  start writer-replidb fo_writer
  writer_pids=("$LAST_PID")
  start writer-redis rs_writer
  writer_pids+=("$LAST_PID")

  # kill_at TRIAL: a different point of the lease's (heartbeat's) cycle each
  # time.
  kill_delay() { awk -v t="$1" 'BEGIN { printf "%.3f", (100 + (t * 397) % 900) / 1000 }'; }
  # failed_over SIDE TRIAL MS
  failed_over() {
    echo "$3" >>"$WORK/failover-$1"
    printf '  trial %s %-8s first majority write %s ms after the kill\n' "$2" "$1" "$3"
  }
  fo_trial() { # TRIAL
    local leader t0 done_at="" deadline i
    wait_until "a replidb leader with 2 followers streaming" 60 fo_ready
    leader=$(fo_leader)
    sleep "$(kill_delay "$1")"
    # Quietly: bash reports a job killed by a signal when it reaps it, which
    # may be before the wait.
    {
      kill -9 "${FO_PID[$leader]}"
      t0=$(date +%s%N)
      wait "${FO_PID[$leader]}" || true
    } 2>/dev/null
    forget "${FO_PID[$leader]}"
    deadline=$((SECONDS + 30))
    while [ -z "$done_at" ] && [ "$SECONDS" -lt "$deadline" ]; do
      for i in 1 2 3; do
        [ "$i" = "$leader" ] && continue
        if fo_write "$i" "probe-$1" p 200; then done_at=$(date +%s%N); break; fi
      done
    done
    [ -n "$done_at" ] || { echo "replidb: no w=majority write within 30 s of the kill" >&2; KEEP=1; exit 1; }
    failed_over replidb "$1" $(((done_at - t0) / 1000000))
    fo_start "$leader"
  }
  rs_trial() { # TRIAL
    local old i t0 done_at="" deadline m
    wait_until "Redis master with 2 replicas, 3 Sentinels agreeing" 60 rs_ready
    old=$(rs_master)
    for i in 1 2 3 none; do [ "$(rs_port "$i")" = "$old" ] && break; done
    [ "$i" != none ] || { echo "Sentinel names an unknown master: $old" >&2; exit 1; }
    sleep "$(kill_delay "$1")"
    {
      kill -9 "${RS_PID[$i]}"
      t0=$(date +%s%N)
      wait "${RS_PID[$i]}" || true
    } 2>/dev/null
    forget "${RS_PID[$i]}"
    deadline=$((SECONDS + 30))
    while [ -z "$done_at" ] && [ "$SECONDS" -lt "$deadline" ]; do
      m=$(rs_master) || continue
      if [ -n "$m" ] && [ "$m" != "$old" ] && rs_write "$m" "probe-$1" p 200; then done_at=$(date +%s%N); fi
    done
    [ -n "$done_at" ] || { echo "Redis: no majority write within 30 s of the kill" >&2; KEEP=1; exit 1; }
    failed_over redis "$1" $(((done_at - t0) / 1000000))
    rs_start "$i"
  }
  : >"$WORK/failover-replidb"
  : >"$WORK/failover-redis"
  for trial in $(seq 1 "$TRIALS"); do
    if [ "${SENTINEL:-1}" = 1 ]; then alternate "$trial" rs_trial fo_trial; else fo_trial "$trial"; fi
  done
  touch "$WORK/stop-writers"
  stop "${writer_pids[@]}"

  # Read every acknowledged key back from the current leader or master.
  wait_until "a replidb leader with 2 followers streaming" 60 fo_ready
  u=$(fo_url "$(fo_leader)")
  awk -v u="$u" '{ print "url = \"" u "/v1/kv/" $1 "?consistency=leader\""; print "output = \"/dev/null\"" }' \
    "$WORK/acked-replidb" >"$WORK/readback.curl"
  found=0
  if [ -s "$WORK/acked-replidb" ]; then
    found=$(timeout 300 curl -s -K "$WORK/readback.curl" -w '%{http_code}\n' | grep -c '^200$' || true)
  fi
  echo "$(wc -l <"$WORK/acked-replidb") $found" >"$WORK/readback-replidb"
  if [ "${SENTINEL:-1}" = 1 ]; then
    wait_until "Redis master with 2 replicas, 3 Sentinels agreeing" 60 rs_ready
    found=0
    if [ -s "$WORK/acked-redis" ]; then
      found=$(awk '{ print "EXISTS " $1 }' "$WORK/acked-redis" | timeout 300 redis-cli -p "$(rs_master)" | grep -c '^1$' || true)
    fi
    echo "$(wc -l <"$WORK/acked-redis") $found" >"$WORK/readback-redis"
  fi
  for side in redis replidb; do
    [ -s "$WORK/readback-$side" ] || continue
    read -r acked found <"$WORK/readback-$side"
    echo "  $side: acknowledged majority writes during the trials: $acked, read back: $found, lost: $((acked - found))"
    sort -n "$WORK/failover-$side" | awk -v side="$side" -v lost="$((acked - found))" -v acked="$acked" '
      { a[NR] = $1 } END { printf "7\t%s\tall\t%s\t%s\t%s\t%s\n", side, acked, a[int((NR + 1) / 2)], a[NR], lost }' >>"$RESULTS"
  done
  stop "${FO_PID[@]}" "$ef_pid" "${RS_PID[@]}" "${sentinel_pids[@]}"
  echo
fi

# --------------------------------------------------------------- summary --

echo "## Summary (means over $ROUNDS rounds; each round's value in brackets)"
echo
echo "| # | workload | peer | peer req/s | replidb req/s | ratio | target | met? | peer p50 / p99 ms | replidb p50 / p99 ms |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
throughput_row() { # ROW WORKLOAD PEER_NAME TARGET
  awk -F'\t' -v row="$1" -v work="$2" -v peer="$3" -v target="$4" '
    $1 == row && $2 != "floor" { side = ($2 == "replidb") ? "r" : "p"
      n[side]++; s[side] += $4; p50[side] += $5; p99[side] += $6; e[side] += $7
      list[side] = list[side] (list[side] == "" ? "" : ", ") $4 }
    END {
      if (!n["p"] || !n["r"]) exit
      pr = s["p"] / n["p"]; rr = s["r"] / n["r"]; ratio = rr / pr
      met = (ratio >= target) ? "yes" : "no"
      if (e["r"] || e["p"]) met = met " (errors: peer " e["p"] ", replidb " e["r"] ")"
      printf "| %s | %s | %s | %.0f (%s) | %.0f (%s) | %.2fx | >= %.1fx | %s | %.2f / %.2f | %.2f / %.2f |\n",
        row, work, peer, pr, list["p"], rr, list["r"], ratio, target, met,
        p50["p"] / n["p"], p99["p"] / n["p"], p50["r"] / n["r"], p99["r"] / n["r"] }' "$RESULTS"
}
throughput_row 1 "durable writes, 1 node, fsync always, HTTP (wrk PUT)" "Redis appendfsync always, redis-benchmark SET" 1.0
throughput_row 2 "durable writes, 1 node, Redis protocol (redis-benchmark SET)" "the same" 1.5
throughput_row 3 "follower reads, eventual, HTTP (wrk GET)" "Redis replica, redis-benchmark GET" 1.0
throughput_row 4 "follower reads, Redis protocol (redis-benchmark GET)" "the same" 1.5
throughput_row 5 "w=majority writes, 3 nodes (wrk PUT)" "etcd 3 members, wrk POST /v3/kv/put" 3.0

# The floor: what the same generator reaches against a server that does no
# work (scripts/floor.c), as a ratio to the peer, beside the target.
if grep -q $'\tfloor\t' "$RESULTS"; then
  echo
  echo "| # | a server that does no work (scripts/floor.c), same generator | req/s | ratio to the peer | target |"
  echo "| --- | --- | ---: | ---: | ---: |"
  floor_row() { # ROW WHAT TARGET
    awk -F'\t' -v row="$1" -v what="$2" -v target="$3" '
      $1 == row && $2 == "floor" { nf++; f += $4; list = list (list == "" ? "" : ", ") $4 }
      $1 == row && $2 != "floor" && $2 != "replidb" { np++; p += $4 }
      END { if (nf && np && p) printf "| %s | %s | %.0f (%s) | %.2fx | >= %.1fx |\n", row, what, f / nf, list, (f / nf) / (p / np), target }' "$RESULTS"
  }
  floor_row 2 "read, fdatasync the batch, answer +OK (redis-benchmark SET)" 1.5
  floor_row 4 "read, answer +OK (redis-benchmark GET)" 1.5
fi

# The CPU each request cost, and the bound the load generator sets: a
# server that cost nothing would still leave the generator its own CPU per
# request, on at most min(its threads, the CPUs) cores, so no server can go
# faster than that here. A ratio target above the bound cannot be met on
# this machine with this load generator, whatever the server does. The
# bound is loose: it leaves out the kernel's work that any server's
# process pays per request (TCP on loopback, wake-ups, fsync); the floor
# table above measures the tight one.
if awk -F'\t' '$8 != "" { found = 1 } END { exit !found }' "$RESULTS"; then
  echo
  echo "CPU per request (microseconds, means; servers: every process of the side; machine busy: all $(nproc) CPUs)"
  echo
  echo "| # | peer server | replidb server | load generator, peer / replidb runs | machine busy %, peer / replidb | replidb's CPU bound | fastest any server could be here | as a ratio to the peer |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  cpu_row() { # ROW GENERATOR_THREADS
    awk -F'\t' -v row="$1" -v threads="$2" -v ncpu="$(nproc)" '
      $1 == row && $2 != "floor" && $8 != "" { side = ($2 == "replidb") ? "r" : "p"
        n[side]++; s[side] += $4; srv[side] += $8; gen[side] += $9; busy[side] += $10 }
      END {
        if (!n["p"] || !n["r"]) exit
        cores = (threads < ncpu) ? threads : ncpu
        g = gen["r"] / n["r"]; bound = (g > 0) ? cores * 1e6 / g : 0
        # replidb at its own cost: the CPUs over server + generator CPU per
        # request (what it would reach with no idle time left).
        own = ncpu * 1e6 / (srv["r"] / n["r"] + g)
        printf "| %s | %.1f | %.1f | %.1f / %.1f | %.0f / %.0f | %.0f req/s | %.0f req/s (%d core%s / %.1f us) | %.2fx |\n",
          row, srv["p"] / n["p"], srv["r"] / n["r"], gen["p"] / n["p"], g,
          busy["p"] / n["p"], busy["r"] / n["r"], own, bound, cores, (cores == 1) ? "" : "s", g,
          bound / (s["p"] / n["p"]) }' "$RESULTS"
  }
  cpu_row 1 "$WRK_THREADS" # wrk against replidb
  cpu_row 2 1 # redis-benchmark is single-threaded
  cpu_row 3 "$WRK_THREADS"
  cpu_row 4 1
  cpu_row 5 "$WRK_THREADS"
fi

if [ -s "$RESULTS" ] && grep -q '^6' "$RESULTS"; then
  echo
  echo "| # | write acknowledged -> visible on the follower (polling, Redis protocol) | Redis p50 / p99 / max ms | replidb p50 / p99 / max ms | ratio p50 / p99 | target | met? |"
  echo "| --- | --- | ---: | ---: | ---: | --- | --- |"
  for kind in 6i 6l; do
    for side in redis replidb; do
      maxes=$(cat "$WORK"/max-$kind-$side-* 2>/dev/null | sort -g | tail -1)
      eval "max_${side}=\${maxes:--}"
    done
    awk -F'\t' -v kind="$kind" -v mp="$max_redis" -v mr="$max_replidb" -v conns="$CONNS" '
      $1 == kind { side = ($2 == "replidb") ? "r" : "p"; n[side]++; p50[side] += $5; p99[side] += $6; e[side] += $7 }
      END {
        if (!n["p"] || !n["r"]) exit
        a50 = p50["p"] / n["p"]; a99 = p99["p"] / n["p"]; b50 = p50["r"] / n["r"]; b99 = p99["r"] / n["r"]
        r50 = (a50 > 0) ? b50 / a50 : 0; r99 = (a99 > 0) ? b99 / a99 : 0
        if (kind == "6i") { what = "idle (one client)"; target = "<= 4x at p50 and p99"; met = (r50 <= 4 && r99 <= 4) ? "yes" : "no" }
        else { what = "under load (redis-benchmark SET, " conns " connections, on the writer)"; target = "replidb p99 <= 2 ms"; met = (b99 <= 2) ? "yes" : "no" }
        if (e["r"] || e["p"]) met = met " (errors: Redis " e["p"] ", replidb " e["r"] ")"
        printf "| 6 | %s | %.3f / %.3f / %s | %.3f / %.3f / %s | %.1fx / %.1fx | %s | %s |\n",
          what, a50, a99, mp, b50, b99, mr, r50, r99, target, met }' "$RESULTS"
  done
  max_http=$(cat "$WORK"/max-6h-replidb-* 2>/dev/null | sort -g | tail -1)
  awk -F'\t' -v mr="${max_http:--}" '
    $1 == "6h" { n++; p50 += $5; p99 += $6; e += $7 }
    END { if (n) printf "| 6 | idle, replidb over HTTP (PUT, then GET ?consistency=eventual), for reference | | %.3f / %.3f / %s | | | %s |\n",
      p50 / n, p99 / n, mr, e ? "errors: " e : "" }' "$RESULTS"
fi

if grep -q '^7' "$RESULTS"; then
  echo
  echo "| # | leader kill -9 -> first majority write on the new leader ($TRIALS trials) | p50 / max ms | acknowledged / lost writes | target | met? |"
  echo "| --- | --- | ---: | ---: | --- | --- |"
  awk -F'\t' -v down="${SENTINEL_DOWN_AFTER_MS:-100}" '$1 == 7 {
    if ($2 == "replidb") {
      what = "replidb, etcd coordinator, w=majority"; target = "p50 <= 1000, max <= 1500, none lost"
      met = ($5 <= 1000 && $6 <= 1500 && $7 == 0) ? "yes" : "no"
    } else {
      what = "Redis Sentinel (down-after " down " ms), SET + WAIT 1"; target = "(peer)"; met = ""
    }
    printf "| 7 | %s | %s / %s | %s / %s | %s | %s |\n", what, $5, $6, $4, $7, target, met }' "$RESULTS"
fi
