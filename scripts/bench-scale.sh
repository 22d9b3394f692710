#!/usr/bin/env bash
# Benchmark, not a test: the users role and its maintenance at scale. For each size N
# (BENCH_SCALE_SIZES, default "10000 100000 1000000"), into a throwaway Redis:
#   1. preloads N users in the seeds' format (scripts/seed_users.py piped into redis-cli --pipe);
#   2. times `platform users reindex` (users/s) and its Redis CPU per user; on another preload
#      of the same size (same layout and times, other random ids) before it,
#      scripts/reindex_floor.py measures the floor under any reindex: the Redis CPU per user of
#      the index writes alone, unchecked, in the cheapest order (floor/s = 1e6 / that, the best
#      rate with Redis 100% busy: Redis runs commands on one thread);
#   3. starts the users role on that data and measures, with wrk (BENCH_SCALE_SECONDS, 5 s each,
#      BENCH_SCALE_CONNECTIONS, 4), the latency (p50/p99) of GET /users/{id} over 1000 random
#      users, of a list page (GET /users?limit=50 from 1000 random cursors spread over the whole
#      list, the first page included) and of POST /users (new emails);
#   4. times `platform users export`, FLUSHALL and `platform users import` of that export
#      (users/s; the importer's peak RSS).
# It prints one line per N: reindex users/s, its Redis µs per user, the floor's Redis µs per user
# and floor/s, the reindex's peak RSS, the three latencies, export and
# import users/s and the importer's peak RSS, Redis' bytes per user (seed format alone, and
# with our indexes).
# Per-request latencies must stay flat in N (every request is O(log n + page) in Redis).
# Every step is bounded (BENCH_SCALE_TIMEOUT, 600 s); the release binary is built if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES="${BENCH_SCALE_SIZES:-10000 100000 1000000}"
STEP_TIMEOUT="${BENCH_SCALE_TIMEOUT:-600}"
SECONDS_PER_RUN="${BENCH_SCALE_SECONDS:-5}"
CONNECTIONS="${BENCH_SCALE_CONNECTIONS:-4}"
BIN="${BENCH_SCALE_BIN:-target/release/platform}"
command -v wrk >/dev/null || {
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
}
./scripts/ensure-redis.sh
[ -x "$BIN" ] || cargo build --release --locked --bin platform

work="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
users_pid=""
redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$work" --logfile redis.log \
  --pidfile "$work/redis.pid" --save '' --appendonly no --maxmemory-policy noeviction
