# jit-operator. `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Where `make dev-cluster` keeps its state and kubeconfigs.
LOCAL_DIR := .local
CLUSTER := tests/control-plane/cluster.sh
# The chart's copy of the CRDs, installed when crds.enabled.
CHART_CRDS := charts/jit-operator/files/crds
# The kustomize base's copy.
KUSTOMIZE_CRDS := config/crd/bases
# Extra flags for the operator in `make run`, e.g. ARGS="--log-format json".
ARGS ?=

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: fmt
fmt: ## Format the Rust code.
	$(CARGO) fmt

.PHONY: lint
lint: ## Check formatting and run clippy with warnings as errors.
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --all-features --locked -- -D warnings

.PHONY: crds
crds: ## Regenerate crds/ (and the chart's copy) from the Rust types.
	$(CARGO) run --quiet --locked --bin crdgen -- crds
	$(CARGO) run --quiet --locked --bin crdgen -- $(CHART_CRDS)
	$(CARGO) run --quiet --locked --bin crdgen -- $(KUSTOMIZE_CRDS)

.PHONY: verify
verify: ## Fail if anything generated (crds/ and its copies in the chart and config/crd) is stale.
	@generated="$$(mktemp -d)"; trap 'rm -rf "$$generated"' EXIT; \
	$(CARGO) run --quiet --locked --bin crdgen -- "$$generated"; \
	for copy in crds $(CHART_CRDS) $(KUSTOMIZE_CRDS); do \
		if ! diff -r "$$copy" "$$generated"; then \
			echo "$$copy is stale: run 'make crds' and commit the result" >&2; exit 1; \
		fi; \
	done; \
	echo "crds/, $(CHART_CRDS) and $(KUSTOMIZE_CRDS) are up to date"

.PHONY: control-plane
control-plane: ## Build kube-apiserver, kubectl, etcd and helm from the Go module proxy into the cache (once).
	@tests/control-plane/prerequisites.sh
	@tests/control-plane/build.sh >/dev/null
	@tests/control-plane/build-helm.sh >/dev/null

.PHONY: dev-cluster
dev-cluster: control-plane ## Start a local control plane in the background with CRDs and RBAC; kubeconfigs in .local/.
	@$(CLUSTER) start $(LOCAL_DIR)
	@tests/control-plane/install.sh $(LOCAL_DIR)
	@echo "export KUBECONFIG=$(abspath $(LOCAL_DIR))/kubeconfig-admin"

.PHONY: dev-cluster-down
dev-cluster-down: ## Stop the local control plane started by dev-cluster.
	@$(CLUSTER) stop $(LOCAL_DIR)

.PHONY: run
run: ## Run the operator against KUBECONFIG, or a local control plane when it is unset.
ifeq ($(origin KUBECONFIG),undefined)
	@$(MAKE) --no-print-directory dev-cluster
	@echo "running the operator as jit-operator; it registers its admission webhooks"
	KUBECONFIG=$(abspath $(LOCAL_DIR))/kubeconfig-jit-operator \
		$(CARGO) run --locked --bin jit-operator -- --register-webhooks \
		--activity-addr 127.0.0.1:$$(cat $(LOCAL_DIR)/activity-port) \
		--activity-cert-dir $(abspath $(LOCAL_DIR))/pki/activity \
		--activity-token-file $(abspath $(LOCAL_DIR))/pki/activity-token $(ARGS)
else
	kubectl apply --server-side --field-manager=jit-operator-install -f crds/
	kubectl wait --for=condition=Established --timeout=60s -f crds/
	@echo "note: the webhooks are registered only with ARGS=--register-webhooks, and only work"
	@echo "      if that API server can reach this machine's --webhook-addr"
	$(CARGO) run --locked --bin jit-operator -- $(ARGS)
endif

.PHONY: emulators
emulators: ## Install the emulators and sinks the tests use (moto for AWS, the CloudEvents SDK, Mailpit) into the cache (once).
	@tests/aws/moto.sh >/dev/null
	@tests/audit/receiver.sh >/dev/null
	@tests/audit/mailpit.sh >/dev/null

.PHONY: bench
bench: control-plane ## Benchmark grants and revokes at 100, 1,000 and 10,000 live requests (BENCH_N=1000 to choose; KUBECONFIG=... for a real cluster); report in target/bench/.
	$(CARGO) bench --locked --bench lifecycle

.PHONY: plugin
plugin: ## Build the kubectl jit plugin (release) and its krew archive and manifest in target/plugin/.
	$(CARGO) build --release --locked --bin kubectl-jit
	@archive="$$(plugins/package.sh target/release/kubectl-jit target/plugin)"; \
	  echo "install: kubectl krew install --manifest=target/plugin/jit.yaml --archive=$$archive"

.PHONY: test
test: lint verify control-plane emulators ## Everything CI runs: lint, CRD drift, unit and integration tests.
	$(CARGO) test --locked --features failpoints
