# platform: one binary, several roles. `make` lists the targets.
SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec
.DEFAULT_GOAL := help

CARGO ?= cargo
REDIS_PORT ?= 6379
IMAGE ?= platform:local
KIND_CLUSTER ?= platform
OVERLAY ?= dev
PROMETHEUS_PORT ?= 9090
BUILDAH_STORAGE_DRIVER ?= overlay
BUILDAH = buildah --storage-driver $(BUILDAH_STORAGE_DRIVER)
NAMESPACE ?= platform-$(OVERLAY)

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: run
run: ## Install/start Redis if needed, then run gateway (:3000), users (:3001) and auth (:3002) in one process
	./scripts/ensure-redis.sh --start
	$(CARGO) build --release --locked --bin platform
	@# A local signing key for the auth role (made once; SIGNING_KEYS_DIR overrides the directory).
	@mkdir -p .run/keys && { ls .run/keys/*.pem >/dev/null 2>&1 || ./target/release/platform auth generate-key .run/keys; }
	SIGNING_KEYS_DIR="$${SIGNING_KEYS_DIR:-.run/keys}" ./target/release/platform all --log-format pretty

.PHONY: test
test: ## Run the whole test suite (installs redis-server and prometheus if missing)
	./scripts/ensure-apt.sh redis-server:redis-server redis-cli:redis-tools prometheus:prometheus
	$(CARGO) test --locked

.PHONY: chaos
chaos: ## Faults against the real binary and Redis under load (SIGTERM, Redis kill/freeze, users kill, network, races); one line per scenario
	./scripts/ensure-apt.sh redis-server:redis-server ip:iproute2 tc:iproute2 iptables:iptables
	$(CARGO) test --locked --test chaos

.PHONY: api-fuzz
api-fuzz: ## Fuzz every role's API with schemathesis from its /openapi.json (redis + platform all; fixed seed, bounded)
	./scripts/api-fuzz.sh

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

.PHONY: monitor
monitor: ## Run Prometheus (with the alert rules) against `make run`'s platform; prints its URL
	./scripts/ensure-apt.sh prometheus:prometheus
	@mkdir -p .run/prometheus
	@echo "Prometheus: http://127.0.0.1:$(PROMETHEUS_PORT)  (scraping :3000 and :3001; alerts at /alerts)"
	prometheus --config.file=k8s/monitoring/prometheus-local.yml --storage.tsdb.path=.run/prometheus \
	  --web.listen-address=127.0.0.1:$(PROMETHEUS_PORT) --log.level=warn

.PHONY: bench
bench: ## Benchmark gateway vs users vs nginx on GET /api/users/{id} (wrk; bounded time)
	./scripts/bench.sh

.PHONY: bench-scale
bench-scale: ## Reindex/export/import users/s and Redis bytes per user at 10k/100k/1M seed users (release build; bounded)
	./scripts/bench-scale.sh

.PHONY: build
build: ## Release build of the platform binary
	$(CARGO) build --release --locked

##@ Deployment

.PHONY: check-deploy
check-deploy: ## Lint and validate Dockerfile, k8s overlays and workflows; prove manifests match the binary
	./scripts/check-deploy.sh

.PHONY: image
image: ## Build the image (docker, or buildah with local stand-in bases) and check it runs
	IMAGE=$(IMAGE) BUILDAH_STORAGE_DRIVER=$(BUILDAH_STORAGE_DRIVER) ./scripts/image.sh

define require
	@command -v $(1) >/dev/null 2>&1 || { echo "error: '$(1)' is not installed; $(2)" >&2; exit 1; }
endef

.PHONY: kind-up
kind-up: ## Create a local kind cluster (name: KIND_CLUSTER, default platform)
	$(call require,kind,see https://kind.sigs.k8s.io/docs/user/quick-start/#installation)
	$(call require,docker,kind runs its nodes as Docker containers)
	@docker info >/dev/null 2>&1 || { echo "error: no Docker daemon answers; kind needs one" >&2; exit 1; }
	kind get clusters | grep -qx '$(KIND_CLUSTER)' || kind create cluster --name $(KIND_CLUSTER) --wait 120s

.PHONY: kind-load
kind-load: ## Load IMAGE (default platform:local) into the kind cluster (build it first with `make image`)
	$(call require,kind,see https://kind.sigs.k8s.io/docs/user/quick-start/#installation)
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && docker image inspect $(IMAGE) >/dev/null 2>&1; then \
	  kind load docker-image $(IMAGE) --name $(KIND_CLUSTER); \
	elif command -v buildah >/dev/null 2>&1 && $(BUILDAH) inspect --type image $(IMAGE) >/dev/null 2>&1; then \
	  mkdir -p target && rm -f target/platform-image.tar && \
	  $(BUILDAH) push $(IMAGE) docker-archive:target/platform-image.tar:$(IMAGE) && \
	  kind load image-archive target/platform-image.tar --name $(KIND_CLUSTER); \
	else echo "error: image $(IMAGE) not found in docker or buildah storage; run 'make image' first" >&2; exit 1; fi

.PHONY: deploy
deploy: ## Apply OVERLAY (default dev) to the current context, wait for rollout, smoke-test, roll back on failure
	$(call require,kubectl,see https://kubernetes.io/docs/tasks/tools/)
	./scripts/deploy.sh $(OVERLAY)

.PHONY: port-forward
port-forward: ## Forward localhost:3000 to the gateway in platform-OVERLAY
	$(call require,kubectl,see https://kubernetes.io/docs/tasks/tools/)
	kubectl -n $(NAMESPACE) port-forward svc/gateway 3000:3000

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	$(call require,kind,see https://kind.sigs.k8s.io/docs/user/quick-start/#installation)
	kind delete cluster --name $(KIND_CLUSTER)
