# AgentMesh. `make test` runs every test; `make demo` runs the demo. Both install what a fresh
# machine lacks (scripts/setup.sh) and keep every cache outside the clone.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

export AGENTMESH_CACHE ?= $(HOME)/.cache/agentmesh
export CARGO_TARGET_DIR ?= $(AGENTMESH_CACHE)/target
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help setup build test unit lint fmt crds e2e bench bench-probe demo cluster-up cluster-down clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## Install what this machine lacks (idempotent, quick when nothing is missing)
	@scripts/setup.sh

build: setup ## Build every crate and binary
	$(CARGO) build --workspace --all-targets --locked

test: setup lint unit ## Every test: lint, unit and integration tests

unit: ## cargo test over the workspace
	$(CARGO) test --workspace --locked

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate crds/ from the types in crates/api
	$(CARGO) run --quiet --locked -p agentmesh-cli -- crds --output-dir crds

e2e: ## End-to-end suite against a real kube-apiserver (not built yet)
	@echo "make e2e: not implemented yet (the local control plane and e2e suite are issue 3)" >&2; exit 1

bench: ## Benchmarks with ratios against same-run baselines (not built yet)
	@echo "make bench: no benchmarks yet (they come with the trust core, webhook, operator and probe)" >&2; exit 1

bench-probe: setup ## Probe overhead (exec/open/connect with vs without), zero-drop event rate, peak RSS (root)
	$(CARGO) build --release --locked -p meshlogic-probe --bins
	$(CARGO_TARGET_DIR)/release/meshlogic-probe-bench

demo: ## Local control plane, operator, webhook, probe, sidecar and scripted agents (not built yet)
	@echo "make demo: not implemented yet (needs the control plane, operator, sidecar and probe)" >&2; exit 1

cluster-up: ## Start a local kube-apiserver + etcd (not built yet)
	@echo "make cluster-up: not implemented yet (issue 3)" >&2; exit 1

cluster-down: ## Stop the local control plane (not built yet)
	@echo "make cluster-down: not implemented yet (issue 3)" >&2; exit 1

clean: ## Remove build outputs (the cache under $(AGENTMESH_CACHE) stays)
	$(CARGO) clean
