# llmft: every target does its own set-up on a fresh clone (creates .venv, installs, runs).
# `make help` lists the targets.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmft-installed
TORCH_VERSION := 2.13.0
# Must name the same images as components/images.py (a test checks): set LLMFT_IMAGE_REPO and
# LLMFT_IMAGE_TAG in the environment for both `make images` and `llmft compile/submit`.
LLMFT_IMAGE_REPO ?= us-docker.pkg.dev/llmft-project/llmft
LLMFT_IMAGE_TAG ?= 0.1.0

.PHONY: help install demo test lint format dataset compile bench-validate bench-train images clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "; printf "Targets:\n"} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first and pinned: any other resolution pulls a multi-GB CUDA build on a CPU machine.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install torch (CPU) + the project with the locked versions

demo: $(STAMP) ## Run the whole pipeline locally (kfp.local) on the sample data and the tiny model
	$(BIN)/llmft run --local

test: $(STAMP) ## Lint (ruff) and run the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

dataset: $(STAMP) ## Regenerate dataset/sample.jsonl and dataset/sample_alpaca.json
	$(BIN)/python dataset/generate.py

compile: $(STAMP) ## Compile the pipeline for Vertex (L4) and GKE (L4) into build/
	mkdir -p build
	$(BIN)/llmft compile --target vertex --accelerator L4 -o build/pipeline-vertex.yaml
	$(BIN)/llmft compile --target gke --accelerator L4 -o build/pipeline-gke.yaml

bench-validate: $(STAMP) ## Validator throughput vs a stdlib json loop (ratio + peak RSS)
	$(BIN)/python bench/validate_throughput.py

bench-train: $(STAMP) ## Training throughput: ours vs transformers Trainer vs trl (ratios)
	$(BIN)/python bench/train_throughput.py

images: ## Build and push the GPU and CPU images (needs Docker; LLMFT_IMAGE_REPO, LLMFT_IMAGE_TAG)
	docker build -t $(LLMFT_IMAGE_REPO)/llmft-gpu:$(LLMFT_IMAGE_TAG) -f Dockerfile .
	docker build -t $(LLMFT_IMAGE_REPO)/llmft-cpu:$(LLMFT_IMAGE_TAG) -f Dockerfile.cpu .
	docker push $(LLMFT_IMAGE_REPO)/llmft-gpu:$(LLMFT_IMAGE_TAG)
	docker push $(LLMFT_IMAGE_REPO)/llmft-cpu:$(LLMFT_IMAGE_TAG)

clean: ## Remove build outputs and local runs (keeps .venv)
	rm -rf build runs .pytest_cache .ruff_cache
