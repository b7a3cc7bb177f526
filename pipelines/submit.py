"""Submit the compiled pipeline to Vertex AI Pipelines or to Kubeflow Pipelines, and follow runs.

The flow of ``llmft submit`` (and of ``pipelines.api.submit``):

1. compile for the backend's target (vertex -> ``vertex``, kfp -> ``gke``) unless a package is given;
2. stage a local dataset to ``gs://BUCKET/staging/datasets/<sha256>.jsonl`` (content-addressed,
   skipped when that object already exists: the original design's data staging);
3. submit with ``dataset_uri`` pointing at the staged object and ``output_root`` at the bucket.

``google.cloud.aiplatform`` and ``kfp`` are imported inside functions: they cost seconds.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ConfigError

BACKENDS = ("vertex", "kfp")
TARGET_FOR_BACKEND = {"vertex": "vertex", "kfp": "gke"}

# Names of the pipeline parameters this module fills in (defined by pipelines/pipeline.py).
DATASET_PARAM = "dataset_uri"
MODEL_PARAM = "model"
OUTPUT_ROOT_PARAM = "output_root"
SKIP_PARAM = "skip_if_unchanged"

STAGING_PREFIX = "staging/datasets"
PIPELINE_ROOT_DIR = "pipeline_root"
DEFAULT_LABELS = {"app": "llmft"}

VERTEX_SUCCEEDED = "PIPELINE_STATE_SUCCEEDED"
VERTEX_TERMINAL = {
    "PIPELINE_STATE_SUCCEEDED",
    "PIPELINE_STATE_FAILED",
    "PIPELINE_STATE_CANCELLED",
}
KFP_SUCCEEDED = "SUCCEEDED"
KFP_TERMINAL = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED", "ERROR"}

_LABEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")


# --------------------------------------------------------------------------- connections


@dataclass(frozen=True)
class VertexTarget:
    """Where Vertex AI Pipelines runs are created.

    Attributes:
        project: Google Cloud project ID.
        region: Vertex AI region, e.g. ``us-central1``.
        api_endpoint: Optional endpoint for regional or private (PSC) endpoints. A URL with a
            scheme is spoken to over REST; ``http://`` URLs (local stand-ins) get anonymous
            credentials so no OAuth token ever travels over plain HTTP.
        credentials: Explicit credentials; default: Application Default Credentials.
    """

    project: str
    region: str
    api_endpoint: str | None = None
    credentials: Any = None

    def init(self) -> None:
        """Configure ``aiplatform`` for this target (its settings are process-global)."""
        from google.cloud import aiplatform

        kwargs: dict[str, Any] = {"project": self.project, "location": self.region}
        creds = self.credentials
        if self.api_endpoint:
            kwargs["api_endpoint"] = self.api_endpoint
            if "://" in self.api_endpoint:
                kwargs["api_transport"] = "rest"
            if creds is None and self.api_endpoint.startswith("http://"):
                from google.auth.credentials import AnonymousCredentials

                creds = AnonymousCredentials()
        if creds is not None:
            kwargs["credentials"] = creds
        aiplatform.init(**kwargs)

    def job_name(self, run_id: str) -> str:
        """Full resource name of a pipeline job given its ID (or the name itself)."""
        if run_id.startswith("projects/"):
            return run_id
        return f"projects/{self.project}/locations/{self.region}/pipelineJobs/{run_id}"

    def console_url(self, run_id: str) -> str:
        """Cloud console page of a pipeline run."""
        short = run_id.rsplit("/", 1)[-1]
        return (
            f"https://console.cloud.google.com/vertex-ai/locations/{self.region}"
            f"/pipelines/runs/{short}?project={self.project}"
        )


@dataclass(frozen=True)
class KfpTarget:
    """A Kubeflow Pipelines API server (e.g. ``kubectl port-forward`` of ``ml-pipeline-ui``).

    Attributes:
        host: API URL, e.g. ``http://localhost:8080``.
        namespace: Profile namespace of a multi-user deployment (None: single-user).
        experiment: KFP experiment name the runs are grouped under.
    """

    host: str
    namespace: str | None = None
    experiment: str = "llmft"

    def client(self) -> Any:
        """A ``kfp.Client`` for this server."""
        import warnings

        import kfp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if self.namespace:
                return kfp.Client(host=self.host, namespace=self.namespace)
            return kfp.Client(host=self.host)

    def run_url(self, run_id: str) -> str:
        """KFP UI page of a run."""
        return f"{self.host.rstrip('/')}/#/runs/details/{run_id}"


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class PipelineParam:
    """One input parameter of a compiled pipeline."""

    name: str
    type: str  # STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST, STRUCT
    default: Any = None
    description: str = ""


def load_pipeline_spec(package_path: str) -> dict[str, Any]:
    """The pipeline spec (first YAML document) of a compiled package."""
    import yaml

    with open(package_path, encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    if not docs or "root" not in docs[0]:
        raise ConfigError(f"{package_path}: not a compiled KFP pipeline (no 'root')")
    return docs[0]


def pipeline_parameters(package_path: str) -> dict[str, PipelineParam]:
    """``{name: PipelineParam}`` for the root inputs of a compiled pipeline."""
    spec = load_pipeline_spec(package_path)
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {
        name: PipelineParam(
            name=name,
            type=p.get("parameterType", "STRING"),
            default=p.get("defaultValue"),
            description=p.get("description", ""),
        )
        for name, p in params.items()
    }


def parse_key_values(pairs: Sequence[str], what: str = "--param") -> dict[str, str]:
    """Split ``key=value`` strings (the value may contain ``=``).

    Raises:
        ConfigError: On an item without ``=`` or with an empty key.
    """
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r}: expected key=value")
        out[key.strip()] = value
    return out


def _coerce(param: PipelineParam, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if param.type == "NUMBER_INTEGER":
            return int(raw)
        if param.type == "NUMBER_DOUBLE":
            return float(raw)
        if param.type == "BOOLEAN":
            low = raw.strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(raw)
        if param.type in ("LIST", "STRUCT"):
            return json.loads(raw)
    except ValueError:
        kind = param.type.lower().replace("number_", "")
        raise ConfigError(f"pipeline parameter {param.name}={raw!r}: expected {kind}") from None
    return raw


def check_parameters(
    values: Mapping[str, Any], params: Mapping[str, PipelineParam]
) -> dict[str, Any]:
    """Validate keys against the compiled pipeline and convert string values to their types.

    Args:
        values: Parameter values, strings (from ``--param``) or already typed.
        params: The pipeline's parameters (``pipeline_parameters``).

    Returns:
        The typed values.

    Raises:
        ConfigError: One line naming the unknown key or the badly typed value.
    """
    out: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in params:
            known = ", ".join(sorted(params))
            raise ConfigError(f"unknown pipeline parameter {key!r} (known: {known})")
        out[key] = _coerce(params[key], raw)
    return out


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Vertex label rules: lowercase keys/values, letters, digits, ``_`` and ``-``, <= 63 chars."""
    for k, v in labels.items():
        if not _LABEL_RE.match(k) or not _LABEL_VALUE_RE.match(v):
            raise ConfigError(
                f"label {k}={v}: keys and values must be lowercase letters, digits, _ or -"
                " (keys start with a letter, at most 63 characters)"
            )
    return dict(labels)


