"""Per-target compilation: where each step runs, how it is retried and what is cached.

One pipeline definition (``pipelines.pipeline``), three placements:

- ``vertex``: accelerator type (``NVIDIA_L4`` / ``NVIDIA_TESLA_T4``) + count + cpu/memory on the
  GPU steps; no kfp-kubernetes settings, so the YAML is the single document that
  ``aiplatform.PipelineJob`` accepts.
- ``gke``: node selector ``cloud.google.com/gke-accelerator`` + a toleration for
  ``nvidia.com/gpu`` (kfp-kubernetes, second YAML document) + the ``nvidia.com/gpu`` limit.
- ``local``: no placement; retries without backoff (``kfp.local`` honours them).

Hub token (``--hf-token-secret``): only the upload task talks to the Hugging Face hub, so only
it gets the token, and never through a pipeline parameter (parameters are stored in the spec
and shown in the UI). On gke a Kubernetes Secret ``NAME[:KEY]`` becomes ``HF_TOKEN``
(kfp-kubernetes ``use_secret_as_env``); Vertex has no Kubernetes Secrets, so there, and on gke
when preferred, a Secret Manager name ``projects/P/secrets/S`` goes into ``HF_TOKEN_SECRET`` and
the step reads the value at run time as the run's service account (``trainer.secrets``).

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
import re
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
HUB_STEPS = ("upload",)
"""The only step that talks to the Hugging Face hub, hence the only one given the token."""
DEFAULT_SECRET_KEY = "token"
"""Data key of the Kubernetes Secret when ``--hf-token-secret`` names none."""

_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_K8S_KEY = re.compile(r"[-._a-zA-Z0-9]+")


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


@dataclass(frozen=True)
class HubTokenSecret:
    """Where the upload task finds the hub token (a name, never the value).

    Attributes:
        kind: ``kubernetes`` (a Secret's key as ``HF_TOKEN``, gke only) or ``secret-manager``
            (a version name in ``HF_TOKEN_SECRET``, read by the step at run time).
        name: The Kubernetes Secret, or the Secret Manager version name.
        key: The Kubernetes Secret's data key (empty for Secret Manager).
    """

    kind: str
    name: str
    key: str = ""


def parse_hub_token_secret(spec: str, target: str) -> HubTokenSecret:
    """Parse ``--hf-token-secret`` for a target.

    Args:
        spec: ``NAME`` or ``NAME:KEY`` (a Kubernetes Secret, gke only; key default ``token``),
            or ``projects/P/secrets/S[/versions/V]`` (Secret Manager, any target).
        target: vertex, gke or local.

    Returns:
        The ``HubTokenSecret``.

    Raises:
        trainer.config.ConfigError: Empty, malformed, or a Kubernetes Secret off gke.
    """
    from trainer.config import ConfigError
    from trainer.secrets import secret_version_name

    text = spec.strip()
    if not text:
        raise ConfigError("--hf-token-secret is empty: give a secret name")
    if text.startswith("projects/"):
        try:
            return HubTokenSecret("secret-manager", secret_version_name(text))
        except ValueError as exc:
            raise ConfigError(f"--hf-token-secret: {exc}") from None
    if target != "gke":
        raise ConfigError(
            f"--hf-token-secret {text!r}: {target} has no Kubernetes Secrets; give the Secret "
            "Manager name projects/PROJECT/secrets/NAME"
        )
    name, sep, key = text.partition(":")
    key = key if sep else DEFAULT_SECRET_KEY
    if len(name) > 253 or not _K8S_NAME.fullmatch(name) or not _K8S_KEY.fullmatch(key):
        raise ConfigError(
            f"--hf-token-secret {text!r}: expected a Kubernetes Secret NAME or NAME:KEY "
            "(NAME: lower-case letters, digits, '-' and '.') or projects/PROJECT/secrets/NAME"
        )
    return HubTokenSecret("kubernetes", name, key)


def _use_hub_token(secret: HubTokenSecret, task: Any) -> None:
    from trainer.secrets import SECRET_ENV, TOKEN_ENV

    if secret.kind == "kubernetes":
        from kfp import kubernetes

        kubernetes.use_secret_as_env(
            task, secret_name=secret.name, secret_key_to_env={secret.key: TOKEN_ENV}
        )
    else:
        task.set_env_variable(SECRET_ENV, secret.name)


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


def make_placer(p: Placement, hub_secret: HubTokenSecret | None = None) -> Any:
    """The ``place(step, task)`` hook ``pipelines.pipeline.build_pipeline`` calls per task.

    Args:
        p: The target's placement.
        hub_secret: Where the hub step finds the hub token (None: nowhere).
    """
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
        if step in HUB_STEPS and hub_secret is not None:
            _use_hub_token(hub_secret, task)

    return place


def pipeline_for(
    target: str,
    accelerator: str = "L4",
    *,
    image_tag: str | None = None,
    image_repo: str | None = None,
    placement: Placement | None = None,
    hf_token_secret: str | None = None,
) -> Any:
    """Build the pipeline placed for ``target`` (not yet compiled).

    ``hf_token_secret`` is as for ``compile_pipeline``.
    """
    from components.images import images
    from pipelines.pipeline import build_pipeline

    p = placement or placement_for(target, accelerator)
    secret = None if hf_token_secret is None else parse_hub_token_secret(hf_token_secret, target)
    imgs = images(tag=image_tag, repo=image_repo)
    return build_pipeline(make_placer(p, secret), cpu_image=imgs.cpu, gpu_image=imgs.gpu)


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
    hf_token_secret: str | None = None,
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
        hf_token_secret: Where the upload task finds a gated model's hub token: a Kubernetes
            Secret ``NAME`` or ``NAME:KEY`` (gke only; key default ``token``) mounted as
            ``HF_TOKEN``, or a Secret Manager name ``projects/P/secrets/S[/versions/V]``
            (vertex and gke) read at run time. Only the name is compiled in.

    Returns:
        ``output``.

    Raises:
        trainer.config.ConfigError: Unknown target, accelerator, parameter or a bad
            ``hf_token_secret``.
    """
    import yaml
    from kfp import compiler

    pipe = pipeline_for(
        target,
        accelerator,
        image_tag=image_tag,
        image_repo=image_repo,
        hf_token_secret=hf_token_secret,
    )
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
