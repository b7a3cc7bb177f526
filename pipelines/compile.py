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
CLOUD_TARGETS = ("vertex", "gke")
ACCELERATORS = ("L4", "T4", "none")

VERTEX_ACCELERATOR = {"L4": "NVIDIA_L4", "T4": "NVIDIA_TESLA_T4"}
GKE_NODE_LABEL = "cloud.google.com/gke-accelerator"
GKE_ACCELERATOR = {"L4": "nvidia-l4", "T4": "nvidia-tesla-t4"}
GPU_RESOURCE = "nvidia.com/gpu"

CACHED_STEPS = ("validate-data",)
RETRIED_STEPS = ("upload", "train-lora", "evaluate", "publish-artifacts")
"""Idempotent steps retried with backoff: transient GCS, hub and spot-VM failures heal."""
MULTI_GPU_STEPS = ("train-lora",)
"""Steps that use every GPU of ``--accelerator-count`` (one process per GPU); evaluate
generates in one process, so it asks for one GPU."""
HUB_STEPS = ("upload",)
"""The only step that talks to the Hugging Face hub, hence the only one given the token."""
DEFAULT_SECRET_KEY = "token"
"""Data key of the Kubernetes Secret when ``--hf-token-secret`` names none."""
PACKAGE_MARK = "# llmft-package:"
"""First line of every compiled YAML: ``# llmft-package: target=gke accelerator=T4 ...``."""

_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_K8S_KEY = re.compile(r"[-._a-zA-Z0-9]+")