# --------------------------------------------------------------------------- staging


@dataclass(frozen=True)
class StagedData:
    """Where the pipeline will read the dataset from.

    Attributes:
        uri: The ``gs://`` URI passed as ``dataset_uri``.
        sha256: Content hash of the staged bytes (None for a gs:// input used in place).
        uploaded: Whether this call uploaded the object (False when it already existed).
    """

    uri: str
    sha256: str | None
    uploaded: bool


def staged_uri(bucket_uri: str, sha256: str) -> str:
    """Content-addressed staging location of a dataset with this hash."""
    from trainer import storage

    return storage.join(bucket_uri, STAGING_PREFIX, f"{sha256}.jsonl")


def stage_dataset(data: str, bucket_uri: str) -> StagedData:
    """Upload a local dataset to ``<bucket>/staging/datasets/<sha256>.jsonl`` unless already there.

    An Alpaca ``.json`` array is converted to JSONL first, so the staged object is always JSONL.
    A ``gs://`` input is used in place (nothing is copied).

    Args:
        data: Local path (plain, ``file://`` or ``/gcs/``) or ``gs://`` URI.
        bucket_uri: ``gs://bucket`` (optionally with a prefix).

    Returns:
        The URI to pass as ``dataset_uri``, the hash and whether bytes were uploaded.

    Raises:
        FileNotFoundError: The local file does not exist.
    """
    from trainer import storage

    if storage.is_gcs(data):
        return StagedData(uri=data, sha256=None, uploaded=False)
    local = storage.local_path(data) or data
    if not Path(local).is_file():
        raise FileNotFoundError(f"dataset not found: {data}")
    with tempfile.TemporaryDirectory(prefix="llmft-stage-") as tmp:
        if local.endswith(".json"):
            from trainer.validate import convert_json_to_jsonl

            converted = str(Path(tmp) / "data.jsonl")
            convert_json_to_jsonl(local, converted)
            local = converted
        digest = storage.sha256(local)
        dest = staged_uri(bucket_uri, digest)
        if storage.exists(dest):
            return StagedData(uri=dest, sha256=digest, uploaded=False)
        storage.upload_file(local, dest)
    return StagedData(uri=dest, sha256=digest, uploaded=True)


