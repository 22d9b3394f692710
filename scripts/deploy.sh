#!/usr/bin/env bash
# Deploys an overlay to the current kubectl context and proves it serves; rolls back if not.
#   scripts/deploy.sh dev|prod [IMAGE]
# IMAGE (e.g. ghcr.io/org/platform:sha-1a2b3c4) is written into the overlay with
# `kustomize edit set image` first. Then: apply, wait for every rollout, smoke-test the
# gateway's /health/ready and /api/users through a port-forward, and on any failure
# `kubectl rollout undo` the Deployments and exit non-zero.
# Where the overlay's gateway requires a token (AUTH_MODE=all), /api/users must answer 401 with a
# Bearer challenge, or 200 when SMOKE_TOKEN holds a valid access token (never printed).
set -euo pipefail
cd "$(dirname "$0")/.."

overlay="${1:?usage: scripts/deploy.sh dev|prod [IMAGE]}"
image="${2:-}"
dir="k8s/overlays/$overlay"
[ -d "$dir" ] || { echo "deploy: no overlay $dir" >&2; exit 2; }
command -v kubectl >/dev/null 2>&1 || { echo "deploy: kubectl is not installed" >&2; exit 1; }
kubectl version --request-timeout=5s >/dev/null 2>&1 || {
  echo "deploy: no cluster answers for kubectl context '$(kubectl config current-context 2>/dev/null || echo none)' (make kind-up?)" >&2
  exit 1
}
rendered="$(kubectl kustomize "$dir")"
ns="$(sed -n 's/^  namespace: //p' <<<"$rendered" | sort -u | head -1)"
auth_mode="$(sed -n 's/^  AUTH_MODE: //p' <<<"$rendered" | tr -d '"' | head -1)"
# The auth role before the gateway: with AUTH_MODE on, a gateway is ready once it has its key set.
deployments=(deployment/users deployment/auth deployment/gateway)
timeout="${ROLLOUT_TIMEOUT:-5m}"

if [ -n "$image" ]; then
  command -v kustomize >/dev/null 2>&1 || { echo "deploy: kustomize is needed to set the image" >&2; exit 1; }
  (cd "$dir" && kustomize edit set image "platform=$image")
fi

rollback() {
  echo "deploy: FAILED — rolling back ${deployments[*]} in $ns" >&2
  for d in "${deployments[@]}"; do
    kubectl -n "$ns" rollout undo "$d" || echo "deploy: nothing to undo for $d (first rollout?)" >&2
  done
  for d in "${deployments[@]}"; do kubectl -n "$ns" rollout status "$d" --timeout="$timeout" || true; done
  exit 1
}

kubectl apply -k "$dir"
kubectl -n "$ns" rollout status statefulset/redis --timeout="$timeout" || rollback
for d in "${deployments[@]}"; do
  kubectl -n "$ns" rollout status "$d" --timeout="$timeout" || rollback
done

port="${SMOKE_PORT:-18080}"
kubectl -n "$ns" port-forward svc/gateway "$port:3000" >/dev/null 2>&1 &
pf=$!
trap 'kill $pf 2>/dev/null || true' EXIT
ok=""
for _ in $(seq 30); do
  if curl -fsS --max-time 2 "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1; then ok=1; break; fi
  sleep 2
done
[ -n "$ok" ] || { echo "deploy: smoke test: /health/ready never answered 200" >&2; rollback; }
users_url="http://127.0.0.1:$port/api/users?limit=1"
if [ -n "${SMOKE_TOKEN:-}" ]; then
  # The header from a file descriptor: the token stays out of the process list.
  curl -fsS --max-time 5 -H @<(printf 'Authorization: Bearer %s\n' "$SMOKE_TOKEN") "$users_url" >/dev/null \
    || { echo "deploy: smoke test: GET /api/users with SMOKE_TOKEN failed" >&2; rollback; }
elif [ "$auth_mode" = all ]; then
  # No token to hand: the gateway serves and enforces (its readiness covers users and the JWKS).
  headers="$(curl -sS --max-time 5 -o /dev/null -D - "$users_url" || true)"
  if ! grep -q '^HTTP/[0-9.]* 401' <<<"$headers" || ! grep -qi '^www-authenticate: Bearer' <<<"$headers"; then
    echo "deploy: smoke test: GET /api/users without a token did not answer 401 Bearer" >&2
    rollback
  fi
else
  curl -fsS --max-time 5 "$users_url" >/dev/null || { echo "deploy: smoke test: GET /api/users failed" >&2; rollback; }
fi
echo "deploy: $overlay is serving in namespace $ns"
