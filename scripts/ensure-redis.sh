#!/usr/bin/env bash
# Installs redis-server (Debian/Ubuntu) when it is missing. With --start, also starts a local
# Redis on 127.0.0.1:${REDIS_PORT:-6379} configured as the contract wants (AOF everysec,
# noeviction), unless one already answers there.
set -euo pipefail

"$(dirname "$0")/ensure-apt.sh" redis-server:redis-server redis-cli:redis-tools

if [ "${1:-}" = "--start" ]; then
  port="${REDIS_PORT:-6379}"
  if redis-cli -p "$port" ping >/dev/null 2>&1; then
    echo "redis already answers on 127.0.0.1:$port"
    exit 0
  fi
  dir="${REDIS_DIR:-.run/redis}"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
    --dir "$(cd "$dir" && pwd)" --logfile redis.log \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && { echo "redis started on 127.0.0.1:$port (data in $dir)"; exit 0; }
    sleep 0.1
  done
  echo "redis did not start; see $dir/redis.log" >&2
  exit 1
fi
