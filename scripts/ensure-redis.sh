#!/usr/bin/env bash
# Installs redis-server (Debian/Ubuntu) when it is missing. With --start, also starts a local
# Redis on 127.0.0.1:${REDIS_PORT:-6379} configured as the contract wants (AOF everysec,
# noeviction), unless one already answers there.
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-server not found: installing it with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # The Debian package starts a system service; our tests start their own servers.
fi

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
