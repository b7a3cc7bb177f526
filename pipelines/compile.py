"""Per-target compilation: where each step runs, how it is retried and what is cached.

One pipeline definition (``pipelines.pipeline``), three placements:

- ``vertex``: accelerator type (``NVIDIA_L4`` / ``NVIDIA_TESLA_T4``) + count + cpu/memory on the
  GPU steps; no kfp-kubernetes settings, so the YAML is the single document that
  ``aiplatform.PipelineJob`` accepts.
- ``gke``: node selector ``cloud.google.com/gke-accelerator`` + a toleration for
  ``nvidia.com/gpu`` (kfp-kubernetes, second YAML document) + the ``nvidia.com/gpu`` limit.
- ``local``: no placement; retries without backoff (``kfp.local`` honours them).

Caching: only validate-data is cached. Its inputs include the dataset sha256 that the uncached
init-run task measures on every run, so changed content at the same URI changes the cache key;
they deliberately exclude anything per run (run folder, job id), which would make every key
new. Invalid data fails validate-data itself (a failed task is never cached); its report and
log are parked under ``<output_root>/experiments/.validate-failed/`` and finalize-run moves
them into the run folder (``trainer.steps.validate_step``).
Every task that writes into the run folder (init, upload, train, evaluate, publish, finalize)
runs uncached: a cache hit would skip writing into the new run's folder. The expensive part of
upload (the base model snapshot) is content-addressed under ``<output_root>/models/`` and reused
across runs anyway.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

TARGETS = ("vertex", "gke", "local")
ACCELERATORS = ("L4", "T4", "none")

VERTEX_ACCELERATOR = {"L4": "NVIDIA_L4", "T4": "NVIDIA_TESLA_T4"}
GKE_NODE_LABEL = "cloud.google.com/gke-accelerator"
GKE_ACCELERATOR = {"L4": "nvidia-l4", "T4": "nvidia-tesla-t4"}
GPU_RESOURCE = "nvidia.com/gpu"

CACHED_STEPS = ("validate-data",)
RETRIED_STEPS = ("upload", "train-lora", "publish-artifacts")


@dataclass(frozen=True)
class Placement:
    """Per-target settings applied to the tasks of one compilation.

    Attributes:
        target: vertex, gke or local.
        accelerator: L4, T4 or none (CPU only).
        gpu_count: GPUs per GPU step.
        cpu: vCPUs for a GPU step (Vertex picks the machine from cpu/memory/accelerator).
        memory: Memory for a GPU step.
        retries: Retries of the retried steps.
        backoff_duration: Wait before the first retry.
        backoff_factor: Multiplier of the wait per retry.
        backoff_max_duration: Upper bound of the retry window.
    """

    target: str
    accelerator: str = "L4"
    gpu_count: int = 1
    cpu: str = "8"
    memory: str = "32G"
    retries: int = 2
    backoff_duration: str = "60s"
    backoff_factor: float = 2.0
    backoff_max_duration: str = "1800s"


def placement_for(target: str, accelerator: str = "L4") -> Placement:
    """The placement of a target and accelerator.

    Args:
        target: vertex, gke or local.
        accelerator: L4, T4 or none (case-insensitive).

    Returns:
        The ``Placement``.

    Raises:
        trainer.config.ConfigError: Unknown target or accelerator.
    """
    from trainer.config import ConfigError

    acc = {"l4": "L4", "t4": "T4", "none": "none", "": "none"}.get(accelerator.strip().lower())
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}: use {', '.join(TARGETS)}")
    if acc is None:
        raise ConfigError(f"unknown accelerator {accelerator!r}: use L4, T4 or none")
    if target == "local":
        return Placement(target, "none", retries=1, backoff_duration="0s", backoff_factor=1.0)
    # n1-standard-8 (the T4 host) has 30 GB; g2-standard-8 (L4) has 32 GB.
    memory = "30G" if acc == "T4" else "32G"
    return Placement(target, acc, memory=memory)


def _gpu_vertex(p: Placement, task: Any) -> None:
    task.set_accelerator_type(VERTEX_ACCELERATOR[p.accelerator])
    task.set_accelerator_limit(p.gpu_count)
    task.set_cpu_limit(p.cpu)
    task.set_memory_limit(p.memory)


def _gpu_gke(p: Placement, task: Any) -> None:
    from kfp import kubernetes

    task.set_accelerator_type(GPU_RESOURCE)
    task.set_accelerator_limit(p.gpu_count)
    task.set_cpu_request(str(max(1, int(p.cpu) // 2)))
    task.set_memory_request("16G")
    kubernetes.add_node_selector(task, GKE_NODE_LABEL, GKE_ACCELERATOR[p.accelerator])
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")


_GPU_PLACERS = {"vertex": _gpu_vertex, "gke": _gpu_gke}


def make_placer(p: Placement) -> Any:
    """The ``place(step, task)`` hook ``pipelines.pipeline.build_pipeline`` calls per task."""
    from pipelines.pipeline import GPU_STEPS

    def place(step: str, task: Any) -> None:
        task.set_caching_options(step in CACHED_STEPS)
        if step in RETRIED_STEPS and p.retries > 0:
            task.set_retry(
                num_retries=p.retries,
                backoff_duration=p.backoff_duration,
                backoff_factor=p.backoff_factor,
                backoff_max_duration=p.backoff_max_duration,
            )
        if step in GPU_STEPS and p.accelerator != "none" and p.target in _GPU_PLACERS:
            _GPU_PLACERS[p.target](p, task)

    return place


def pipeline_for(
    target: str,
    accelerator: str = "L4",
    *,
    image_tag: str | None = None,
    image_repo: str | None = None,
    placement: Placement | None = None,
) -> Any:
    """Build the pipeline placed for ``target`` (not yet compiled)."""
    from components.images import images
    from pipelines.pipeline import build_pipeline

    p = placement or placement_for(target, accelerator)
    imgs = images(tag=image_tag, repo=image_repo)
    return build_pipeline(make_placer(p), cpu_image=imgs.cpu, gpu_image=imgs.gpu)


def _set_defaults(spec: dict[str, Any], defaults: dict[str, Any]) -> None:
    params = spec["root"]["inputDefinitions"]["parameters"]
    unknown = sorted(set(defaults) - set(params))
    if unknown:
        from trainer.config import ConfigError

        raise ConfigError(f"unknown pipeline parameter(s): {', '.join(unknown)}")
    for name, value in defaults.items():
        params[name]["defaultValue"] = value


def compile_pipeline(
    target: str,
    accelerator: str,
    output: str,
    *,
    image_tag: str | None = None,
    image_repo: str | None = None,
    param_defaults: dict[str, Any] | None = None,
) -> str:
    """Compile the pipeline for a target into a YAML file.

    Args:
        target: vertex or gke (local also compiles: no placement).
        accelerator: L4, T4 or none.
        output: Path of the YAML to write.
        image_tag: Image tag for this compilation (default: ``components.images``).
        image_repo: Image repository (default: ``components.images``).
        param_defaults: New defaults for pipeline parameters (e.g. ``output_root=gs://...``),
            so a run started from the UI needs no typing.

    Returns:
        ``output``.
    """
    import yaml
    from kfp import compiler

    pipe = pipeline_for(target, accelerator, image_tag=image_tag, image_repo=image_repo)
    compiler.Compiler().compile(pipe, output)
    if param_defaults:
        with open(output, encoding="utf-8") as fh:
            docs = list(yaml.safe_load_all(fh))
        _set_defaults(docs[0], param_defaults)
        with open(output, "w", encoding="utf-8") as fh:
            yaml.safe_dump_all(docs, fh, sort_keys=False)
    return output


def coerce_defaults(pairs: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into typed pipeline parameter defaults.

    Args:
        pairs: ``name=value`` items; the value is converted to the parameter's type.

    Returns:
        ``{name: value}``.

    Raises:
        trainer.config.ConfigError: Not ``key=value``, unknown name or a bad value.
    """
    from trainer.config import ConfigError

    types = parameter_types()
    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {item!r}")
        if key not in types:
            raise ConfigError(f"unknown pipeline parameter {key!r}")
        out[key] = convert(key, raw, types[key])
    return out


def convert(name: str, raw: str, typ: type) -> Any:
    """Convert a command-line string to a parameter's type (bool: true/false/1/0/yes/no)."""
    from trainer.config import ConfigError

    try:
        if typ is bool:
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return low in ("true", "1", "yes")
        return typ(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected {typ.__name__}, got {raw!r}") from None


@functools.cache
def parameter_types() -> dict[str, type]:
    """``{parameter name: python type}`` of the pipeline (from its signature)."""
    import inspect

    from pipelines.pipeline import build_pipeline

    func = build_pipeline().pipeline_func
    hints = {"str": str, "int": int, "float": float, "bool": bool}
    return {
        n: hints.get(p.annotation, p.annotation) if isinstance(p.annotation, str) else p.annotation
        for n, p in inspect.signature(func).parameters.items()
    }


@functools.cache
def parameter_defaults() -> dict[str, Any]:
    """``{parameter name: default}`` of the pipeline."""
    import inspect

    from pipelines.pipeline import build_pipeline

    func = build_pipeline().pipeline_func
    return {n: p.default for n, p in inspect.signature(func).parameters.items()}