stop_users() { [ -z "$users_pid" ] || { kill "$users_pid" 2>/dev/null || true; wait "$users_pid" 2>/dev/null || true; users_pid=""; }; }
trap 'stop_users; kill "$(cat "$work/redis.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
cli() { redis-cli -p "$port" "$@"; }
for _ in $(seq 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
url="redis://127.0.0.1:$port"
mem() { cli info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'; }
# Redis' CPU seconds so far (user + system).
redis_cpu() { cli info cpu | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.3f", s }'; }
# Seconds a command took (GNU time: also its peak RSS in KiB, into $work/rss).
timed() {
  local start end
  start=$(date +%s.%N)
  timeout "$STEP_TIMEOUT" /usr/bin/time -f '%M' -o "$work/rss" "$@" >"$work/out" 2>"$work/err" \
    || { echo "step failed: $*" >&2; cat "$work/err" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}
rate() { echo "scale=0; $1 / $2" | bc -l; }

# The wrk scripts: 1000 random users' ids and cursors (a cursor is base64url of "score:id", the
# page after that user), read from the indexes the reindex built.
write_lua() {
  cli --raw zrandmember users:by_created 1000 withscores | python3 -c '
import base64, sys
lines = sys.stdin.read().split()
pairs = list(zip(lines[0::2], lines[1::2]))
ids = ",".join(f"\"{i}\"" for i, _ in pairs)
cursors = ",".join(
    "\"%s\"" % base64.urlsafe_b64encode(f"{int(float(s))}:{i}".encode()).decode().rstrip("=")
    for i, s in pairs)
common = f"ids = {{{ids}}}\ncursors = {{\"\",{cursors}}}\n"
open(sys.argv[1] + "/get.lua", "w").write(common + """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/users/" .. ids[(counter % #ids) + 1])
end
""")
open(sys.argv[1] + "/list.lua", "w").write(common + """
counter = 0
request = function()
  counter = counter + 1
  local cursor = cursors[(counter % #cursors) + 1]
  if cursor == "" then return wrk.format("GET", "/users?limit=50") end
  return wrk.format("GET", "/users?limit=50&cursor=" .. cursor)
end
""")
open(sys.argv[1] + "/create.lua", "w").write("""
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
counter = 0
request = function()
  counter = counter + 1
  local body = string.format("{\\"name\\":\\"Bench\\",\\"email\\":\\"bench-%s-%d-%d@example.com\\"}",
    tostring(tid), counter, math.random(1, 1000000000))
  return wrk.format("POST", "/users", {["Content-Type"] = "application/json"}, body)
end
""")
' "$work"
}
# "p50 p99" in ms of one wrk run with script $1 against the users role on port $2.
latency() {
  local out
  out=$(timeout "$((SECONDS_PER_RUN + 30))" wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency \
    -s "$work/$1.lua" "http://127.0.0.1:$2") || { echo "wrk failed ($1)" >&2; exit 1; }
  if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then echo "errors during $1:" >&2; echo "$out" >&2; exit 1; fi
  python3 -c '
import re, sys
text = sys.stdin.read()
def ms(p):
    v, u = re.search(r"^\s*%d%%\s+([\d.]+)(us|ms|s)\s*$" % p, text, re.M).groups()
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
print("%.2f/%.2f" % (ms(50), ms(99)))' <<<"$out"
}

printf '%-8s %9s %7s %7s %8s %8s %14s %14s %14s %9s %9s %8s %8s %8s\n' users reindex/s redis_us \
  floor_us floor/s rss_MB "get p50/p99" "list p50/p99" "create p50/p99" export/s import/s rss_MB seed_B/u idx_B/u
for n in $SIZES; do
  cli flushall >/dev/null
  python3 scripts/seed_users.py "$n" | cli --pipe >/dev/null
  floor=$(timeout "$STEP_TIMEOUT" python3 scripts/reindex_floor.py "$port") || { echo "floor failed" >&2; exit 1; }
  floor_us=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["redis_us_per_user"])' "$floor")
  floor_rate=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["bound_users_per_s"])' "$floor")
  cli flushall >/dev/null
  base=$(mem)
  python3 scripts/seed_users.py "$n" | cli --pipe >/dev/null
  seeded=$(mem)
  cpu_before=$(redis_cpu)
  t_reindex=$(timed "$BIN" users reindex --redis-url "$url" --redis-timeout 10s)
  reindex_us=$(echo "scale=2; ($(redis_cpu) - $cpu_before) * 1000000 / $n" | bc -l)
  reindex_rss=$(( $(cat "$work/rss") / 1024 ))
  indexed=$(mem)
  [ "$(cli zcard users:by_created)" = "$n" ] || { echo "reindex indexed $(cli zcard users:by_created) of $n" >&2; exit 1; }

  users_port="$(free_port)"
  "$BIN" users --host 127.0.0.1 --port "$users_port" --redis-url "$url" --log-level warn >"$work/users.log" 2>&1 &
  users_pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$users_port/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  write_lua
  get=$(latency get "$users_port")
  list=$(latency list "$users_port")
  create=$(latency create "$users_port")
  stop_users
  total="$(cli scard users:index)"

  t_export=$(timed "$BIN" users export --redis-url "$url" --redis-timeout 10s --output "$work/users.jsonl")
  cli flushall >/dev/null
  t_import=$(timed "$BIN" users import --redis-url "$url" --redis-timeout 10s "$work/users.jsonl")
  rss=$(( $(cat "$work/rss") / 1024 ))
  [ "$(cli scard users:index)" = "$total" ] || { echo "import restored $(cli scard users:index) of $total" >&2; exit 1; }
  printf '%-8s %9s %7s %7s %8s %8s %14s %14s %14s %9s %9s %8s %8s %8s\n' "$n" "$(rate "$n" "$t_reindex")" \
    "$reindex_us" "$floor_us" "$floor_rate" "$reindex_rss" "$get" "$list" "$create" "$(rate "$total" "$t_export")" "$(rate "$total" "$t_import")" "$rss" \
    $(( (seeded - base) / n )) $(( (indexed - base) / n ))
  echo "  floor, Redis µs per user by command: $(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["commands_us_per_user"])' "$floor")"
  echo "  ($n users: reindex ${t_reindex}s, export ${t_export}s, import ${t_import}s; latencies in ms, wrk -c$CONNECTIONS ${SECONDS_PER_RUN}s each)"
  rm -f "$work/users.jsonl"
done
