# AgentMesh. `make test` runs every test; `make demo` runs the demo. Both install what a fresh
# machine lacks (scripts/setup.sh) and keep every cache outside the clone.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

export AGENTMESH_CACHE ?= $(HOME)/.cache/agentmesh
export CARGO_TARGET_DIR ?= $(AGENTMESH_CACHE)/target
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help setup build test unit lint deny fmt crds fuzz-smoke e2e bench bench-operator bench-scale bench-probe bench-sidecar bench-webhook demo demo-check cluster-up cluster-down clean
.PHONY: images images-push images-test chart-test test-kernels

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## Install what this machine lacks (idempotent, quick when nothing is missing)
	@scripts/setup.sh

build: setup ## Build every crate and binary
	$(CARGO) build --workspace --all-targets --locked

test: setup lint unit fuzz-smoke chart-test images-test e2e demo-check test-kernels ## Every test: lint, unit and integration tests, a short fuzz run, charts, images, end-to-end, the demo, the probe on other kernels

test-kernels: setup ## The probe's kernel and fallback tests in QEMU VMs on Debian's 5.10, 6.1, 6.12 and newest kernels (TEST_KERNELS=... for a subset)
	CARGO=$(CARGO) scripts/test-kernels.sh

unit: ## cargo test over the workspace
	$(CARGO) test --workspace --locked --exclude agentmesh-e2e

lint: ## rustfmt check, clippy with warnings as errors, and make deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@$(MAKE) --no-print-directory deny

# cargo-deny, pinned: deny.toml follows its format. No `advisories`: the advisory database cannot
# be fetched on the build machines.
CARGO_DENY_VERSION := 0.20.2