# --------------------------------------------------------------------------- submit


@dataclass
class SubmittedRun:
    """A run created on a backend.

    Attributes:
        backend: ``vertex`` or ``kfp``.
        run_id: Short run ID (Vertex pipeline job ID, KFP run UUID).
        name: Full resource name (Vertex) or the run ID (KFP).
        url: Console / KFP UI link.
        parameters: The parameter values sent.
        staged: The staged dataset, when this call staged one.
    """

    backend: str
    run_id: str
    name: str
    url: str
    parameters: dict[str, Any] = field(default_factory=dict)
    staged: StagedData | None = None


def vertex_job(
    package_path: str,
    target: VertexTarget,
    *,
    display_name: str,
    pipeline_root: str,
    parameter_values: Mapping[str, Any],
    enable_caching: bool | None = None,
    labels: Mapping[str, str] | None = None,
    job_id: str | None = None,
) -> Any:
    """The ``aiplatform.PipelineJob`` that a submit or a schedule starts from (fail-slow).

    Args:
        package_path: Single-document compiled YAML (target ``vertex``).
        target: Project, region and endpoint (initialises aiplatform).
        display_name: Job display name.
        pipeline_root: ``gs://`` directory for KFP's intermediate artifacts.
        parameter_values: Typed pipeline parameters.
        enable_caching: Override every task's compile-time caching (None: keep them).
        labels: Resource labels (merged over ``app=llmft``).
        job_id: Job ID (default: generated by aiplatform).

    Returns:
        The job, not yet submitted.
    """
    from google.cloud import aiplatform

    target.init()
    return aiplatform.PipelineJob(
        display_name=display_name,
        template_path=package_path,
        job_id=job_id,
        pipeline_root=pipeline_root,
        parameter_values=dict(parameter_values),
        enable_caching=enable_caching,
        labels=check_labels({**DEFAULT_LABELS, **(labels or {})}),
        # Not "fast": Vertex documents fail-fast only as "stop scheduling new tasks after a task
        # fails", which may include the exit task; a run without status.txt is worse than a
        # slower failure (the DAG is a chain, so "slow" runs nothing more anyway).
        failure_policy="slow",
        project=target.project,
        location=target.region,
    )


