# taskyard — the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Targets that talk to a cluster use the current kube context ($$KUBECONFIG or ~/.kube/config);
# after `make cluster-up`: export KUBECONFIG=$(CURDIR)/.cluster/kubeconfig

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install system packages and the Python virtualenv (.venv)
	hack/install-deps.sh

.PHONY: cluster-up
cluster-up: deps ## Start the local single-node Kubernetes (writes .cluster/kubeconfig)
	hack/cluster-up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove its state
	hack/cluster-down.sh

.PHONY: images
images: ## Build container images with buildah and load them into the local cluster
	hack/images.sh

.PHONY: install
install: deps ## helm upgrade --install the chart: local images on the local cluster, else IMAGE_REGISTRY=...
	hack/install.sh

.PHONY: images-push
images-push: ## Push the operator and agent images: REGISTRY=ghcr.io/you/taskyard [TAG=appVersion]
	REGISTRY="$(REGISTRY)" TAG="$(TAG)" hack/images-push.sh

.PHONY: crds
crds: ## Regenerate crds/ from the API models
	PYTHONPATH=operator $(PYTHON) -m taskyard.crd

.PHONY: manifests
manifests: ## Regenerate the chart's CRDs and manifests/ from crds/ and the chart
	hack/sync-chart.sh

.PHONY: run
run: ## Run the operator against the current kube context (applies the CRDs first)
	kubectl apply --server-side -f crds/
	$(PYTHON) -m taskyard

.PHONY: lint
lint: ## ruff lint and format check
	$(VENV)/bin/ruff check operator tests hack agents
	$(VENV)/bin/ruff format --check operator tests hack agents

.PHONY: test
test: ## Install what is needed, start a fresh local cluster, run every test tier, tear down
	hack/test.sh

.PHONY: test-unit
test-unit: ## Only the unit tier (no cluster)
	$(PYTHON) -m pytest -m unit

.PHONY: demo
demo: ## Install taskyard (current context, else the local cluster) and run a hello Task end to end
	hack/demo.sh

.PHONY: bench
bench: ## Benchmark the operator against the API server floor (prints figures)
	hack/bench.sh