deny: ## cargo-deny: licenses, sources and bans of the workspace and of fuzz/ (deny.toml); installs cargo-deny when missing
	@[ "$$(cargo-deny --version 2>/dev/null)" = "cargo-deny $(CARGO_DENY_VERSION)" ] || CARGO_TARGET_DIR=$(AGENTMESH_CACHE)/target-tools $(CARGO) install cargo-deny --version $(CARGO_DENY_VERSION) --locked --root $(HOME)/.cargo
	$(CARGO) deny --locked check --hide-inclusion-graph bans licenses sources
	$(CARGO) deny --locked --manifest-path fuzz/Cargo.toml check --hide-inclusion-graph bans licenses sources

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate crds/ from the types in crates/api (and the agentmesh chart's copy)
	$(CARGO) run --quiet --locked -p agentmesh-cli -- crds --output-dir crds
	rm -f charts/agentmesh/files/crds/*.yaml && cp crds/*.yaml charts/agentmesh/files/crds/

chart-test: ## Helm charts: lint, helm-unittest, goldens, kubeconform, checkov, schemas, deploy/ drift (UPDATE_GOLDEN=1 rewrites)
	scripts/chart-test.sh

e2e: ## End-to-end suite: the local cluster with a real node (built once), or the cluster of E2E_KUBECONFIG
	CARGO=$(CARGO) e2e/run.sh

# Fuzz targets: one per decoder of untrusted input (fuzz/, its own workspace, nightly).
FUZZ_TARGETS := handshake request_proof delegation_chain policy_document private_key admission_review report_batch mcp_message \
  enforcement_set probe_config cert_secret trust_query
FUZZ_SECONDS ?= 10
FUZZ_TARGET_DIR := $(AGENTMESH_CACHE)/target-fuzz
FUZZ_CORPUS := $(AGENTMESH_CACHE)/fuzz-corpus

fuzz-smoke: ## Run every fuzz target for FUZZ_SECONDS (10) each; installs cargo-fuzz when missing
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null 2>&1 || CARGO_TARGET_DIR=$(AGENTMESH_CACHE)/target-tools $(CARGO) install cargo-fuzz --locked --root $(HOME)/.cargo
	cd fuzz && cargo +nightly fuzz build --sanitizer none --target-dir $(FUZZ_TARGET_DIR)
	@cd fuzz && for target in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_CORPUS)/$$target; \
	  log=$(FUZZ_CORPUS)/$$target.log; \
	  if cargo +nightly fuzz run --sanitizer none --target-dir $(FUZZ_TARGET_DIR) $$target \
	      $(FUZZ_CORPUS)/$$target seeds/$$target -- \
	      -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 >$$log 2>&1; then \
	    echo "fuzz-smoke: $$target ok, $$(grep -h 'stat::number_of_executed_units' $$log | awk '{print $$2}') inputs in $(FUZZ_SECONDS) s"; \
	  else \
	    tail -40 $$log >&2; echo "fuzz-smoke: $$target FAILED (crash input under fuzz/artifacts/$$target)" >&2; exit 1; \
	  fi; \
	done

bench: ## Every benchmark; each prints ratios against baselines measured in the same run
	$(CARGO) bench --locked -p agentmesh-identity --bench handshake 2>&1 | tee $(AGENTMESH_CACHE)/bench-identity.log
	$(CARGO) bench --locked -p agentmesh-trust --bench trust 2>&1 | tee $(AGENTMESH_CACHE)/bench-trust.log
	$(MAKE) --no-print-directory bench-webhook
	$(MAKE) --no-print-directory bench-operator 2>&1 | tee $(AGENTMESH_CACHE)/bench-operator.log
	$(MAKE) --no-print-directory bench-probe 2>&1 | tee $(AGENTMESH_CACHE)/bench-probe.log
	$(MAKE) --no-print-directory bench-sidecar 2>&1 | tee $(AGENTMESH_CACHE)/bench-sidecar.log
	@echo "== ratios (same run) =="; grep -h "ratio" $(AGENTMESH_CACHE)/bench-identity.log $(AGENTMESH_CACHE)/bench-trust.log \
	  $(AGENTMESH_CACHE)/bench-webhook.log $(AGENTMESH_CACHE)/bench-operator.log $(AGENTMESH_CACHE)/bench-probe.log \
	  $(AGENTMESH_CACHE)/bench-sidecar.log

bench-operator: ## Trust API ingest throughput and status writes per identity under load (real API server)
	CARGO=$(CARGO) e2e/run.sh --bench

bench-scale: ## Operator at scale on kwok nodes: 5,000 identities + pods, converge time, API req/s, peak RSS (BENCH_SCALE_BASELINE=<ref>: before/after)
	CARGO=$(CARGO) e2e/bench-scale.sh

bench-probe: setup ## Probe overhead (exec/open/connect with vs without), zero-drop event rate, peak RSS (root); file hooks by instruction count per kernel (QEMU)
	$(CARGO) build --release --locked -p meshlogic-probe --bins
	$(CARGO_TARGET_DIR)/release/meshlogic-probe-bench
	scripts/bench-kernels.sh $(CARGO_TARGET_DIR)/release/meshlogic-probe-bench

bench-sidecar: ## MCP sidecar latency, throughput and RSS vs direct calls and a bare proxy (release build)
	$(CARGO) build --release --locked -p agentmesh-sidecar --bins
	$(CARGO_TARGET_DIR)/release/agentmesh-sidecar-bench

bench-webhook: ## Webhook admission latency and reviews/s over TLS, as ratios against a bare rustls echo server
	$(CARGO) bench --locked -p meshlogic-operator --bench webhook 2>&1 | tee $(AGENTMESH_CACHE)/bench-webhook.log
	@echo "== webhook ratios (same run) =="; grep -h "ratio =" $(AGENTMESH_CACHE)/bench-webhook.log

# Images of meshlogic-operator, agentmesh-sidecar and meshlogic-probe: static binaries on an empty
# base (images/*/Containerfile), OCI archives and their list in $(AGENTMESH_CACHE)/images.
images: setup ## Build the three images as OCI archives in ~/.cache/agentmesh/images (name, digest, size)
	CARGO=$(CARGO) scripts/images.sh build

images-push: ## Build and push the images to REGISTRY=host:port (plain HTTP when it is a loopback address)
	@test -n "$(REGISTRY)" || { echo "make images-push: set REGISTRY=host:port" >&2; exit 1; }
	@$(MAKE) --no-print-directory images
	scripts/images.sh push "$(REGISTRY)"

images-test: setup ## Images: reproducible digests, static single-file layers, podman load, push to a loopback registry
	CARGO=$(CARGO) scripts/images-test.sh

demo: setup ## The local cluster, the product installed by its charts, scripted agents whose trust moves (DEMO_CHECK=1: as a test)
	CARGO=$(CARGO) DEMO_CHECK=$(DEMO_CHECK) demo/run.sh $(DEMO_ARGS)

demo-check: setup ## make demo's story as a test (bounded; fails when a scripted outcome did not happen)
	CARGO=$(CARGO) DEMO_CHECK=1 demo/run.sh

cluster-up: ## Start the local cluster (control plane + a real node, root); kubeconfig at $(AGENTMESH_CACHE)/cluster/kubeconfig
	e2e/cluster/up.sh

cluster-down: ## Stop the local cluster, remove its data and undo what the node changed on the host
	e2e/cluster/down.sh

clean: ## Remove build outputs (the cache under $(AGENTMESH_CACHE) stays)
	$(CARGO) clean