def submit_vertex(
    package_path: str,
    target: VertexTarget,
    *,
    pipeline_root: str,
    parameter_values: Mapping[str, Any],
    service_account: str | None = None,
    labels: Mapping[str, str] | None = None,
    enable_caching: bool | None = None,
    experiment: str | None = None,
    display_name: str | None = None,
    job_id: str | None = None,
) -> SubmittedRun:
    """Create a Vertex AI pipeline job (fail-slow, so the exit task runs) and return.

    Args:
        package_path: Single-document compiled YAML (target ``vertex``).
        target: Project, region and endpoint.
        pipeline_root: ``gs://`` directory for KFP's intermediate artifacts.
        parameter_values: Typed pipeline parameters.
        service_account: Service account e-mail the run executes as.
        labels: Resource labels (merged over ``app=llmft``).
        enable_caching: Override every task's compile-time caching (None: keep them).
        experiment: Vertex AI Experiment to associate the run with.
        display_name: Job display name (default: the pipeline name).
        job_id: Job ID (default: generated by aiplatform from the name and time).

    Returns:
        The created run.
    """
    job = vertex_job(
        package_path,
        target,
        display_name=display_name or load_pipeline_spec(package_path)["pipelineInfo"]["name"],
        pipeline_root=pipeline_root,
        parameter_values=parameter_values,
        enable_caching=enable_caching,
        labels=labels,
        job_id=job_id,
    )
    job.submit(service_account=service_account, experiment=experiment)
    name = job.resource_name
    run_id = name.rsplit("/", 1)[-1]
    return SubmittedRun(
        backend="vertex",
        run_id=run_id,
        name=name,
        url=target.console_url(run_id),
        parameters=dict(parameter_values),
    )


def submit_kfp(
    package_path: str,
    target: KfpTarget,
    *,
    parameter_values: Mapping[str, Any],
    pipeline_root: str | None = None,
    service_account: str | None = None,
    enable_caching: bool | None = None,
    run_name: str | None = None,
) -> SubmittedRun:
    """Create a run on a Kubeflow Pipelines server and return without waiting.

    Args:
        package_path: Compiled YAML (target ``gke``: pipeline spec + platform spec).
        target: Host, namespace and experiment.
        parameter_values: Typed pipeline parameters.
        pipeline_root: Where KFP keeps intermediate artifacts (None: the server's default).
        service_account: Kubernetes service account the run's pods use (Workload Identity).
        enable_caching: Override every task's compile-time caching (None: keep them).
        run_name: Display name (default: the pipeline name and time).

    Returns:
        The created run.
    """
    import io

    client = target.client()
    name = (
        run_name
        or f"{load_pipeline_spec(package_path)['pipelineInfo']['name']} {time.strftime('%Y-%m-%d %H-%M-%S')}"
    )
    # kfp prints its own "Experiment details"/"Run details" lines; we print one link ourselves.
    with contextlib.redirect_stdout(io.StringIO()):
        result = client.create_run_from_pipeline_package(
            package_path,
            arguments=dict(parameter_values),
            run_name=name,
            experiment_name=target.experiment,
            namespace=target.namespace,
            pipeline_root=pipeline_root,
            enable_caching=enable_caching,
            service_account=service_account,
        )
    return SubmittedRun(
        backend="kfp",
        run_id=result.run_id,
        name=result.run_id,
        url=target.run_url(result.run_id),
        parameters=dict(parameter_values),
    )


# --------------------------------------------------------------------------- status / wait


@dataclass
class RunStatus:
    """State of a run on a backend or of a local run folder.

    Attributes:
        backend: ``vertex``, ``kfp`` or ``local``.
        run_id: The run ID or the run folder path.
        state: Backend state (``PIPELINE_STATE_*`` on Vertex, ``SUCCEEDED``... on KFP,
            the first word of status.txt for a run folder, ``RUNNING`` while it is missing).
        done: Whether the state is terminal.
        succeeded: Whether it ended successfully.
        url: Link to the run, when it has one.
        details: Extra facts (error message, metrics of a local run).
    """

    backend: str
    run_id: str
    state: str
    done: bool
    succeeded: bool
    url: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def vertex_status(target: VertexTarget, run_id: str) -> RunStatus:
    """Fetch the state of a Vertex pipeline job."""
    from google.cloud import aiplatform

    target.init()
    job = aiplatform.PipelineJob.get(target.job_name(run_id))
    state = job.state.name if job.state is not None else "PIPELINE_STATE_UNSPECIFIED"
    details: dict[str, Any] = {}
    err = getattr(job._gca_resource, "error", None)
    if err is not None and getattr(err, "message", ""):
        details["error"] = err.message
    short = job.resource_name.rsplit("/", 1)[-1]
    return RunStatus(
        backend="vertex",
        run_id=short,
        state=state,
        done=state in VERTEX_TERMINAL,
        succeeded=state == VERTEX_SUCCEEDED,
        url=target.console_url(short),
        details=details,
    )


