#!/usr/bin/env bash
# Checks every deployment artifact with real tools (installed by scripts/ci-tools.sh):
# Dockerfile (hadolint, checkov), each kustomize overlay (render, kubernetes-validate --strict,
# checkov), YAML style (yamllint), workflows (actionlint), and that the manifests agree with
# the binary (tests/deploy/check_manifests.py). `make image` builds and runs the image itself.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="$(./scripts/ci-tools.sh --python)"
K8S_VERSION="${K8S_VERSION:-1.32.0}"
OUT="target/k8s"
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "hadolint Dockerfile"
"$BIN/hadolint" Dockerfile
step "checkov --framework dockerfile"
"$BIN/checkov" --quiet --compact --skip-download --framework dockerfile -f Dockerfile

step "yamllint"
"$BIN/yamllint" --strict k8s .github .yamllint

for overlay in k8s/overlays/*/; do
  name="$(basename "$overlay")"
  step "kustomize $name"
  kubectl kustomize "$overlay" >"$OUT/$name.yaml"
  echo "$OUT/$name.yaml: $(grep -c '^kind:' "$OUT/$name.yaml") objects"
  step "kubernetes-validate --strict ($name, Kubernetes $K8S_VERSION)"
  # ExternalSecret is a CRD without a bundled schema: it is reported and skipped.
  "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$OUT/$name.yaml"
  step "checkov --framework kubernetes ($name)"
  "$BIN/checkov" --quiet --compact --skip-download --framework kubernetes -f "$OUT/$name.yaml"
done

step "shellcheck"
shellcheck scripts/*.sh .ci/run
# The Redis Sentinel start scripts (POSIX sh, run by the redis image's dash).
shellcheck -x k8s/components/redis-sentinel/*.sh

step "kubernetes-validate --strict (Secret template)"
"$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" k8s/secret-template.yaml

step "promtool: scrape configs, alert rules and their unit tests"
promtool check config k8s/monitoring/prometheus-local.yml
promtool check rules k8s/monitoring/alerts.yml
promtool test rules k8s/monitoring/alerts.test.yml
# Debian's promtool is built without Kubernetes service discovery, so the in-cluster
# prometheus.yml gets yamllint (above) here; CI's promtool checks it (.github/workflows/ci.yml).

step "kustomize + kubernetes-validate --strict (k8s/monitoring)"
kubectl kustomize k8s/monitoring >"$OUT/monitoring.yaml"
"$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$OUT/monitoring.yaml"
for f in k8s/monitoring/dashboards/*.json; do python3 -m json.tool "$f" >/dev/null; done

step "actionlint (with shellcheck on every run: block)"
"$BIN/actionlint" -no-color

step "manifests agree with the binary"
cargo build --locked --quiet
"$BIN/python" tests/deploy/check_manifests.py target/debug/platform
