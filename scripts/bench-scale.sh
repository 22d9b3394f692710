#!/usr/bin/env bash
# Benchmark, not a test: maintenance at scale. For each size N (BENCH_SCALE_SIZES, default
# "10000 100000 1000000"), preloads N users in the seeds' format (scripts/seed_users.py piped
# into redis-cli --pipe) into a throwaway Redis, then times `platform users reindex`,
# `platform users export`, FLUSHALL and `platform users import` of that export with the release
# binary, and prints users/s for each, the importer's peak RSS and Redis bytes per user (seed
# format alone, and with our indexes). Each step is bounded (BENCH_SCALE_TIMEOUT, 600 s).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES="${BENCH_SCALE_SIZES:-10000 100000 1000000}"
STEP_TIMEOUT="${BENCH_SCALE_TIMEOUT:-600}"
BIN="${BENCH_SCALE_BIN:-target/release/platform}"
./scripts/ensure-redis.sh
[ -x "$BIN" ] || cargo build --release --locked

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$work" --logfile redis.log \
  --pidfile "$work/redis.pid" --save '' --appendonly no --maxmemory-policy noeviction
trap 'kill "$(cat "$work/redis.pid")" 2>/dev/null || true; rm -rf "$work"' EXIT
cli() { redis-cli -p "$port" "$@"; }
for _ in $(seq 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
url="redis://127.0.0.1:$port"
mem() { cli info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'; }
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

printf '%-9s %12s %12s %12s %14s %14s %12s\n' users reindex/s export/s import/s seed_B/user indexed_B/user import_rss_MB
for n in $SIZES; do
  cli flushall >/dev/null
  base=$(mem)
  python3 scripts/seed_users.py "$n" | cli --pipe >/dev/null
  seeded=$(mem)
  t_reindex=$(timed "$BIN" users reindex --redis-url "$url" --redis-timeout 10s)
  indexed=$(mem)
  t_export=$(timed "$BIN" users export --redis-url "$url" --redis-timeout 10s --output "$work/users.jsonl")
  cli flushall >/dev/null
  t_import=$(timed "$BIN" users import --redis-url "$url" --redis-timeout 10s "$work/users.jsonl")
  rss=$(( $(cat "$work/rss") / 1024 ))
  [ "$(cli scard users:index)" = "$n" ] || { echo "import restored $(cli scard users:index) of $n" >&2; exit 1; }
  printf '%-9s %12s %12s %12s %14s %14s %12s\n' "$n" \
    "$(rate "$n" "$t_reindex")" "$(rate "$n" "$t_export")" "$(rate "$n" "$t_import")" \
    $(( (seeded - base) / n )) $(( (indexed - base) / n )) "$rss"
  echo "  ($n users: reindex ${t_reindex}s, export ${t_export}s, import ${t_import}s)"
  rm -f "$work/users.jsonl"
done