def kfp_status(target: KfpTarget, run_id: str) -> RunStatus:
    """Fetch the state of a KFP run."""
    run = target.client().get_run(run_id)
    state = str(run.state or "PENDING").upper()
    details: dict[str, Any] = {}
    if getattr(run, "error", None):
        details["error"] = getattr(run.error, "message", str(run.error))
    return RunStatus(
        backend="kfp",
        run_id=run_id,
        state=state,
        done=state in KFP_TERMINAL,
        succeeded=state == KFP_SUCCEEDED,
        url=target.run_url(run_id),
        details=details,
    )


def local_status(run_dir: str) -> RunStatus:
    """Read a run folder (local or gs://): ``status.txt``, ``metrics.json``, ``error.log``."""
    from trainer import storage
    from trainer.runfolder import liveness

    status_uri = storage.join(run_dir, "status.txt")
    if not storage.exists(status_uri):
        if not storage.exists(storage.join(run_dir, "config.json")):
            raise FileNotFoundError(f"not a run folder (no status.txt or config.json): {run_dir}")
        # A local run's driver keeps a heartbeat (pid + host); a dead one is not RUNNING.
        alive, detail = liveness(run_dir)
        if alive == "dead":
            return RunStatus(
                "local", run_dir, "DEAD", done=True, succeeded=False, details={"error": detail}
            )
        return RunStatus(
            "local", run_dir, "RUNNING", done=False, succeeded=False, details={"liveness": detail}
        )
    text = storage.read_text(status_uri).strip()
    state = (text.split() or ["UNKNOWN"])[0].upper()
    details: dict[str, Any] = {"status_line": text.splitlines()[0] if text else ""}
    metrics_uri = storage.join(run_dir, "metrics.json")
    if storage.exists(metrics_uri):
        details["metrics"] = json.loads(storage.read_text(metrics_uri))
    err_uri = storage.join(run_dir, "error.log")
    if state != "SUCCESS" and storage.exists(err_uri):
        lines = storage.read_text(err_uri).strip().splitlines()
        details["error"] = lines[0] if lines else ""
    return RunStatus(
        # SKIPPED (skip-if-unchanged: nothing new to train on) is a clean end, not a failure.
        "local",
        run_dir,
        state,
        done=True,
        succeeded=state in ("SUCCESS", "SKIPPED"),
        details=details,
    )