@dataclass(frozen=True)
class Placement:
    """Per-target settings applied to the tasks of one compilation.

    Attributes:
        target: vertex, gke or local.
        accelerator: L4, T4 or none (CPU only).
        gpu_count: GPUs of train-lora (evaluate takes one).
        cpu: vCPUs of a GPU step (a request on gke, the machine-choosing limit on vertex).
        memory: Memory of a GPU step (same).
        machine: The machine shape cpu/memory were sized for (empty without GPUs).
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
    machine: str = ""
    retries: int = 2
    backoff_duration: str = "60s"
    backoff_factor: float = 2.0
    backoff_max_duration: str = "1800s"

    def describe(self) -> str:
        """``target=gke accelerator=T4 count=1 machine=n1-standard-4 cpu=3 memory=10Gi``."""
        parts = [f"target={self.target}", f"accelerator={self.accelerator}"]
        if self.accelerator != "none":
            parts += [
                f"count={self.gpu_count}",
                f"machine={self.machine}",
                f"cpu={self.cpu}",
                f"memory={self.memory}",
            ]
        return " ".join(parts)


def placement_for(
    target: str,
    accelerator: str = "L4",
    count: int = 1,
    *,
    machine_type: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
) -> Placement:
    """The placement of a target, accelerator, GPU count and (optional) machine shape.

    Sizes come from ``pipelines.machines.gpu_step_size``: on gke the defaults fit the smallest
    node that carries the GPUs (a bigger request must name the node pool's ``machine_type``);
    on vertex the limits are a real machine of the GPU's family.

    Args:
        target: vertex, gke or local.
        accelerator: L4, T4 or none (case-insensitive).
        count: GPUs for train-lora (1, 2, 4 or 8).
        machine_type: Machine shape of the GPU node pool (gke) or of the step (vertex).
        cpu: CPU of the GPU steps (``--gpu-step-cpu``).
        memory: Memory of the GPU steps (``--gpu-step-memory``).

    Returns:
        The ``Placement``.

    Raises:
        trainer.config.ConfigError: Unknown target, accelerator or machine, a count no machine
            carries, or a request larger than the machine.
    """
    from pipelines.machines import gpu_step_size
    from trainer.config import ConfigError

    acc = {"l4": "L4", "t4": "T4", "none": "none", "": "none"}.get(accelerator.strip().lower())
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}: use {', '.join(TARGETS)}")
    if acc is None:
        raise ConfigError(f"unknown accelerator {accelerator!r}: use L4, T4 or none")
    if target == "local":
        return Placement(target, "none", retries=1, backoff_duration="0s", backoff_factor=1.0)
    if acc == "none":
        if count != 1 or machine_type or cpu or memory:
            raise ConfigError(
                "--accelerator none: --accelerator-count, --machine-type, --gpu-step-cpu and "
                "--gpu-step-memory size GPU steps; give an accelerator (L4 or T4)"
            )
        return Placement(target, "none")
    size = gpu_step_size(target, acc, count, machine_type=machine_type, cpu=cpu, memory=memory)
    return Placement(
        target, acc, gpu_count=count, cpu=size.cpu, memory=size.memory, machine=size.machine.name
    )


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


def _gpu_vertex(p: Placement, task: Any, count: int) -> None:
    task.set_accelerator_type(VERTEX_ACCELERATOR[p.accelerator])
    task.set_accelerator_limit(count)
    task.set_cpu_limit(p.cpu)
    task.set_memory_limit(p.memory)


def _gpu_gke(p: Placement, task: Any, count: int) -> None:
    from kfp import kubernetes

    task.set_accelerator_type(GPU_RESOURCE)
    task.set_accelerator_limit(count)
    task.set_cpu_request(p.cpu)
    task.set_memory_request(p.memory)
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
            _GPU_PLACERS[p.target](p, task, p.gpu_count if step in MULTI_GPU_STEPS else 1)
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
    return build_pipeline(
        make_placer(p, secret),
        cpu_image=imgs.cpu,
        gpu_image=imgs.gpu,
        target=p.target,
        accelerator=p.accelerator,
        accelerator_count=p.gpu_count,
    )


def _set_defaults(spec: dict[str, Any], defaults: dict[str, Any]) -> None:
    params = spec["root"]["inputDefinitions"]["parameters"]
    unknown = sorted(set(defaults) - set(params))
    if unknown:
        from trainer.config import ConfigError

        raise ConfigError(f"unknown pipeline parameter(s): {', '.join(unknown)}")
    for name, value in defaults.items():
        params[name]["defaultValue"] = value


def check_parameter_values(defaults: dict[str, Any]) -> dict[str, Any]:
    """Every pipeline parameter (defaults overlaid with ``defaults``) through the config checks.

    The same checks ``llmft run --local`` applies before a task starts (types, ranges, NaN,
    enums), so a compiled package never carries a value its init-run would refuse.

    Returns:
        The merged values.

    Raises:
        trainer.config.ConfigError: Unknown parameter or an invalid value (the field named).
    """
    from trainer.config import ConfigError
    from trainer.steps import config_dicts

    types = parameter_types()
    unknown = sorted(set(defaults) - set(types))
    if unknown:
        raise ConfigError(f"unknown pipeline parameter(s): {', '.join(unknown)}")
    values = {**parameter_defaults(), **defaults}
    for name, value in defaults.items():
        if isinstance(value, str) and types[name] is not str:
            values[name] = convert(name, value, types[name])
    try:
        config_dicts(values)
    except ValueError as exc:  # ConfigError, or an int given as 1.5
        raise ConfigError(str(exc)) from None
    return values


def check_output_root(target: str, root: str) -> None:
    """A cloud run writes its run folder to Cloud Storage: ``gs://...`` (or the ``/gcs/`` mount).

    Raises:
        trainer.config.ConfigError: ``root`` is a path inside the container.
    """
    from trainer.config import ConfigError

    if not str(root).startswith(("gs://", "/gcs/")):
        raise ConfigError(
            f"output_root {root!r} is not a gs:// URI: a {target} run writes its run folder to "
            "Cloud Storage; pass --bucket BUCKET or --param output_root=gs://BUCKET[/prefix]"
        )


def check_cloud_target(target: str, image_repo: str | None, values: dict[str, Any]) -> str:
    """Refuse a cloud compile that can only fail at run time; return the image repository.

    Raises:
        trainer.config.ConfigError: No image repository, or an ``output_root`` off GCS.
    """
    import os

    from components.images import DEFAULT_REPO
    from trainer.config import ConfigError

    repo = (image_repo or os.environ.get("LLMFT_IMAGE_REPO") or "").strip().rstrip("/")
    if not repo or repo == DEFAULT_REPO:
        raise ConfigError(
            f"no image repository for --target {target}: set LLMFT_IMAGE_REPO or pass "
            "--image-repo REGION-docker.pkg.dev/PROJECT/REPO (where `make images` pushed "
            "llmft-cpu and llmft-gpu)"
        )
    check_output_root(target, str(values.get("output_root", "")))
    return repo


def compile_pipeline(
    target: str,
    accelerator: str,
    output: str,
    *,
    image_tag: str | None = None,
    image_repo: str | None = None,
    param_defaults: dict[str, Any] | None = None,
    hf_token_secret: str | None = None,
    accelerator_count: int = 1,
    machine_type: str | None = None,
    gpu_step_cpu: str | None = None,
    gpu_step_memory: str | None = None,
) -> str:
    """Compile the pipeline for a target into a YAML file.

    For vertex and gke, refuses (``ConfigError``) what could only fail at run time: no image
    repository, an ``output_root`` that is not ``gs://`` (or ``/gcs/``), any parameter value
    the run's own checks would refuse, GPU step sizes no machine of the accelerator offers.
    The file's first line and the pipeline description record the target and placement
    (``package_target`` reads them back; ``llmft submit`` refuses a package of the other
    backend).

    Args:
        target: vertex or gke (local also compiles: no placement, no checks).
        accelerator: L4, T4 or none.
        output: Path of the YAML to write.
        image_tag: Image tag for this compilation (default: ``components.images``).
        image_repo: Image repository (default: ``LLMFT_IMAGE_REPO``; required for cloud).
        param_defaults: New defaults for pipeline parameters (e.g. ``output_root=gs://...``),
            so a run started from the UI needs no typing.
        hf_token_secret: Where the upload task finds a gated model's hub token: a Kubernetes
            Secret ``NAME`` or ``NAME:KEY`` (gke only; key default ``token``) mounted as
            ``HF_TOKEN``, or a Secret Manager name ``projects/P/secrets/S[/versions/V]``
            (vertex and gke) read at run time. Only the name is compiled in.
        accelerator_count: GPUs of train-lora (1, 2, 4, 8); it trains in one process per GPU.
        machine_type: Machine shape of the GPU steps (gke: the node pool's; vertex: the VM's).
        gpu_step_cpu: CPU of train-lora and evaluate (default: fits the machine).
        gpu_step_memory: Memory of train-lora and evaluate (default: fits the machine).

    Returns:
        ``output``.

    Raises:
        trainer.config.ConfigError: Unknown target, accelerator, parameter, a bad value, or a
            bad ``hf_token_secret``.
    """
    import yaml
    from kfp import compiler

    defaults = dict(param_defaults or {})
    placement = placement_for(
        target,
        accelerator,
        accelerator_count,
        machine_type=machine_type,
        cpu=gpu_step_cpu,
        memory=gpu_step_memory,
    )
    if target in CLOUD_TARGETS:
        values = check_parameter_values(defaults)
        image_repo = check_cloud_target(target, image_repo, values)
    elif defaults:
        check_parameter_values(defaults)
    pipe = pipeline_for(
        target,
        accelerator,
        image_tag=image_tag,
        image_repo=image_repo,
        placement=placement,
        hf_token_secret=hf_token_secret,
    )
    compiler.Compiler().compile(pipe, output)
    with open(output, encoding="utf-8") as fh:
        docs = list(yaml.safe_load_all(fh))
    if defaults:
        _set_defaults(docs[0], defaults)
    info = docs[0].setdefault("pipelineInfo", {})
    info["description"] = f"{info.get('description', '')} [llmft {placement.describe()}]".strip()
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(f"{PACKAGE_MARK} {placement.describe()}\n")
        yaml.safe_dump_all(docs, fh, sort_keys=False)
    return output


_DESCRIBED = re.compile(r"\[llmft (target=[^\]]*)\]")


def package_target(path: str) -> str | None:
    """The target (vertex, gke, local) a compiled package was made for, or None if unknown.

    Read from the first line ``# llmft-package: target=...`` or, when an editor dropped the
    comment, from the pipeline description; failing both, from the structure: a second YAML
    document (platform spec) or ``nvidia.com/gpu`` accelerators mean gke, Vertex accelerator
    names (``NVIDIA_L4``) mean vertex.
    """
    import yaml

    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    first = text.split("\n", 1)[0]
    found = first[len(PACKAGE_MARK) :] if first.startswith(PACKAGE_MARK) else None
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if not docs or not isinstance(docs[0], dict):
        return None
    if found is None:
        m = _DESCRIBED.search(str(docs[0].get("pipelineInfo", {}).get("description", "")))
        found = m.group(1) if m else None
    if found is not None:
        fields = dict(kv.partition("=")[::2] for kv in found.split())
        return fields.get("target") or None
    if len(docs) > 1:
        return "gke"
    types = {
        str(e.get("container", {}).get("resources", {}).get("accelerator", {}).get(k, ""))
        for e in docs[0].get("deploymentSpec", {}).get("executors", {}).values()
        for k in ("type", "resourceType")
    } - {""}
    if GPU_RESOURCE in types:
        return "gke"
    if types & set(VERTEX_ACCELERATOR.values()):
        return "vertex"
    return None


def check_package_for_backend(path: str, backend: str) -> None:
    """Refuse to send a package compiled for one backend to the other.

    Raises:
        trainer.config.ConfigError: The package's target is not the backend's.
    """
    from trainer.config import ConfigError

    want = {"vertex": "vertex", "kfp": "gke"}[backend]
    got = package_target(path)
    if got is None or got == want:
        return
    how = {
        "vertex": "its GPU steps ask for Vertex accelerator names (limits[NVIDIA_L4]) that "
        "Kubernetes rejects",
        "gke": "it is a two-document file with Kubernetes node selectors that Vertex refuses",
        "local": "it has no placement at all",
    }.get(got, "")
    raise ConfigError(
        f"{path} was compiled for --target {got}, not for --backend {backend}"
        + (f" ({how})" if how else "")
        + f"; compile it with `llmft compile --target {want}`"
    )


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
