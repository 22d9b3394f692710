#!/usr/bin/env bash
# Installs Debian/Ubuntu packages whose command is missing. Arguments: COMMAND:PACKAGE ...
#   scripts/ensure-apt.sh redis-server:redis-server prometheus:prometheus
set -euo pipefail

missing=()
for pair in "$@"; do
  cmd="${pair%%:*}" pkg="${pair#*:}"
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "installing ${missing[*]} with apt-get" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