def wait_for(
    fetch: Callable[[], RunStatus],
    *,
    poll_interval: float = 30.0,
    timeout: float | None = None,
    on_change: Callable[[RunStatus], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RunStatus:
    """Poll ``fetch`` until the run is terminal; sleeps only between non-terminal polls.

    Args:
        fetch: Returns the current status.
        poll_interval: Seconds between polls.
        timeout: Give up (raise TimeoutError) after this many seconds (None: never).
        on_change: Called whenever the state changes (progress output).
        sleep: Injected for tests.

    Returns:
        The terminal status.
    """
    start = time.monotonic()
    last = None
    while True:
        status = fetch()
        if status.state != last and on_change is not None:
            on_change(status)
        last = status.state
        if status.done:
            return status
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"run {status.run_id} still {status.state} after {timeout:.0f}s")
        sleep(poll_interval)


# --------------------------------------------------------------------------- the whole flow


@dataclass
class SubmitOptions:
    """Everything ``llmft submit`` needs beyond the settings (see ``submit_pipeline``)."""

    backend: str = "vertex"
    data: str | None = None
    model: str | None = None
    accelerator: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    package: str | None = None
    service_account: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    enable_caching: bool | None = None
    experiment: str | None = None
    run_name: str | None = None
    output_root: str | None = None
    hf_token_secret: str | None = None
    """Compiled in (see ``pipelines.compile.compile_pipeline``); not with ``package``."""
    accelerator_count: int = 1
    """GPUs of train-lora (compiled in; not with ``package``)."""
    machine_type: str | None = None
    """Machine shape of the GPU steps (compiled in; not with ``package``)."""
    gpu_step_cpu: str | None = None
    """CPU of the GPU steps (compiled in; not with ``package``)."""
    gpu_step_memory: str | None = None
    """Memory of the GPU steps (compiled in; not with ``package``)."""

    def compiled_in(self) -> list[str]:
        """Flags given that only a compilation can honour (so not with ``package``)."""
        given = [
            ("--hf-token-secret", self.hf_token_secret),
            ("--accelerator-count", self.accelerator_count != 1),
            ("--machine-type", self.machine_type),
            ("--gpu-step-cpu", self.gpu_step_cpu),
            ("--gpu-step-memory", self.gpu_step_memory),
        ]
        return [flag for flag, value in given if value]


def prepare_parameters(
    package_path: str,
    settings: Any,
    opts: SubmitOptions,
    *,
    stage: bool = True,
) -> tuple[dict[str, Any], StagedData | None]:
    """Stage the data and assemble the typed parameter values for a compiled package.

    Explicit ``--param`` values win over ``--data``/``--model``/settings for the same key.

    Returns:
        The parameter values and the staged dataset (None when ``dataset_uri`` came from --param).
    """
    params = pipeline_parameters(package_path)
    for required in (DATASET_PARAM, OUTPUT_ROOT_PARAM):
        if required not in params:
            raise ConfigError(f"{package_path}: the pipeline has no {required!r} parameter")
    explicit = check_parameters(opts.params, params)
    values: dict[str, Any] = {OUTPUT_ROOT_PARAM: opts.output_root or settings.bucket_uri}
    model = opts.model or settings.model_name
    if model and MODEL_PARAM in params:
        values[MODEL_PARAM] = model
    staged = None
    if DATASET_PARAM not in explicit and stage:
        staged = stage_dataset(opts.data or settings.local_data_path, settings.bucket_uri)
        values[DATASET_PARAM] = staged.uri
    values.update(explicit)
    _check_run_values(values, params)
    return values, staged


def _check_run_values(values: Mapping[str, Any], params: Mapping[str, PipelineParam]) -> None:
    """The run's values through the same config checks as ``llmft run --local`` (llmft
    packages only: a foreign pipeline's parameters are its own business)."""
    from pipelines.compile import check_output_root, check_parameter_values, parameter_types

    ours = set(parameter_types())
    if not ours <= set(params):
        return
    merged = {k: p.default for k, p in params.items() if p.default is not None}
    merged.update(values)
    checked = check_parameter_values({k: v for k, v in merged.items() if k in ours})
    check_output_root("cloud", str(checked.get(OUTPUT_ROOT_PARAM, "")))


def compile_for(
    backend: str,
    accelerator: str,
    out_dir: str,
    settings: Any,
    *,
    hf_token_secret: str | None = None,
    opts: SubmitOptions | None = None,
) -> str:
    """Compile the pipeline for the backend's target into ``out_dir``; returns the YAML path.

    The run folders' ``output_root`` default is ``opts.output_root`` or the settings' bucket;
    the images come from ``settings.image_repo`` (``LLMFT_IMAGE_REPO``, possibly from
    ``.env``); GPU placement from ``opts`` (count, machine type, step sizes).
    ``hf_token_secret`` is as for ``pipelines.compile.compile_pipeline``.
    """
    from pipelines.compile import compile_pipeline

    target = TARGET_FOR_BACKEND[backend]
    out = str(Path(out_dir) / f"llmft-{target}.yaml")
    o = opts or SubmitOptions(backend=backend)
    root = o.output_root or settings.bucket_uri
    return compile_pipeline(
        target,
        accelerator,
        out,
        image_tag=settings.image_tag,
        image_repo=settings.image_repo,
        param_defaults={OUTPUT_ROOT_PARAM: root} if root else None,
        hf_token_secret=hf_token_secret,
        accelerator_count=o.accelerator_count,
        machine_type=o.machine_type,
        gpu_step_cpu=o.gpu_step_cpu,
        gpu_step_memory=o.gpu_step_memory,
    )


def compile_package(settings: Any, opts: SubmitOptions, out_dir: str) -> str:
    """``opts.package``, or the pipeline compiled for ``opts.backend`` into ``out_dir``.

    Raises:
        ConfigError: A package together with flags that only a compilation honours, or a
            package compiled for the other backend.
    """
    from pipelines.compile import check_package_for_backend

    if opts.package:
        if opts.compiled_in():
            raise ConfigError(
                f"{', '.join(opts.compiled_in())} is compiled into the pipeline: leave out "
                "--package, or compile the package with `llmft compile` and those flags"
            )
        check_package_for_backend(opts.package, check_backend(opts.backend))
        return opts.package
    accelerator = opts.accelerator or settings.accelerator
    return compile_for(
        check_backend(opts.backend),
        accelerator,
        out_dir,
        settings,
        hf_token_secret=opts.hf_token_secret,
        opts=opts,
    )


def check_backend(backend: str) -> str:
    """Return ``backend`` or raise a one-line ConfigError."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be vertex or kfp, not {backend!r}")
    return backend


def vertex_target(settings: Any, credentials: Any = None) -> VertexTarget:
    """The Vertex target of these settings (project and region required)."""
    settings.require("project_id", "region")
    return VertexTarget(
        project=settings.project_id,
        region=settings.region,
        api_endpoint=settings.vertex_api_endpoint,
        credentials=credentials,
    )


def kfp_target(settings: Any) -> KfpTarget:
    """The KFP target of these settings (host required)."""
    settings.require("kfp_host")
    return KfpTarget(
        host=settings.kfp_host, namespace=settings.kfp_namespace, experiment=settings.kfp_experiment
    )


def submit_pipeline(settings: Any, opts: SubmitOptions, *, credentials: Any = None) -> SubmittedRun:
    """Compile (unless ``opts.package``), stage the data and create the run on ``opts.backend``.

    Args:
        settings: ``pipelines.settings.Settings`` (project, region, bucket, endpoints...).
        opts: What to run.
        credentials: Explicit Google credentials for Vertex (default: ADC).

    Returns:
        The created run (its ``staged`` field tells whether data was uploaded).

    Raises:
        SettingsError: Missing project/bucket/host (a usage error).
        ConfigError: Unknown or badly typed ``--param``.
    """
    backend = check_backend(opts.backend)
    if backend == "vertex":
        settings.require("project_id", "bucket_name")
    else:
        settings.require("bucket_name", "kfp_host")
    if backend == "vertex":
        vtarget = vertex_target(settings, credentials)
    else:
        ktarget = kfp_target(settings)
    with tempfile.TemporaryDirectory(prefix="llmft-submit-") as tmp:
        package = compile_package(settings, opts, tmp)
        values, staged = prepare_parameters(package, settings, opts)
        sa = opts.service_account or settings.service_account
        if backend == "vertex":
            run = submit_vertex(
                package,
                vtarget,
                pipeline_root=f"{settings.bucket_uri}/{PIPELINE_ROOT_DIR}",
                parameter_values=values,
                service_account=sa,
                labels=opts.labels,
                enable_caching=opts.enable_caching,
                experiment=opts.experiment or settings.vertex_experiment,
                display_name=opts.run_name,
            )
        else:
            run = submit_kfp(
                package,
                ktarget,
                parameter_values=values,
                pipeline_root=f"{settings.bucket_uri}/{PIPELINE_ROOT_DIR}",
                service_account=sa,
                enable_caching=opts.enable_caching,
                run_name=opts.run_name,
            )
    run.staged = staged
    return run


def run_status(
    settings: Any, run_id: str, backend: str | None = None, *, credentials: Any = None
) -> RunStatus:
    """Status of a Vertex job, a KFP run, or a run folder (a path or ``gs://`` URI).

    Args:
        settings: Connection settings.
        run_id: Run ID / resource name, or a run folder.
        backend: ``vertex``, ``kfp``, or None to treat ``run_id`` as a run folder when it looks
            like a path.
        credentials: Explicit Google credentials for Vertex.
    """
    looks_like_path = run_id.startswith(("gs://", "/", ".", "file://")) or Path(run_id).exists()
    if looks_like_path:
        return local_status(run_id)
    if backend is None:
        raise ConfigError(
            f"{run_id!r} is not a run folder; pass --backend vertex|kfp to look up a run ID"
        )
    if check_backend(backend) == "vertex":
        return vertex_status(vertex_target(settings, credentials), run_id)
    return kfp_status(kfp_target(settings), run_id)
