"""The Python API for notebooks: compile, run locally, submit, schedule, and check a run.

Every function mirrors a CLI command and takes the same settings: keyword arguments win over
the environment and ``.env`` (``PROJECT_ID``, ``REGION``, ``BUCKET_NAME``, ``LOCAL_DATA_PATH``,
``MODEL_NAME``...; see ``.env.example``).

    from pipelines import api
    path = api.compile("vertex", accelerator="L4")
    result = api.run_local(max_steps=20)
    run = api.submit("vertex", project="my-project", bucket="my-bucket")
    api.status(run.run_id, backend="vertex")
"""

from __future__ import annotations

from typing import Any

from pipelines.schedule import ScheduleInfo
from pipelines.settings import ENV_FILE, Settings, load_settings
from pipelines.submit import RunStatus, SubmitOptions, SubmittedRun

__all__ = [
    "RunStatus",
    "ScheduleInfo",
    "Settings",
    "SubmittedRun",
    "compile",
    "run_local",
    "schedule",
    "settings",
    "status",
    "submit",
]


def settings(env_file: str | None = ENV_FILE, **overrides: Any) -> Settings:
    """The effective settings: ``overrides`` > environment > ``env_file`` > defaults.

    Args:
        env_file: ``.env`` file to read (None: none).
        **overrides: Settings fields, e.g. ``project_id="p"``, ``bucket_name="b"``.
    """
    return load_settings(env_file, **overrides)


def compile(
    target: str = "vertex",
    accelerator: str = "L4",
    output: str | None = None,
    *,
    params: dict[str, Any] | None = None,
    hf_token_secret: str | None = None,
    accelerator_count: int = 1,
    machine_type: str | None = None,
    gpu_step_cpu: str | None = None,
    gpu_step_memory: str | None = None,
    **kwargs: Any,
) -> str:
    """Compile the pipeline to YAML for a target.

    Args:
        target: ``vertex`` (single-document YAML for Vertex AI) or ``gke`` (KFP on GKE, with the
            node selector and toleration in a platform spec).
        accelerator: ``L4``, ``T4`` or ``none``.
        output: YAML path (default ``llmft-<target>.yaml`` in the current directory).
        params: New defaults of pipeline parameters, e.g. ``{"max_steps": 500}``.
        hf_token_secret: Where the upload step finds a gated model's hub token: a Kubernetes
            Secret ``NAME[:KEY]`` (gke) or ``projects/P/secrets/S`` (Secret Manager).
        accelerator_count: GPUs of train-lora (1, 2, 4, 8).
        machine_type: Machine of the GPU steps (gke: the node pool's shape; vertex: the VM).
        gpu_step_cpu: CPU of the GPU steps (default: fits the machine).
        gpu_step_memory: Memory of the GPU steps (default: fits the machine).
        **kwargs: Settings: ``bucket`` (run folders under ``gs://BUCKET``, the default of
            ``output_root``), ``image_repo``, ``image_tag``, ``env_file``; default from the
            environment and ``.env`` (``BUCKET_NAME``, ``LLMFT_IMAGE_REPO``, ``LLMFT_IMAGE_TAG``).

    Returns:
        The path written.

    Raises:
        trainer.config.ConfigError: What could only fail at run time (no image repository,
            output_root off GCS, a bad parameter or GPU step size).
    """
    from pathlib import Path

    from pipelines.compile import compile_pipeline

    cfg, rest = _split(dict(kwargs))
    if rest:
        raise TypeError(f"unknown arguments: {', '.join(sorted(rest))}")
    defaults = dict(params or {})
    if cfg.bucket_uri:
        defaults.setdefault("output_root", cfg.bucket_uri)
    out = Path(output or f"llmft-{target}.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    return compile_pipeline(
        target,
        accelerator,
        str(out),
        image_tag=cfg.image_tag,
        image_repo=cfg.image_repo,
        param_defaults=defaults or None,
        hf_token_secret=hf_token_secret,
        accelerator_count=accelerator_count,
        machine_type=machine_type,
        gpu_step_cpu=gpu_step_cpu,
        gpu_step_memory=gpu_step_memory,
    )


def run_local(**params: Any) -> Any:
    """Run the whole DAG in this Python through ``kfp.local`` (no cloud, no Docker).

    Args:
        **params: Pipeline parameter overrides, e.g. ``max_steps=20``, ``dataset_uri=...``,
            ``output_root="runs"``.

    Returns:
        ``pipelines.local.LocalRunResult`` (run folder, status, metrics, step times).
    """
    from pipelines.local import run_local as _run_local

    return _run_local(**params)


