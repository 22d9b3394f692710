#!/usr/bin/env bash
# Benchmark, not a test: GET /api/users/{id} over preloaded users, in one run, against
#   (a) gateway → users → Redis, (b) users directly, (c) nginx → users (same users process).
# Prints requests/s, p50, p99 for each and the ratios (a)/(c), (a)/(b).
# Knobs: BENCH_DURATION (10s), BENCH_CONNECTIONS (64), BENCH_THREADS (2), BENCH_USERS (200).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${BENCH_DURATION:-10s}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
USERS="${BENCH_USERS:-200}"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
./scripts/ensure-redis.sh

cargo build --release --locked -q
BIN=target/release/platform

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "nothing answers on :$1$2" >&2; exit 1; }

REDIS_PORT=$(free_port); USERS_PORT=$(free_port); GATEWAY_PORT=$(free_port); NGINX_PORT=$(free_port)

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --maxmemory-policy noeviction >/dev/null & pids+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

"$BIN" users --host 127.0.0.1 --port "$USERS_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" >/dev/null & pids+=($!)
# shellcheck disable=SC2086 # BENCH_GATEWAY_ARGS holds several flags: split on purpose.
"$BIN" gateway ${BENCH_GATEWAY_ARGS:-} --host 127.0.0.1 --port "$GATEWAY_PORT" --users-url "http://127.0.0.1:$USERS_PORT" >/dev/null & pids+=($!)
GATEWAY_PID=$!

cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  upstream users { server 127.0.0.1:$USERS_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /api/users {
      rewrite ^/api(/users.*)\$ \$1 break;
      proxy_pass http://users;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-ID \$request_id;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Prefix /api;
      proxy_connect_timeout 1s;
      proxy_read_timeout 5s;
    }
  }
}
NGINX
nginx -p "$work" -c "$work/nginx.conf" -g 'daemon off;' & pids+=($!)
NGINX_PID=$!

wait_port "$USERS_PORT" /health/ready
wait_port "$GATEWAY_PORT" /health/ready
wait_port "$NGINX_PORT" /api/users?limit=1

echo "preloading $USERS users…"
ids=()
for i in $(seq "$USERS"); do
  id=$(curl -fs -X POST "http://127.0.0.1:$USERS_PORT/users" -H 'Content-Type: application/json' \
        -d "{\"name\":\"Bench $i\",\"email\":\"bench$i@example.com\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  ids+=("$id")
done
{
  printf 'ids = {'; printf '"%s",' "${ids[@]}"; printf '}\n'
  cat <<'LUA'
prefix = os.getenv("BENCH_PREFIX") or ""
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", prefix .. "/users/" .. ids[(counter % #ids) + 1])
end
LUA
} > "$work/ids.lua"

# CPU seconds (user + system) used so far by a process and its children (nginx workers).
cpu_ticks() {
  local total=0 p
  for p in "$@" $(pgrep -P "$1" 2>/dev/null || true); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

run() { # name port prefix key [pid whose CPU per request to report]
  local out before=0 after=0
  [ -n "${5:-}" ] && before=$(cpu_ticks "$5")
  out=$(BENCH_PREFIX="$3" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/ids.lua" "http://127.0.0.1:$2")
  if echo "$out" | grep -qE "Non-2xx|Socket errors"; then echo "$out" >&2; echo "errors during $1" >&2; exit 1; fi
  local rps p50 p99
  rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local cpu="-"
  if [ -n "${5:-}" ]; then
    after=$(cpu_ticks "$5")
    local requests
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    cpu=$(python3 -c "print(round(($after - $before) / $(getconf CLK_TCK) * 1e6 / $requests, 1))")
    eval "CPU_$4=$cpu"
  fi
  printf '%-28s %12s %10s %10s %16s\n' "$1" "$rps" "$p50" "$p99" "$cpu"
  eval "RPS_$4=$rps"
}

echo
echo "GET /…/users/{id}, $USERS users, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $(nproc) cores"
printf '%-28s %12s %10s %10s %16s\n' target "requests/s" p50 p99 "proxy CPU µs/req"
run "(a) gateway → users" "$GATEWAY_PORT" /api a "$GATEWAY_PID"
run "(b) users directly" "$USERS_PORT" "" b
run "(c) nginx → users" "$NGINX_PORT" /api c "$NGINX_PID"
echo
# shellcheck disable=SC2154 # RPS_* and CPU_* are set by run_wrk through eval.
python3 -c "a,b,c=$RPS_a,$RPS_b,$RPS_c; print(f'(a)/(c) gateway vs nginx throughput: {a/c:.2f}   (target >= 1.0)'); print(f'(a)/(b) gateway hop vs direct: {a/b:.2f}'); print(f'proxy CPU per request, gateway/nginx: {$CPU_a/$CPU_c:.2f}   (lower is leaner)')"
