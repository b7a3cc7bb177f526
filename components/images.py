"""The container images the pipeline's components run in: configured here, and only here.

Two images are built from this repository (see the Dockerfiles): a CPU image for the light
steps (validate, upload, publish, finalize) and a CUDA image for train and evaluate. The
repository and tag come from ``LLMFT_IMAGE_REPO`` / ``LLMFT_IMAGE_TAG`` when set, otherwise from
the defaults below; ``pipelines.compile.compile_pipeline(image_tag=...)`` overrides the tag of a
single compilation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_REPO = "us-docker.pkg.dev/llmft-project/llmft"
"""Artifact Registry repository holding both images (override with ``LLMFT_IMAGE_REPO``)."""

DEFAULT_TAG = "0.1.0"
"""Image tag (override with ``LLMFT_IMAGE_TAG``); matches the package version."""

CPU_NAME = "llmft-cpu"
GPU_NAME = "llmft-gpu"


@dataclass(frozen=True)
class Images:
    """The pair of images one compiled pipeline uses."""

    cpu: str
    gpu: str


def images(tag: str | None = None, repo: str | None = None) -> Images:
    """Return the configured CPU and GPU image references.

    Args:
        tag: Image tag; default ``LLMFT_IMAGE_TAG`` or ``DEFAULT_TAG``.
        repo: Registry path; default ``LLMFT_IMAGE_REPO`` or ``DEFAULT_REPO``.

    Returns:
        ``Images(cpu=<repo>/llmft-cpu:<tag>, gpu=<repo>/llmft-gpu:<tag>)``.
    """
    repo = (repo or os.environ.get("LLMFT_IMAGE_REPO") or DEFAULT_REPO).rstrip("/")
    tag = tag or os.environ.get("LLMFT_IMAGE_TAG") or DEFAULT_TAG
    return Images(cpu=f"{repo}/{CPU_NAME}:{tag}", gpu=f"{repo}/{GPU_NAME}:{tag}")


CPU_IMAGE = images().cpu
"""CPU image the components are declared with (compile_pipeline may substitute another tag)."""

GPU_IMAGE = images().gpu
"""GPU image for train_lora and evaluate."""
