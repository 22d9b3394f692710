#!/usr/bin/env bash
# Benchmark, not a test: GET /api/users/{id} over preloaded users, in one run, against
#   (a) gateway → users → Redis, (b) users directly, (c) nginx → users (same users process).
# Prints requests/s, p50, p99 for each and the ratios (a)/(c), (a)/(b); the targets take turns
# over several rounds (scripts/bench_measure.py), so machine noise hits them alike.
# nginx is configured to do the gateway's job as far as nginx can: a JSON access line per
# request with the same fields (buffered, as one would run it), X-Request-ID kept or created,
# sent upstream and echoed, X-Forwarded-For/-Proto/-Host/-Prefix. BENCH_NGINX_LOG=off drops
# its access log (the gateway still writes its own). A control target, (a2), is a second,
# identical gateway: (a)/(a2) shows how far this machine's noise moves a ratio of the run.
# (aa) is the same gateway with JWT authentication on (--auth-mode all, an ES256 key set from a
# file) and wrk sending a few hundred distinct valid tokens in turn (BENCH_TOKENS, 300):
# (aa)/(a) is what verifying tokens costs per request (BENCH_AUTH=off drops it).
# (al) is the gateway with both rate-limit policies per pod (--rate-limit local) and (ar) with the
# "client" policy shared in a Redis of its own (--rate-limit redis; that Redis' CPU is not in
# the gateway's), quotas too large to refuse anything: (al)/(a) and (ar)/(a) are what deciding
# costs per request (BENCH_LIMITS=off drops both).
# BENCH_BASELINE_BIN=path adds (a0), the gateway of another build (e.g. the last release's
# binary), measured in the same rounds: (a)/(a0) is a before/after with the control's spread;
# and that build's users role, directly (b0) and behind this gateway (ab0), on the same Redis:
# (b)/(b0), (a)/(ab0) with the Redis CPU per request of each.
# Knobs: BENCH_SECONDS (5 per round), BENCH_ROUNDS (3), BENCH_CONNECTIONS (64),
# BENCH_THREADS (2), BENCH_USERS (200), BENCH_NGINX_LOG (on), BENCH_CONTROL (on), BENCH_LIMITS (on),
# BENCH_BASELINE_BIN (none).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_ROUND="${BENCH_SECONDS:-5}"
ROUNDS="${BENCH_ROUNDS:-3}"
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

cargo build --release --locked -q --bin platform --example mint_tokens
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
REDIS_PID=$!
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

"$BIN" users --host 127.0.0.1 --port "$USERS_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" >/dev/null & pids+=($!)
USERS_PID=$!
# shellcheck disable=SC2086 # BENCH_GATEWAY_ARGS holds several flags: split on purpose.
"$BIN" gateway ${BENCH_GATEWAY_ARGS:-} --host 127.0.0.1 --port "$GATEWAY_PORT" --users-url "http://127.0.0.1:$USERS_PORT" >/dev/null & pids+=($!)
GATEWAY_PID=$!
# The control: the same gateway once more. (a)/(a2) should be 1.0; how far its rounds stray
# is how far this machine's noise moves any ratio of the run.
CONTROL=()
if [ "${BENCH_CONTROL:-on}" != off ]; then
  CONTROL_PORT=$(free_port)
  # shellcheck disable=SC2086 # as above
  "$BIN" gateway ${BENCH_GATEWAY_ARGS:-} --host 127.0.0.1 --port "$CONTROL_PORT" --users-url "http://127.0.0.1:$USERS_PORT" >/dev/null & pids+=($!)
  CONTROL=(--target "a2|(a2) the same gateway again|$CONTROL_PORT|/api|$!")
fi
AUTH=()
if [ "${BENCH_AUTH:-on}" != off ]; then
  AUTH_PORT=$(free_port)
  target/release/examples/mint_tokens "$work" "${BENCH_TOKENS:-300}" https://issuer.bench platform-api
  # shellcheck disable=SC2086 # as above
  "$BIN" gateway ${BENCH_GATEWAY_ARGS:-} --host 127.0.0.1 --port "$AUTH_PORT" --users-url "http://127.0.0.1:$USERS_PORT" \
    --auth-mode all --jwt-issuer https://issuer.bench --jwt-audiences platform-api --jwks-file "$work/jwks.json" >/dev/null & pids+=($!)
  AUTH=(--target "aa|(aa) gateway, auth on|$AUTH_PORT|/api|$!|auth")
fi
LIMITS=()
if [ "${BENCH_LIMITS:-on}" != off ]; then
  # wrk comes from one address: quotas no run reaches, so every request is decided and admitted.
  QUOTAS=(--rate-limit-ip-requests 1000000000 --rate-limit-requests 1000000000 --rate-limit-window 1s)
  LOCAL_PORT=$(free_port); LIMIT_REDIS_PORT=$(free_port); SHARED_PORT=$(free_port)
  # shellcheck disable=SC2086 # as above
  "$BIN" gateway ${BENCH_GATEWAY_ARGS:-} --host 127.0.0.1 --port "$LOCAL_PORT" --users-url "http://127.0.0.1:$USERS_PORT" \
    --rate-limit local "${QUOTAS[@]}" >/dev/null & pids+=($!)
  LIMITS+=(--target "al|(al) gateway, local limits|$LOCAL_PORT|/api|$!")
  mkdir -p "$work/limits"
  redis-server --port "$LIMIT_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/limits" \
    --maxmemory 64mb --maxmemory-policy volatile-ttl >/dev/null & pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$LIMIT_REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  # shellcheck disable=SC2086 # as above
  "$BIN" gateway ${BENCH_GATEWAY_ARGS:-} --host 127.0.0.1 --port "$SHARED_PORT" --users-url "http://127.0.0.1:$USERS_PORT" \
    --rate-limit redis "${QUOTAS[@]}" --rate-limit-redis-url "redis://127.0.0.1:$LIMIT_REDIS_PORT" >/dev/null & pids+=($!)
  LIMITS+=(--target "ar|(ar) gateway, shared limits|$SHARED_PORT|/api|$!")
