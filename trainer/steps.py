"""The one function each pipeline component calls.

Components (``components/<name>.py``) only translate KFP artifacts to paths; every decision
lives here, testable without KFP. Every step that knows the run folder logs through
``trainer.runfolder.step_log`` so ``process.log``, ``error.log`` and the per-step wall times come
from the same records on Vertex, on GKE and under ``kfp.local``.

Fault injection for tests and drills: ``LLMFT_FAULT`` holds comma-separated ``<step>[:<when>]``
entries, e.g. ``train`` (fail at the start of train), ``train:preempt-once`` (send SIGTERM to
the first train attempt right after its first checkpoint, as a spot VM preemption would),
``publish`` (fail after final_model/ is written).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer import runfolder as rf
from trainer.config import EvalConfig, TrainConfig, ValidateConfig, from_dict

SPLIT_FILES = ("train.jsonl", "eval.jsonl", "summary.json", "rejects.jsonl", "report.md")
"""What ``validate_file`` writes into its output directory (rejects.jsonl may be empty)."""

MODELS_DIR = "models"
COMPLETE_MARKER = ".complete"


class DataInvalid(RuntimeError):
    """The validated dataset did not pass (rejected rows, too few rows, ...)."""


class GateFailed(RuntimeError):
    """The tuned model did not beat the base model by the required margin."""


class InjectedFault(RuntimeError):
    """Raised where ``LLMFT_FAULT`` asks for a failure (tests, drills)."""


# --------------------------------------------------------------------------- helpers


def fault_requested(step: str, when: str = "") -> bool:
    """Whether ``LLMFT_FAULT`` asks for ``step`` (or ``step:when``) to fail."""
    wanted = {s.strip() for s in os.environ.get("LLMFT_FAULT", "").split(",") if s.strip()}
    return (f"{step}:{when}" if when else step) in wanted


def _maybe_fail(step: str) -> None:
    if fault_requested(step):
        raise InjectedFault(f"fault injected by LLMFT_FAULT={os.environ['LLMFT_FAULT']}")


def resolve_dataset_uri(uri: str) -> str:
    """Make a relative dataset path usable: as given when it exists, else under the repo root.

    The bundled sample (``dataset/sample.jsonl``) is the pipeline default; in an image or a test
    whose working directory is elsewhere it is found next to the installed package.
    """
    if "://" in uri or os.path.isabs(uri) or os.path.exists(uri):
        return uri
    repo = Path(__file__).resolve().parent.parent
    candidate = repo / uri
    return str(candidate) if candidate.exists() else uri


def config_dicts(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Build and check the three configs from flat pipeline parameters.

    Args:
        params: Pipeline parameter values (names are config field names; others ignored).

    Returns:
        ``{"validate": {...}, "train": {...}, "eval": {...}}`` of checked field values.

    Raises:
        trainer.config.ConfigError: A value is out of range (message names the field).
    """
    out: dict[str, dict[str, Any]] = {}
    for key, cls in (("validate", ValidateConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        typed = _coerce(cls, params)
        out[key] = dataclasses.asdict(from_dict(cls, typed))
    return out


def _coerce(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """KFP may deliver numbers as floats or strings: convert to each field's declared type."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, value in params.items():
        t = str(types.get(name, ""))
        if name not in types or value is None:
            continue
        if t == "int" and not isinstance(value, bool):
            f = float(value)
            if f != int(f):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            value = int(f)
        elif t == "float":
            value = float(value)
        elif t == "bool" and isinstance(value, str):
            value = value.strip().lower() in ("1", "true", "yes")
        out[name] = value
    return out


@contextlib.contextmanager
def _local_copy(uri: str, names: tuple[str, ...] | None = None) -> Iterator[str]:
    """A local directory with the content of ``uri`` (itself when already local)."""
    from trainer import storage

    local = storage.local_path(uri)
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="llmft-") as tmp:
        if names is None:
            storage.download_dir(uri, tmp)
        else:
            for name in names:
                src = storage.join(uri, name)
                if storage.exists(src):
                    storage.download_file(src, os.path.join(tmp, name))
        yield tmp


def dir_content_hash(path: str) -> str:
    """sha256 over the relative names and contents of every file in a local directory."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _safe_name(model: str) -> str:
    name = model.rstrip("/").replace("/", "--")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def snapshot_model(model: str, output_root: str, *, log: rf.LogFn = print) -> tuple[str, str]:
    """Copy the base model once to ``<output_root>/models/<name>/<revision>/`` and reuse it.

    The revision is the hub commit for a hub id, the GGUF file's sha256 for the built-in
    ``smollm2-135m`` (its folder is ``<sha256[:16]>-c<conversion version>``, and the snapshot
    holds ``model_info.json``: package, version, full sha256), or a content hash of the files
    for the tiny model and local directories; a ``gs://`` model directory is used where it is. A
    gated hub
    model reads its token through ``trainer.secrets.hub_token`` (``HF_TOKEN`` from a Kubernetes
    Secret, or the Secret Manager version ``HF_TOKEN_SECRET`` names), never from a pipeline
    parameter.

    Args:
        model: Built-in model name, local dir, ``gs://`` dir or Hugging Face id.
        output_root: Local directory or ``gs://`` prefix.
        log: Progress lines.

    Returns:
        ``(snapshot_uri, revision)``.
    """
    from trainer import storage
    from trainer.models import is_smollm2, is_tiny, resolve_model

    if model.startswith("gs://"):
        log(f"model {model} is already in GCS; used in place")
        return model.rstrip("/"), "gcs"
    resolved = resolve_model(model)
    if os.path.isdir(resolved):
        if is_smollm2(model):
            from trainer import smollm2

            info = smollm2.model_info(resolved)
            revision = info["gguf_sha256"]
            name, folder = smollm2.NAME, f"{revision[:16]}-c{info['convert_version']}"
        else:
            revision = dir_content_hash(resolved)[:16]
            name = "llmft-tiny" if is_tiny(model) else _safe_name(Path(resolved).name)
            folder = revision
        dest = storage.join(output_root, MODELS_DIR, name, folder)
        if storage.exists(storage.join(dest, COMPLETE_MARKER)):
            log(f"model snapshot reused: {dest}")
            return dest, revision
        storage.upload_dir(resolved, dest)
        storage.write_text(storage.join(dest, COMPLETE_MARKER), model + "\n")
        log(f"model snapshot written: {dest}")
        return dest, revision
    return _snapshot_hub_model(resolved, output_root, log=log)


def _snapshot_hub_model(repo_id: str, output_root: str, *, log: rf.LogFn) -> tuple[str, str]:
    from huggingface_hub import HfApi, snapshot_download

    from trainer import storage
    from trainer.secrets import hub_token

    token = hub_token()  # HF_TOKEN, or the Secret Manager version HF_TOKEN_SECRET names
    revision = HfApi().model_info(repo_id, token=token).sha or "main"
    dest = storage.join(output_root, MODELS_DIR, _safe_name(repo_id), revision)
    if storage.exists(storage.join(dest, COMPLETE_MARKER)):
        log(f"model snapshot reused: {dest}")
        return dest, revision
    with tempfile.TemporaryDirectory(prefix="llmft-hub-") as tmp:
        snapshot_download(repo_id, revision=revision, token=token, local_dir=tmp)
        shutil.rmtree(os.path.join(tmp, ".cache"), ignore_errors=True)
        storage.upload_dir(tmp, dest)
    storage.write_text(storage.join(dest, COMPLETE_MARKER), f"{repo_id}@{revision}\n")
    log(f"model snapshot written: {dest}")
    return dest, revision


# --------------------------------------------------------------------------- steps


def init_step(
    output_root: str,
    dataset_uri: str,
    params: dict[str, Any],
    *,
    job_name: str,
    job_id: str,
    image: str = "",
    target: str = "",
    skip_if_unchanged: bool = False,
) -> dict[str, Any]:
    """First task: claim the run folder, check every parameter, fingerprint the dataset.

    Runs uncached, so the dataset's sha256 is measured afresh on every run; the validate task
    takes it as an input, which makes KFP's cache key change whenever the content changes.
    With ``skip_if_unchanged``, a hash equal to the last successful run's writes
    ``skipped.txt`` (the reason) and outputs ``skipped=True``: the DAG then runs nothing but the
    exit task, which writes status ``SKIPPED``.

    Args:
        output_root: Local directory or ``gs://bucket[/prefix]``.
        dataset_uri: Alpaca JSONL (local, ``gs://``; relative paths also tried under the repo).
        params: Every other pipeline parameter by name.
        job_name: KFP job name placeholder value.
        job_id: KFP job id placeholder value.
        image: Image the GPU steps run in (recorded in config.json).
        target: The compile target; ``vertex`` on Kubeflow Pipelines (``KFP_POD_NAME`` set by
            the KFP backend in every task pod) fails here, before a GPU pod is refused.
        skip_if_unchanged: End early when the data equals the last successful run's.

    Returns:
        ``run_dir``, ``dataset_sha256``, ``skipped`` (bool) and the
        ``validate``/``train``/``eval`` configs as JSON.
    """
    from trainer import storage
    from trainer.skip import skip_reason

    run_dir = rf.claim_run_dir(output_root, job_name, job_id)
    _write_receipt(run_dir)
    skip_flag = _as_bool(skip_if_unchanged)
    reason = None
    with rf.step_log(run_dir, "init-run") as log:
        log(f"run folder: {run_dir}")
        _maybe_fail("init")
        check_backend_matches(target)
        configs = config_dicts(params)
        src = resolve_dataset_uri(dataset_uri)
        if not storage.exists(src):
            raise FileNotFoundError(f"dataset not found: {dataset_uri}")
        digest = storage.sha256(src)
        log(f"dataset {src} sha256={digest}")
        config = {
            "dataset_uri": dataset_uri,
            "dataset_resolved": src,
            "dataset_sha256": digest,
            "output_root": output_root,
            "run_dir": run_dir,
            "image": image,
            "target": target,
            "skip_if_unchanged": skip_flag,
            "kfp": {"job_name": job_name, "job_id": job_id},
            **configs,
        }
        rf.write_json(storage.join(run_dir, rf.CONFIG_FILE), config)
        if skip_flag:
            # This run's folder has no status.txt yet, so it is never its own reference.
            reason = skip_reason(output_root, digest)
            if reason:
                storage.write_text(storage.join(run_dir, rf.SKIP_FILE), reason + "\n")
                log(f"SKIPPED: {reason}")
            else:
                log("skip_if_unchanged: the data differs from the last successful run's")
    return {
        "run_dir": run_dir,
        "dataset_sha256": digest,
        "skipped": reason is not None,
        "validate_config": json.dumps(configs["validate"], sort_keys=True),
        "train_config": json.dumps(configs["train"], sort_keys=True),
        "eval_config": json.dumps(configs["eval"], sort_keys=True),
    }


RECEIPT_ENV = "LLMFT_RUN_RECEIPT"
"""A local file where init-run writes the run folder it claimed (set by ``llmft run --local``,
so each of several runs into one output root learns its own folder)."""


def _write_receipt(run_dir: str) -> None:
    path = os.environ.get(RECEIPT_ENV, "").strip()
    if path:
        tmp = f"{path}.{os.getpid()}.tmp"
        Path(tmp).write_text(run_dir + "\n", encoding="utf-8")
        os.replace(tmp, path)


def check_backend_matches(target: str) -> None:
    """Fail when a package compiled for Vertex runs on Kubeflow Pipelines.

    The KFP backend's Argo compiler gives every task container ``KFP_POD_NAME`` (downward API);
    Vertex AI does not. A Vertex package on KFP would ask for ``limits[NVIDIA_L4]``, which
    Kubernetes refuses for every GPU pod, so the run stops here with the fix instead.

    Raises:
        trainer.config.ConfigError: ``target`` is vertex and the task runs on KFP.
    """
    from trainer.config import ConfigError

    if target == "vertex" and os.environ.get("KFP_POD_NAME"):
        raise ConfigError(
            "this package was compiled for Vertex AI (--target vertex) but runs on Kubeflow "
            "Pipelines, where its GPU steps would ask for limits[NVIDIA_L4]; compile it with "
            "`llmft compile --target gke` and upload that file"
        )


def _as_bool(value: Any) -> bool:
    """KFP may hand a bool over as a string."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


_AFTER_VALIDATE = {"upload", "train-lora", "evaluate", "publish-artifacts"}

SUCCEEDED_STATES = frozenset({"SUCCEEDED", "COMPLETE", "CACHED"})
"""``PipelineTaskFinalStatus.state`` values that mean the exit handler's DAG succeeded.

The two backends speak different dialects. Vertex AI Pipelines (and ``kfp.local``) send the
task state ``SUCCEEDED`` / ``FAILED`` / ``CANCELLED`` with an error code and message. The KFP
backend's driver (kubeflow/pipelines ``backend/src/v2/driver/resolve.go``) sends the MLMD
execution state of the exit handler's DAG as a string: ``COMPLETE`` on success, ``CACHED``
when it came from the cache, ``FAILED``, ``CANCELED`` (or ``RUNNING``, ``NEW``, ``UNKNOWN``),
and an always-empty error (a TODO upstream). Everything that is not in this set, an unknown
or missing state included, is a failure whose error.log names the state.
"""

STATE_MEANING = {
    "FAILED": "a task of the pipeline failed",
    "CANCELED": "the run was cancelled",
    "CANCELLED": "the run was cancelled",
}


def dag_succeeded(state: str | None) -> bool:
    """Whether an exit task's final state (either backend's dialect) means success."""
    return (state or "").strip().upper() in SUCCEEDED_STATES


def _state_reason(state: str) -> str:
    shown = state or "(none)"
    meaning = STATE_MEANING.get(state.strip().upper(), "not a success state")
    return f"pipeline state {shown} ({meaning})"


VALIDATION_FAILURES = ".validate-failed"
"""``<output_root>/experiments/.validate-failed/<key>/``: a failed validation's report and log."""


def validation_key(dataset_uri: str, dataset_sha256: str, validate_config: dict[str, Any]) -> str:
    """Key of one validation: the same inputs that make up validate-data's cache key.

    validate-data cannot know the run folder (a per-run input would defeat its cache), so a
    failed validation parks its report and log under this key and finalize-run, which knows
    the run's config.json, computes the same key and brings them into the run folder.
    """
    blob = json.dumps([dataset_uri, dataset_sha256, validate_config], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _failure_dir(output_root: str, key: str) -> str:
    from trainer import storage

    return storage.join(output_root, rf.EXPERIMENTS, VALIDATION_FAILURES, key)


def _park_failed_validation(out_dir: str, output_root: str, key: str) -> None:
    """Copy data_report.md, rejects.jsonl, summary.json and the attempt log where finalize looks."""
    from trainer import storage

    dest = _failure_dir(output_root, key)
    storage.delete_prefix(dest.rstrip("/") + "/")  # only this attempt's files, never stale ones
    for name, target in (
        ("report.md", "data_report.md"),
        ("rejects.jsonl", "rejects.jsonl"),
        ("summary.json", "summary.json"),
    ):
        local = Path(out_dir, name)
        if local.exists():
            storage.upload_file(str(local), storage.join(dest, target))
    for f in sorted(Path(out_dir, rf.LOGS_DIR).glob("*")):
        storage.upload_file(str(f), storage.join(dest, rf.LOGS_DIR, f.name))


def validate_step(
    dataset_uri: str,
    dataset_sha256: str,
    validate_config: str,
    out_dir: str,
    output_root: str = "",
) -> dict[str, Any]:
    """Validate and split the dataset into ``out_dir``; fail the task when the data is invalid.

    Cacheable: on success it writes nothing but ``out_dir`` (upload copies the report and the
    log into the run folder, also when this result comes from the cache). A failed task is
    never cached, so on failure the report, rejects and attempt log are also parked under
    ``<output_root>/experiments/.validate-failed/<validation_key>/`` for finalize-run.

    Args:
        dataset_uri: The dataset as given to the pipeline.
        dataset_sha256: sha256 measured by init-run; a different content now is an error.
        validate_config: ``ValidateConfig`` fields as JSON.
        out_dir: Local directory for train/eval/rejects/report/summary.
        output_root: Where a failure is parked (empty: not parked).

    Returns:
        The validation summary as a dict (``ok`` is True, counts, ``n_train``, ``n_eval``, ...).

    Raises:
        DataInvalid: The data did not pass: the validator's reason and the first problems as
            ``file:line: code: message``.
    """
    from trainer.validate import validate_file

    cfg_fields = json.loads(validate_config)
    cfg = ValidateConfig(**cfg_fields)
    os.makedirs(out_dir, exist_ok=True)
    try:
        # The log lives with the (cacheable) output; upload copies it into the run folder.
        with rf.step_log(out_dir, "validate-data") as log:
            src = resolve_dataset_uri(dataset_uri)
            summary = validate_file(src, cfg, out_dir=out_dir)
            got = getattr(summary, "input_sha256", "") or ""
            if dataset_sha256 and got and got != dataset_sha256:
                raise RuntimeError(
                    f"{dataset_uri} changed during the run (sha256 {got[:12]} != "
                    f"{dataset_sha256[:12]}): start a new run"
                )
            data = summary.to_dict()
            log(
                f"{'valid' if data['ok'] else 'INVALID'}: {data.get('accepted')} accepted, "
                f"{data.get('rejected')} rejected, {data.get('n_train')} train / "
                f"{data.get('n_eval')} eval rows"
            )
            if not data["ok"]:
                raise DataInvalid(f"dataset invalid (see data_report.md): {_invalid_reason(data)}")
    except Exception:
        if output_root:
            with contextlib.suppress(Exception):  # the original error matters more
                _park_failed_validation(
                    out_dir, output_root, validation_key(dataset_uri, dataset_sha256, cfg_fields)
                )
        raise
    return data


def _invalid_reason(summary: dict[str, Any], max_problems: int = 3) -> str:
    """One line: the validator's reasons, then the first problems (file:line: code: message).

    Errors come before warnings: a warning never made the data invalid.
    """
    parts = [str(r) for r in summary.get("reasons") or []]
    found = [str(p) for p in summary.get("problems") or []]
    errors = [p for p in found if not p.endswith("(warning)")]
    problems = (errors or found)[:max_problems]
    if problems:
        parts.append("first problems: " + " | ".join(problems))
    return "; ".join(parts).replace("\n", " ") or "see data_report.md"


def import_failed_validation(run_dir: str, output_root: str) -> bool:
    """Bring a failed validate-data attempt of this run (parked by validate_step) into the run.

    Only attempts that started after this run's init-run are taken, so a parked failure of an
    earlier run on the same data never pretends to be this run's.

    Args:
        run_dir: The run folder.
        output_root: Where failures are parked.

    Returns:
        True when an attempt record was imported (data_report.md and rejects.jsonl with it).
    """
    from trainer import storage

    config = rf.read_json(run_dir, rf.CONFIG_FILE) or {}
    if not config.get("dataset_sha256") or not isinstance(config.get("validate"), dict):
        return False
    inits = [r for r in rf.step_records(run_dir) if r["step"] == "init-run"]
    if not inits:
        return False
    since = inits[-1].get("started_utc", "")
    key = validation_key(
        config.get("dataset_uri", ""), config["dataset_sha256"], config["validate"]
    )
    src = _failure_dir(output_root, key)
    try:
        files = storage.list_files(storage.join(src, rf.LOGS_DIR).rstrip("/") + "/")
    except FileNotFoundError:
        return False
    imported = False
    for rec_uri in (f for f in files if f.endswith(".json")):
        record = json.loads(storage.read_text(rec_uri))
        if record.get("step") != "validate-data" or record.get("started_utc", "") < since:
            continue
        stem = rec_uri.rsplit(".", 1)[0]
        for uri in (rec_uri, stem + ".log"):
            if storage.exists(uri):
                name = uri.replace("\\", "/").rsplit("/", 1)[-1]
                storage.copy(uri, storage.join(run_dir, rf.LOGS_DIR, name))
        imported = True
    if imported:
        for name in ("data_report.md", "rejects.jsonl"):
            uri = storage.join(src, name)
            if storage.exists(uri):
                storage.copy(uri, storage.join(run_dir, name))
    return imported


def upload_step(
    run_dir: str,
    splits_dir: str,
    model: str,
    output_root: str,
    *,
    train_config: str = "",
    accelerator: str = "none",
    accelerator_count: int = 1,
) -> dict[str, str]:
    """Stage the validated splits into ``<run>/data/``, snapshot the base model, preflight.

    Args:
        run_dir: The run folder.
        splits_dir: validate-data's output directory.
        model: Base model as given to the pipeline.
        output_root: Where ``models/`` snapshots live (shared by runs).
        train_config: ``TrainConfig`` fields as JSON; empty skips the memory preflight.
        accelerator: The GPU train-lora runs on (``L4``, ``T4``...); ``none`` logs the
            estimate without enforcing it.
        accelerator_count: GPUs of train-lora.

    Returns:
        ``data_dir``, ``model_uri`` (the snapshot) and ``model_revision``.

    Raises:
        DataInvalid: The summary says the data did not pass (validate-data fails on invalid
            data itself; this guards against a result cached by an older version).
        trainer.plan.DoesNotFit: The estimated peak memory exceeds the accelerator's; the
            message (summary, breakdown, advice) goes to error.log.
    """
    from trainer import storage

    with rf.step_log(run_dir, "upload") as log:
        summary = json.loads(Path(splits_dir, "summary.json").read_text())
        # validate-data's log and record join the run's logs (also when it came from the cache).
        for f in sorted(Path(splits_dir, rf.LOGS_DIR).glob("*")):
            storage.upload_file(str(f), storage.join(run_dir, rf.LOGS_DIR, f.name))
        report = Path(splits_dir, "report.md")
        if report.exists():
            storage.upload_file(str(report), storage.join(run_dir, "data_report.md"))
        if not summary.get("ok"):
            raise DataInvalid(f"dataset invalid (see data_report.md): {_invalid_reason(summary)}")
        data_dir = storage.join(run_dir, "data")
        for name in SPLIT_FILES:
            local = Path(splits_dir, name)
            if local.exists() and name != "report.md":
                storage.upload_file(str(local), storage.join(data_dir, name))
        log(
            f"staged {summary.get('n_train')} train / {summary.get('n_eval')} eval rows "
            f"to {data_dir}"
        )
        _maybe_fail("upload")
        model_uri, revision = snapshot_model(model, output_root, log=log)
        if train_config:
            preflight(model_uri, train_config, accelerator, accelerator_count, log=log)
    return {"data_dir": data_dir, "model_uri": model_uri, "model_revision": revision}


PREFLIGHT_ENV = "LLMFT_SKIP_PREFLIGHT"
"""Set to 1 to log the memory estimate without enforcing it (the estimate may be wrong)."""


def preflight(
    model_uri: str,
    train_config: str,
    accelerator: str,
    accelerator_count: int = 1,
    *,
    log: rf.LogFn = print,
) -> None:
    """Fail before any GPU step when training cannot fit ``accelerator`` (``llmft plan``).

    Only a confident "does not fit" fails: a config.json the planner cannot read, no
    accelerator (local runs) or ``LLMFT_SKIP_PREFLIGHT=1`` log and go on.

    Raises:
        trainer.plan.DoesNotFit: The estimate exceeds the accelerator's memory.
    """
    from trainer import plan

    fields = json.loads(train_config)
    fields["model"] = model_uri
    cfg = TrainConfig(**fields)
    enforce = accelerator.lower() not in ("", "none", "cpu")
    try:
        config = plan.load_model_config(model_uri)
        est = plan.estimate(
            config,
            cfg,
            accelerator=accelerator if enforce else "cpu",
            accelerator_count=accelerator_count if enforce else 1,
            model_name=model_uri,
        )
    except (plan.PlanError, FileNotFoundError) as exc:
        log(f"preflight: no memory estimate ({exc}); going on")
        return
    log(f"preflight: {plan.summary_line(est)}")
    if est.fits or not enforce:
        return
    if os.environ.get(PREFLIGHT_ENV) == "1":
        log(f"preflight: {PREFLIGHT_ENV}=1, going on although the estimate does not fit")
        return
    raise plan.DoesNotFit(est)


def _preempt_after_first_checkpoint(marker: str, log: rf.LogFn) -> rf.LogFn:
    """Fault drill: SIGTERM this process once the first checkpoint is saved (first attempt only).

    Returns the log function to train with: it sends the signal from the trainer's own
    "saved checkpoint-N" line, so the preemption lands at the next step whatever the speed of
    the machine (a watcher polling for the checkpoint raced a fast run to its end).
    """
    import signal

    from trainer import storage

    if storage.exists(marker):
        return log
    storage.write_text(marker, "preempt-once fired\n")
    fired: list[bool] = []

    def drill_log(line: str) -> None:
        log(line)
        if not fired and line.startswith("saved checkpoint-"):
            fired.append(True)
            log("fault drill: sending SIGTERM (simulated preemption)")
            os.kill(os.getpid(), signal.SIGTERM)

    return drill_log


def train_step(
    run_dir: str,
    data_dir: str,
    model_uri: str,
    train_config: str,
    output_dir: str,
    num_processes: int = 1,
) -> dict[str, Any]:
    """LoRA-train on the staged data; checkpoints live in ``<run>/checkpoints`` for resumption.

    Args:
        run_dir: The run folder.
        data_dir: ``<run>/data`` with train.jsonl and eval.jsonl.
        model_uri: Base model snapshot from upload.
        train_config: ``TrainConfig`` fields as JSON (``model`` is replaced by the snapshot).
        output_dir: Local directory for the adapter, tokenizer and train metrics.
        num_processes: Data-parallel processes (one per GPU of the step; ``trainer.launch``).

    Returns:
        The ``train_metrics.json`` content.
    """
    from trainer import storage
    from trainer.launch import train_processes

    with rf.step_log(run_dir, "train-lora") as log:
        _maybe_fail("train")
        fields = json.loads(train_config)
        fields["model"] = model_uri
        cfg = TrainConfig(**fields)
        checkpoint_dir = storage.join(run_dir, "checkpoints")
        train_log = log
        if fault_requested("train", "preempt-once"):
            train_log = _preempt_after_first_checkpoint(
                storage.join(run_dir, ".fault-train-preempt"), log
            )
        with _local_copy(data_dir, ("train.jsonl", "eval.jsonl")) as local_data:
            eval_path = os.path.join(local_data, "eval.jsonl")
            has_eval = os.path.exists(eval_path) and os.path.getsize(eval_path) > 0
            os.makedirs(output_dir, exist_ok=True)
            result = train_processes(
                num_processes,
                cfg,
                os.path.join(local_data, "train.jsonl"),
                eval_path if has_eval else None,
                output_dir,
                checkpoint_dir,
                log=train_log,
            )
        log(f"adapter written to {output_dir}")
    return result


def evaluate_step(
    run_dir: str,
    data_dir: str,
    model_uri: str,
    adapter_dir: str,
    eval_config: str,
    train_config: str,
    out_dir: str,
) -> dict[str, Any]:
    """Evaluate base vs tuned on the eval split and apply the gate.

    Args:
        run_dir: The run folder.
        data_dir: ``<run>/data``.
        model_uri: Base model snapshot.
        adapter_dir: The trained adapter.
        eval_config: ``EvalConfig`` fields as JSON.
        train_config: ``TrainConfig`` fields as JSON (system prompt and max_seq_len).
        out_dir: Directory receiving metrics.json and eval_report.md.

    Returns:
        ``{"metrics": {...}, "passed": bool, "gate": {...}, "report_md": str}``.

    Raises:
        GateFailed: The gate did not pass (metrics and report are kept in ``<run>/eval/``).
    """
    from trainer import storage
    from trainer.evaluate import evaluate

    with rf.step_log(run_dir, "evaluate") as log:
        _maybe_fail("evaluate")
        cfg = EvalConfig(**json.loads(eval_config))
        tcfg = json.loads(train_config)
        with _local_copy(data_dir, ("eval.jsonl",)) as local_data:
            result = evaluate(
                cfg,
                model_uri,
                adapter_dir,
                os.path.join(local_data, "eval.jsonl"),
                out_dir,
                system_prompt=tcfg.get("system_prompt", ""),
                max_seq_len=int(tcfg.get("max_seq_len", 512)),
                quantization=str(tcfg.get("quantization", "none")),
                log=log,
            )
        for side in ("base", "tuned"):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics[side].items()))
            log(f"{side}: {shown}")
        if not result.passed:
            for name in ("metrics.json", "eval_report.md"):
                src = os.path.join(out_dir, name)
                if os.path.exists(src):
                    storage.upload_file(src, storage.join(run_dir, "eval", name))
            g = result.gate
            raise GateFailed(
                f"eval gate failed: {g.get('metric')} base={g.get('base')} tuned={g.get('tuned')} "
                f"improvement={g.get('improvement')} < required {g.get('required')}"
            )
    return {
        "metrics": result.metrics,
        "passed": result.passed,
        "gate": result.gate,
        "report_md": result.report_md,
    }


def publish_step(
    run_dir: str,
    adapter_dir: str,
    eval_dir: str,
    splits_dir: str,
    model_uri: str,
    model_revision: str,
) -> list[str]:
    """Publish the results into the run folder (idempotent, so a retry overwrites cleanly).

    Args:
        run_dir: The run folder.
        adapter_dir: train-lora's output (adapter, tokenizer, merged/ when asked).
        eval_dir: evaluate's output (metrics.json, eval_report.md).
        splits_dir: validate-data's output (report.md).
        model_uri: Base model snapshot.
        model_revision: Snapshot revision (hub commit or content hash).

    Returns:
        Relative paths written.
    """
    from trainer import storage

    written: list[str] = []
    with rf.step_log(run_dir, "publish-artifacts") as log:
        final = storage.join(run_dir, "final_model")
        storage.upload_dir(adapter_dir, final)
        written += [
            "final_model/" + p.relative_to(adapter_dir).as_posix()
            for p in sorted(Path(adapter_dir).rglob("*"))
            if p.is_file()
        ]
        _maybe_fail("publish")
        for src, name in (
            (os.path.join(eval_dir, "metrics.json"), "metrics.json"),
            (os.path.join(eval_dir, "eval_report.md"), "eval_report.md"),
            (os.path.join(splits_dir, "report.md"), "data_report.md"),
        ):
            storage.upload_file(src, storage.join(run_dir, name))
            written.append(name)
        cfg_uri = storage.join(run_dir, rf.CONFIG_FILE)
        config = json.loads(storage.read_text(cfg_uri)) if storage.exists(cfg_uri) else {}
        effective_train = Path(adapter_dir, "train_config.json")
        config["base_model"] = {
            "name": config.get("train", {}).get("model"),
            "snapshot": model_uri,
            "revision": model_revision,
        }
        # A converted built-in (smollm2-135m) records its source package, version and the
        # GGUF's full sha256 beside the weights; config.json and manifest.json carry it.
        info_uri = storage.join(model_uri, "model_info.json")
        if storage.exists(info_uri):
            config["base_model"]["source"] = json.loads(storage.read_text(info_uri))
        if effective_train.exists():
            config["train_effective"] = json.loads(effective_train.read_text())
        rf.write_json(cfg_uri, config)
        written.append(rf.CONFIG_FILE)
        log(f"published {len(written)} files to {run_dir}")
    return written


def finalize_step(
    output_root: str,
    job_name: str,
    job_id: str,
    state: str,
    error_message: str = "",
    task_name: str = "",
    image: str = "",
    interrupted: str = "",
) -> dict[str, Any]:
    """Exit task: error.log, process.log, manifest.json, then status.txt (always last).

    SUCCESS only when KFP reports the DAG succeeded, no step's last attempt failed and every
    file of ``runfolder.REQUIRED_FILES`` exists. SKIPPED (``SKIPPED <reason>``) when init-run
    wrote ``skipped.txt`` and nothing failed: no error.log, no required files. Anything else
    writes FAILED; a validate-data failure (parked outside the run folder, see
    ``validate_step``) is brought in first so error.log and data_report.md show it.

    Args:
        output_root: Local directory or ``gs://`` prefix.
        job_name: KFP job name placeholder value.
        job_id: KFP job id placeholder value.
        state: ``PipelineTaskFinalStatus.state`` in either dialect (see ``SUCCEEDED_STATES``:
            Vertex SUCCEEDED/FAILED/CANCELLED, KFP COMPLETE/CACHED/FAILED/CANCELED).
        error_message: ``PipelineTaskFinalStatus.error_message``.
        task_name: ``PipelineTaskFinalStatus.pipeline_task_name``.
        image: Image the GPU steps ran in.
        interrupted: Set by a local run stopped by a signal or a crash of its own process
            (``interrupted by SIGINT``): the run is FAILED at ``task_name`` with this reason,
            whatever the interrupted step recorded.

    Returns:
        ``{"run_dir", "status", "failed_step", "error"}`` (``error`` holds the skip reason
        when SKIPPED).
    """
    from trainer import storage

    run_dir = rf.find_run_dir(output_root, job_name, job_id) or rf.claim_run_dir(
        output_root, job_name, job_id
    )
    state = (state or "").strip()
    ok = dag_succeeded(state)
    status, failed_step, reason = "FAILED", "", ""
    try:
        with rf.step_log(run_dir, "finalize-run") as log:
            log(f"pipeline state: {state} {error_message or ''}".rstrip())
            seen = {r["step"] for r in rf.step_records(run_dir)}
            # validate-data ran and failed outside the run folder when nothing after it ran.
            validate_failed = (
                not ok
                and "init-run" in seen
                and not seen & _AFTER_VALIDATE
                and import_failed_validation(run_dir, output_root)
            )
            if validate_failed:
                log("validate-data failed: its log and data_report.md brought in")
            summary = rf.step_summary(rf.step_records(run_dir))
            failed = [s for s, v in summary.items() if v["state"] == "FAILED"]
            skip_uri = storage.join(run_dir, rf.SKIP_FILE)
            skipped = ok and not failed and not interrupted and storage.exists(skip_uri)
            missing = rf.missing_required(run_dir) if ok and not skipped else []
            if skipped:
                status = "SKIPPED"
                reason = storage.read_text(skip_uri).strip()
                storage.delete(storage.join(run_dir, rf.ERROR_FILE), missing_ok=True)
                log(f"run SKIPPED: {reason}")
            elif ok and not failed and not missing and not interrupted:
                status = "SUCCESS"
                # A re-run of a failed job (same folder) that now succeeds drops the old error.
                storage.delete(storage.join(run_dir, rf.ERROR_FILE), missing_ok=True)
            else:
                if interrupted:
                    failed_step = task_name or (failed[0] if failed else "unknown")
                    reason = interrupted
                elif failed:
                    failed_step = failed[0]
                    reason = summary[failed_step]["error"]
                elif killed := [s for s in rf.unfinished_steps(run_dir) if s != "finalize-run"]:
                    failed_step = killed[-1]
                    reason = "the step was killed before it could record an exit (OOM? timeout?)"
                    reason += f"; pipeline error: {error_message}" if error_message else ""
                elif missing:
                    failed_step = "publish-artifacts"
                    reason = "run folder incomplete, missing: " + ", ".join(missing)
                else:
                    failed_step = task_name or "unknown"
                    reason = error_message or _state_reason(state)
                lines = [
                    f"FAILED step: {failed_step}",
                    f"reason: {reason}",
                    f"pipeline state: {state}",
                    f"pipeline task: {task_name}",
                    f"pipeline error: {error_message or ''}",
                    "",
                    "attempts:",
                ]
                for step, info in summary.items():
                    lines.append(
                        f"  {step}: {info['state']} after {info['attempts']} attempt(s)"
                        + (f" - {info['error']}" if info["error"] else "")
                    )
                storage.write_text(storage.join(run_dir, rf.ERROR_FILE), "\n".join(lines) + "\n")
                log(f"run FAILED at {failed_step}: {reason}")
            cfg_uri = storage.join(run_dir, rf.CONFIG_FILE)
            if not storage.exists(cfg_uri):
                rf.write_json(
                    cfg_uri,
                    {
                        "output_root": output_root,
                        "run_dir": run_dir,
                        "kfp": {"job_name": job_name, "job_id": job_id},
                    },
                )
    except Exception as exc:  # finalize itself must still leave a truthful status
        status, failed_step, reason = "FAILED", failed_step or "finalize-run", str(exc)

    storage.write_text(storage.join(run_dir, rf.PROCESS_LOG), rf.assemble_process_log(run_dir))
    config = rf.read_json(run_dir, rf.CONFIG_FILE) or {}
    info = {
        "status": status,
        "run_dir": run_dir,
        "dataset": {"uri": config.get("dataset_uri"), "sha256": config.get("dataset_sha256")},
        "base_model": config.get("base_model")
        or {"name": config.get("train", {}).get("model"), "snapshot": None, "revision": None},
        "image": image or config.get("image"),
        "kfp": {"job_name": job_name, "job_id": job_id, "state": state},
        "steps": rf.step_summary(rf.step_records(run_dir)),
    }
    if status == "SKIPPED":
        info["skip_reason"] = reason
    rf.write_json(storage.join(run_dir, rf.MANIFEST_FILE), rf.build_manifest(run_dir, info))
    if status == "SUCCESS":
        line = "SUCCESS"
    elif status == "SKIPPED":
        line = f"SKIPPED {reason}"
    else:
        line = f"FAILED {failed_step}: {reason}"
    storage.write_text(storage.join(run_dir, rf.STATUS_FILE), line.strip() + "\n")
    return {"run_dir": run_dir, "status": status, "failed_step": failed_step, "error": reason}