def _split(kwargs: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    """Separate Settings fields (and their short aliases) from the rest."""
    aliases = {
        "project": "project_id",
        "bucket": "bucket_name",
        "host": "kfp_host",
        "namespace": "kfp_namespace",
        "api_endpoint": "vertex_api_endpoint",
    }
    env_file = kwargs.pop("env_file", ENV_FILE)
    fields = set(Settings.__dataclass_fields__)
    over = {}
    for key in list(kwargs):
        name = aliases.get(key, key)
        if name in fields:
            over[name] = kwargs.pop(key)
    return load_settings(env_file, **over), kwargs


def submit(
    backend: str = "vertex",
    *,
    data: str | None = None,
    model: str | None = None,
    accelerator: str | None = None,
    params: dict[str, Any] | None = None,
    wait: bool = False,
    poll_interval: float = 30.0,
    credentials: Any = None,
    **kwargs: Any,
) -> SubmittedRun | RunStatus:
    """Compile, stage the dataset and start a run on Vertex AI or Kubeflow.

    Args:
        backend: ``vertex`` or ``kfp``.
        data: Local dataset (staged to ``gs://BUCKET/staging/datasets/<sha256>.jsonl``) or gs:// URI.
        model: Base model (default ``MODEL_NAME`` or the pipeline's default).
        accelerator: ``L4``, ``T4`` or ``none`` (default ``ACCELERATOR`` or L4).
        params: Any other pipeline parameters, e.g. ``{"max_steps": 500}``.
        wait: Follow the run to its end and return its final ``RunStatus``.
        poll_interval: Seconds between status polls when waiting.
        credentials: Explicit Google credentials (default: Application Default Credentials).
        **kwargs: Settings (``project``, ``region``, ``bucket``, ``host``, ``namespace``,
            ``api_endpoint``, ``service_account``...) and ``SubmitOptions`` fields
            (``labels``, ``enable_caching``, ``experiment``, ``run_name``, ``package``,
            ``hf_token_secret``, ``accelerator_count``, ``machine_type``, ``gpu_step_cpu``,
            ``gpu_step_memory``).

    Returns:
        The created run, or its final status when ``wait``.
    """
    from pipelines import submit as sub

    cfg, rest = _split(dict(kwargs))
    opts = SubmitOptions(
        backend=backend,
        data=data,
        model=model,
        accelerator=accelerator,
        params=params or {},
        **rest,
    )
    run = sub.submit_pipeline(cfg, opts, credentials=credentials)
    if not wait:
        return run
    return sub.wait_for(
        lambda: sub.run_status(cfg, run.run_id, backend, credentials=credentials),
        poll_interval=poll_interval,
    )


def schedule(
    backend: str = "vertex",
    cron: str = "0 3 * * *",
    *,
    timezone: str | None = None,
    name: str = "llmft-scheduled",
    max_concurrency: int = 1,
    skip_if_unchanged: bool = False,
    data: str | None = None,
    model: str | None = None,
    accelerator: str | None = None,
    params: dict[str, Any] | None = None,
    credentials: Any = None,
    **kwargs: Any,
) -> ScheduleInfo:
    """Create a recurring run (Vertex schedule or KFP recurring run) from standard 5-field cron.

    Args:
        backend: ``vertex`` or ``kfp``.
        cron: 5-field cron, e.g. ``"0 3 * * 1-5"`` (03:00 on weekdays).
        timezone: IANA zone for Vertex (``Europe/Paris``); KFP schedules run in UTC.
        name: Schedule display name.
        max_concurrency: Runs allowed at once (default 1).
        skip_if_unchanged: Runs whose dataset sha256 equals the last successful run's end
            early as SKIPPED.
        data: Dataset (a gs:// object that is refreshed upstream, or a local file staged once).
        model: Base model.
        accelerator: ``L4``, ``T4`` or ``none``.
        params: Other pipeline parameters.
        credentials: Explicit Google credentials for Vertex.
        **kwargs: Settings and ``SubmitOptions`` fields, as for ``submit``.

    Returns:
        The created schedule.
    """
    from pipelines.schedule import schedule_pipeline

    cfg, rest = _split(dict(kwargs))
    opts = SubmitOptions(
        backend=backend,
        data=data,
        model=model,
        accelerator=accelerator,
        params=params or {},
        **rest,
    )
    return schedule_pipeline(
        cfg,
        opts,
        cron=cron,
        timezone=timezone,
        name=name,
        max_concurrency=max_concurrency,
        skip_if_unchanged=skip_if_unchanged,
        credentials=credentials,
    )


def status(
    run: str, backend: str | None = None, *, credentials: Any = None, **kwargs: Any
) -> RunStatus:
    """State of a run: a Vertex job / KFP run ID (with ``backend``) or a run folder path.

    Args:
        run: Run ID, Vertex resource name, or a run folder (local path or gs:// URI).
        backend: ``vertex`` or ``kfp`` for run IDs; None for a run folder.
        credentials: Explicit Google credentials for Vertex.
        **kwargs: Settings (``project``, ``region``, ``host``...).
    """
    from pipelines.submit import run_status

    cfg, rest = _split(dict(kwargs))
    if rest:
        raise TypeError(f"unexpected arguments: {', '.join(sorted(rest))}")
    return run_status(cfg, run, backend, credentials=credentials)
