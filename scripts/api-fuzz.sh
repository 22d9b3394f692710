#!/usr/bin/env bash
# Fuzzes the API against its own OpenAPI documents with schemathesis (`make api-fuzz`):
# a throwaway redis-server and `platform all` (authentication on for writes, rate limits on
# with quotas no run reaches) on free ports, then `schemathesis run --checks all` against the
# gateway's document (with a bearer token of a client in a throwaway clients file), the
# users role's and the auth role's. Bounded (MAX_EXAMPLES per operation, one worker, an outer timeout) and
# deterministic (SEED). Fails on any failure: a 5xx, an answer outside its schema or its
# documented statuses, a 405 without Allow, a schema-valid request refused or an invalid
# one accepted.
#   PLATFORM_BIN=target/release/platform scripts/api-fuzz.sh   # default: a debug build
set -euo pipefail
cd "$(dirname "$0")/.."

SEED="${SEED:-17}"
MAX_EXAMPLES="${MAX_EXAMPLES:-40}"
# Outer bound of each schemathesis run, in seconds (the runs finish well within it).
RUN_TIMEOUT="${RUN_TIMEOUT:-300}"

if [ -z "${PLATFORM_BIN:-}" ]; then
  cargo build --locked --bin platform >&2
  PLATFORM_BIN=target/debug/platform
fi
./scripts/ensure-redis.sh >/dev/null
schemathesis="$(./scripts/ci-tools.sh --python)/schemathesis"
config="$PWD/scripts/schemathesis.toml"

work="$(mktemp -d)"
pids=()
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() {
  for _ in $(seq 100); do
    if curl -fsS -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "api-fuzz: $1 did not answer" >&2
  return 1
}

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --logfile redis.log &
pids+=($!)

# Argon2 as cheap as the tests' (a debug build hashes slowly); the secret never leaves $work.
argon2=(--argon2-memory-kib 4096 --argon2-iterations 2 --argon2-parallelism 1)
mkdir "$work/keys"
"$PLATFORM_BIN" auth generate-key "$work/keys" >/dev/null
secret="fuzz-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
hash="$(printf '%s' "$secret" | "$PLATFORM_BIN" auth hash-secret "${argon2[@]}")"
printf '[{"client_id":"fuzz","secret_hash":"%s","scopes":["users:read","users:write"]}]' \
  "$hash" >"$work/clients.json"

gateway_port="$(free_port)"
users_port="$(free_port)"
auth_port="$(free_port)"
AUTH_MODE=writes SIGNING_KEYS_DIR="$work/keys" CLIENTS_FILE="$work/clients.json" \
  RATE_LIMIT=local RATE_LIMIT_IP_REQUESTS=1000000 RATE_LIMIT_REQUESTS=1000000 \
  LOG_LEVEL=warning \
  "$PLATFORM_BIN" all --host 127.0.0.1 --workers 2 "${argon2[@]}" \
  --gateway-port "$gateway_port" --users-port "$users_port" --auth-port "$auth_port" \
  --redis-url "redis://127.0.0.1:$redis_port" >"$work/platform.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$users_port/health/ready"
wait_for "http://127.0.0.1:$auth_port/health/ready"
wait_for "http://127.0.0.1:$gateway_port/health/ready"

token="$(curl -fsS -u "fuzz:$secret" -d grant_type=client_credentials \
  "http://127.0.0.1:$gateway_port/api/auth/token" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')"

fuzz() {
  local name="$1" url="$2"
  shift 2
  echo "api-fuzz: $name ($url, seed $SEED, $MAX_EXAMPLES examples per operation)" >&2
  # From $work: schemathesis keeps a cache (.schemathesis/) in its working directory.
  (cd "$work" && timeout "$RUN_TIMEOUT" "$schemathesis" --config-file "$config" \
    run "$url/openapi.json" \
    --checks all --seed "$SEED" --max-examples "$MAX_EXAMPLES" --workers 1 \
    --request-timeout 10 --no-color --report junit --report-dir "$work/report-$name" "$@")
}
status=0
fuzz gateway "http://127.0.0.1:$gateway_port" -H "Authorization: Bearer $token" || status=$?
fuzz users "http://127.0.0.1:$users_port" || status=$?
fuzz auth "http://127.0.0.1:$auth_port" || status=$?
if [ "$status" -ne 0 ]; then
  echo "api-fuzz: failed; the platform's warnings and errors:" >&2
  tail -n 50 "$work/platform.log" >&2
fi
exit "$status"
