# platform: one binary, several roles. `make` lists the targets.
SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec
.DEFAULT_GOAL := help

CARGO ?= cargo
REDIS_PORT ?= 6379

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: run
run: ## Install/start Redis if needed, then run gateway (:3000) + users (:3001) in one process
	./scripts/ensure-redis.sh --start
	$(CARGO) run --release --locked -- all --log-format pretty

.PHONY: test
test: ## Run the whole test suite (installs redis-server if missing)
	./scripts/ensure-redis.sh
	$(CARGO) test --locked

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

.PHONY: bench
bench: ## Benchmark gateway vs users vs nginx on GET /api/users/{id} (wrk; bounded time)
	./scripts/bench.sh

.PHONY: build
build: ## Release build of the platform binary
	$(CARGO) build --release --locked