fi
BASELINE=()
if [ -n "${BENCH_BASELINE_BIN:-}" ]; then
  BASELINE_PORT=$(free_port); BASELINE_USERS_PORT=$(free_port); BASELINE_HOP_PORT=$(free_port)
  # shellcheck disable=SC2086 # as above
  "$BENCH_BASELINE_BIN" gateway ${BENCH_GATEWAY_ARGS:-} --host 127.0.0.1 --port "$BASELINE_PORT" --users-url "http://127.0.0.1:$USERS_PORT" >/dev/null & pids+=($!)
  BASELINE=(--target "a0|(a0) the baseline gateway|$BASELINE_PORT|/api|$!")
  # The baseline's users role on the same Redis and data, directly (b0) and behind this
  # build's gateway (ab0): (b)/(b0) and (a)/(ab0) are the users role's before/after, with the
  # Redis CPU each request costs.
  "$BENCH_BASELINE_BIN" users --host 127.0.0.1 --port "$BASELINE_USERS_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" >/dev/null & pids+=($!)
  BASELINE+=(--target "b0|(b0) baseline users directly|$BASELINE_USERS_PORT||$!")
  # shellcheck disable=SC2086 # as above
  "$BIN" gateway ${BENCH_GATEWAY_ARGS:-} --host 127.0.0.1 --port "$BASELINE_HOP_PORT" --users-url "http://127.0.0.1:$BASELINE_USERS_PORT" >/dev/null & pids+=($!)
  BASELINE+=(--target "ab0|(ab0) gateway → baseline users|$BASELINE_HOP_PORT|/api|$!")
fi

if [ "${BENCH_NGINX_LOG:-on}" = off ]; then
  NGINX_ACCESS_LOG="access_log off;"
else
  NGINX_ACCESS_LOG="access_log $work/nginx-access.log access_json buffer=64k flush=1s;"
fi
cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  map \$http_x_request_id \$rid { default \$http_x_request_id; "" \$request_id; }
  log_format access_json escape=json '{"ts":"\$time_iso8601","level":"info","msg":"request",'
    '"request_id":"\$rid","method":"\$request_method","path":"\$request_uri","route":"/api/users/{tail}",'
    '"status":\$status,"duration_ms":\$request_time,"remote_addr":"\$remote_addr",'
    '"user_agent":"\$http_user_agent"}';
  $NGINX_ACCESS_LOG
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
      proxy_set_header X-Request-ID \$rid;
      add_header X-Request-ID \$rid always;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
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
[ -z "${CONTROL_PORT:-}" ] || wait_port "$CONTROL_PORT" /health/ready
[ -z "${BASELINE_PORT:-}" ] || wait_port "$BASELINE_PORT" /health/ready
[ -z "${BASELINE_USERS_PORT:-}" ] || wait_port "$BASELINE_USERS_PORT" /health/ready
[ -z "${BASELINE_HOP_PORT:-}" ] || wait_port "$BASELINE_HOP_PORT" /health/ready
[ -z "${AUTH_PORT:-}" ] || wait_port "$AUTH_PORT" /health/ready
[ -z "${LOCAL_PORT:-}" ] || wait_port "$LOCAL_PORT" /health/ready
[ -z "${SHARED_PORT:-}" ] || wait_port "$SHARED_PORT" /health/ready
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
  printf 'tokens = {'
  if [ -s "$work/tokens.txt" ]; then while read -r t; do printf '"%s",' "$t"; done < "$work/tokens.txt"; fi
  printf '}\n'
  cat <<'LUA'
prefix = os.getenv("BENCH_PREFIX") or ""
auth = os.getenv("BENCH_AUTH_TARGET") == "1"
counter = 0
request = function()
  counter = counter + 1
  local headers = nil
  if auth then
    headers = {["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1]}
  end
  return wrk.format("GET", prefix .. "/users/" .. ids[(counter % #ids) + 1], headers)
end
LUA
} > "$work/ids.lua"

python3 scripts/bench_measure.py --lua "$work/ids.lua" --threads "$THREADS" --connections "$CONNECTIONS" \
  --seconds "$SECONDS_PER_ROUND" --rounds "$ROUNDS" \
  --target "a|(a) gateway → users|$GATEWAY_PORT|/api|$GATEWAY_PID" \
  --target "b|(b) users directly|$USERS_PORT||$USERS_PID" --redis-pid "$REDIS_PID" \
  --target "c|(c) nginx → users|$NGINX_PORT|/api|$NGINX_PID" \
  "${CONTROL[@]}" "${AUTH[@]}" "${LIMITS[@]}" "${BASELINE[@]}"
if [ "${BENCH_NGINX_LOG:-on}" != off ] && [ ! -s "$work/nginx-access.log" ]; then
  echo "nginx wrote no access log: its configuration is not the one described above" >&2
  exit 1
fi
