"""Typer options shared by several commands (kept out of cli_common: typer costs start-up time,
and ``llmft validate`` imports cli_common)."""

from __future__ import annotations

from typing import Annotated

import typer

# Placement options shared by `llmft compile`, `llmft submit` and `llmft schedule create`.
AcceleratorCount = Annotated[
    int,
    typer.Option(
        "--accelerator-count",
        help="GPUs for train-lora (1, 2, 4, 8): one training process per GPU, data parallel "
        "(evaluate takes one).",
    ),
]
MachineType = Annotated[
    str | None,
    typer.Option(
        "--machine-type",
        help="Machine of the GPU steps. gke: the GPU node pool's shape (requests must fit its "
        "allocatable); vertex: the VM. n1-standard-4/8/16/32 (T4) or "
        "g2-standard-4/8/12/16/24/32/48/96 (L4).",
    ),
]
GpuStepCpu = Annotated[
    str | None,
    typer.Option(
        "--gpu-step-cpu", help="vCPUs of train-lora and evaluate, e.g. 3 or 3500m (default: fits)."
    ),
]
GpuStepMemory = Annotated[
    str | None,
    typer.Option(
        "--gpu-step-memory",
        help="Memory of train-lora and evaluate, e.g. 12G or 11Gi (default: fits the machine).",
    ),
]
ImageRepo = Annotated[
    str | None,
    typer.Option(
        "--image-repo",
        help="Registry path of the llmft images, e.g. us-central1-docker.pkg.dev/PROJECT/llmft "
        "[env LLMFT_IMAGE_REPO].",
    ),
]
