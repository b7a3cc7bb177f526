"""The run folder: naming, per-step logs, process.log, manifest.json and status.txt.

Layout (``output_root`` is a local directory or ``gs://bucket[/prefix]``)::

    <output_root>/experiments/finetune_job_<UTC %Y%m%d_%H%M%S>_<suffix>/
        config.json          every effective parameter
        data/                the validated splits (train.jsonl, eval.jsonl, summary.json)
        data_report.md       the validation report
        checkpoints/         training checkpoints (a retried train task resumes from them)
        final_model/         adapter, adapter_config.json, tokenizer (merged/ when asked)
        metrics.json         {"base": {...}, "tuned": {...}, "gate": {...}}
        eval_report.md
        logs/                one log + one record per step attempt (never appended to)
        process.log          all step logs in DAG order
        error.log            on failure: which step failed and why
        skipped.txt          with skip_if_unchanged, when the data equals the last success's
        manifest.json        hashes, versions, provenance (written just before status.txt)
        status.txt           SUCCESS, FAILED or SKIPPED (first word), written last

The folder name is chosen once per pipeline run by the first task and remembered in a pointer
object keyed by the KFP job name and id (``experiments/.runs/<key>.txt``), so the exit task,
retried tasks and a re-run of the same job all find the same folder. Logs are written as whole
objects per attempt (GCS objects cannot be appended to), so a retried step adds a new attempt
file instead of duplicating or truncating the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

EXPERIMENTS = "experiments"
POINTERS = ".runs"
PREFIX = "finetune_job_"
STATUS_FILE = "status.txt"
MANIFEST_FILE = "manifest.json"
ERROR_FILE = "error.log"
PROCESS_LOG = "process.log"
CONFIG_FILE = "config.json"
LOGS_DIR = "logs"
SKIP_FILE = "skipped.txt"
"""Written by init-run when ``skip_if_unchanged`` ends the run early; holds the reason."""

STEP_ORDER = (
    "init-run",
    "validate-data",
    "upload",
    "train-lora",
    "evaluate",
    "publish-artifacts",
    "finalize-run",
)
"""Pipeline task names in DAG order (process.log and the results table follow it)."""

REQUIRED_FILES = (
    CONFIG_FILE,
    "data_report.md",
    "metrics.json",
    "eval_report.md",
    "final_model/adapter_config.json",
    "final_model/adapter_model.safetensors",
)
"""Files a SUCCESS run folder must contain besides the logs, manifest and status."""

PACKAGES = (
    "llmft",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "kfp",
    "google-cloud-storage",
)

FLUSH_SECONDS = 15.0
"""A long step rewrites its attempt log at most this often, so a crash leaves recent lines."""


def utc_now() -> datetime:
    """The current time in UTC (one place, so tests can compare)."""
    return datetime.now(UTC)


def run_key(job_name: str, job_id: str) -> str:
    """A stable 12-hex-digit key for one pipeline run.

    Args:
        job_name: The KFP job (run) name placeholder value.
        job_id: The KFP job (run) id placeholder value.

    Returns:
        ``sha256(job_name/job_id)[:12]``: identical for every task of the run.
    """
    return hashlib.sha256(f"{job_name}/{job_id}".encode()).hexdigest()[:12]


def run_folder_name(now: datetime, suffix: str = "") -> str:
    """``finetune_job_<UTC %Y%m%d_%H%M%S>[_suffix]``.

    Args:
        now: Start time (converted to UTC).
        suffix: Short per-run suffix (letters and digits), empty for none.

    Returns:
        The folder name.
    """
    stamp = now.astimezone(UTC).strftime("%Y%m%d_%H%M%S")
    suffix = re.sub(r"[^A-Za-z0-9]", "", suffix)
    return f"{PREFIX}{stamp}_{suffix}" if suffix else f"{PREFIX}{stamp}"


def _pointer(output_root: str, key: str) -> str:
    from trainer import storage

    return storage.join(output_root, EXPERIMENTS, POINTERS, f"{key}.txt")


def find_run_dir(output_root: str, job_name: str, job_id: str) -> str | None:
    """The run folder already claimed for this job, or None.

    Args:
        output_root: Local directory or ``gs://`` prefix.
        job_name: KFP job name.
        job_id: KFP job id.

    Returns:
        The run folder URI, or None when no task of this job has claimed one.
    """
    from trainer import storage

    ptr = _pointer(output_root, run_key(job_name, job_id))
    if not storage.exists(ptr):
        return None
    name = storage.read_text(ptr).strip()
    return storage.join(output_root, EXPERIMENTS, name)


def claim_run_dir(
    output_root: str, job_name: str, job_id: str, *, now: datetime | None = None
) -> str:
    """Return this job's run folder, choosing (and recording) it on the first call.

    The name is ``finetune_job_<UTC start>_<first 6 hex of run_key>``; the pointer object is
    written with ``create_only`` so two racing tasks agree on one folder.

    Args:
        output_root: Local directory or ``gs://`` prefix.
        job_name: KFP job name (``dsl.PIPELINE_JOB_NAME_PLACEHOLDER``).
        job_id: KFP job id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``).
        now: Start time (default: now).

    Returns:
        The run folder URI (``<output_root>/experiments/<name>``).
    """
    from trainer import storage

    existing = find_run_dir(output_root, job_name, job_id)
    if existing:
        return existing
    key = run_key(job_name, job_id)
    name = run_folder_name(now or utc_now(), key[:6])
    try:
        storage.write_text(_pointer(output_root, key), name + "\n", create_only=True)
    except storage.PreconditionFailed:
        return find_run_dir(output_root, job_name, job_id) or storage.join(
            output_root, EXPERIMENTS, name
        )
    return storage.join(output_root, EXPERIMENTS, name)


# --------------------------------------------------------------------------- step logs


@dataclass
class StepLog:
    """The log of one attempt of one step, kept in memory and written as whole objects.

    Attributes:
        run_dir: The run folder.
        step: Pipeline task name (one of ``STEP_ORDER``).
        attempt: Unique attempt id (UTC timestamp + random hex), sortable by start time.
        echo: Also print each line (the KFP UI shows stdout).
    """

    run_dir: str
    step: str
    attempt: str = field(
        default_factory=lambda: utc_now().strftime("%Y%m%dT%H%M%S%fZ") + secrets.token_hex(2)
    )
    echo: bool = True
    lines: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    _last_flush: float = 0.0

    @property
    def stem(self) -> str:
        order = STEP_ORDER.index(self.step) if self.step in STEP_ORDER else 99
        return f"{order:02d}_{self.step}.{self.attempt}"

    def __call__(self, msg: str) -> None:
        """Log one message (may contain newlines); flushes now and then."""
        stamp = utc_now().strftime("%H:%M:%S")
        for line in str(msg).splitlines() or [""]:
            self.lines.append(f"{stamp} [{self.step}] {line}")
            if self.echo:
                print(f"[{self.step}] {line}", flush=True)
        if time.time() - self._last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Rewrite this attempt's log object with every line so far."""
        from trainer import storage

        self._last_flush = time.time()
        storage.write_text(
            storage.join(self.run_dir, LOGS_DIR, f"{self.stem}.log"), "\n".join(self.lines) + "\n"
        )

    def finish(self, state: str, error: str = "") -> dict[str, Any]:
        """Write the final log and the attempt record (state, times, error)."""
        from trainer import storage

        wall = time.time() - self.started
        self(f"{state} in {wall:.1f}s" + (f": {error}" if error else ""))
        self.flush()
        record = {
            "step": self.step,
            "attempt": self.attempt,
            "state": state,
            "started_utc": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "wall_s": round(wall, 3),
            "error": error,
        }
        storage.write_text(
            storage.join(self.run_dir, LOGS_DIR, f"{self.stem}.json"),
            json.dumps(record, indent=2) + "\n",
        )
        return record


@contextlib.contextmanager
def step_log(run_dir: str, step: str, *, echo: bool = True) -> Iterator[StepLog]:
    """Context manager giving a ``StepLog``; records SUCCEEDED, or FAILED with the error.

    Args:
        run_dir: The run folder.
        step: Pipeline task name.
        echo: Also print lines to stdout.

    Yields:
        The log callable (``log("message")``).
    """
    log = StepLog(run_dir, step, echo=echo)
    log(f"started (attempt {log.attempt})")
    try:
        yield log
    except BaseException as exc:
        brief = f"{type(exc).__name__}: {exc}".strip()
        for line in traceback.format_exception(exc)[-6:]:
            log.lines.append(line.rstrip())
        with contextlib.suppress(Exception):
            log.finish("FAILED", brief)
        raise
    else:
        log.finish("SUCCEEDED")


def _order_key(name: str) -> tuple[str, str]:
    stem = name.rsplit("/", 1)[-1]
    base = stem.rsplit(".", 1)[0]
    order_step, _, attempt = base.partition(".")
    return (order_step, attempt)


def step_records(run_dir: str) -> list[dict[str, Any]]:
    """Every attempt record under ``logs/`` in DAG order, oldest attempt first."""
    from trainer import storage

    prefix = storage.join(run_dir, LOGS_DIR).rstrip("/") + "/"
    files = sorted((f for f in storage.list_files(prefix) if f.endswith(".json")), key=_order_key)
    return [json.loads(storage.read_text(f)) for f in files]


def step_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per step: final state, attempts, total wall seconds and the last error."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        s = out.setdefault(rec["step"], {"state": "", "attempts": 0, "wall_s": 0.0, "error": ""})
        s["attempts"] += 1
        s["wall_s"] = round(s["wall_s"] + float(rec.get("wall_s", 0.0)), 3)
        s["state"] = rec["state"]
        s["error"] = rec.get("error", "")
    return out


def unfinished_steps(run_dir: str) -> list[str]:
    """Steps with an attempt log but no attempt record: killed (OOM, SIGKILL) mid-step."""
    from trainer import storage

    prefix = storage.join(run_dir, LOGS_DIR).rstrip("/") + "/"
    files = storage.list_files(prefix)
    stems = {f.rsplit(".", 1)[0] for f in files if f.endswith(".json")}
    out = []
    for f in sorted((f for f in files if f.endswith(".log")), key=_order_key):
        if f.rsplit(".", 1)[0] not in stems:
            step = f.rsplit("/", 1)[-1].split(".", 1)[0].split("_", 1)[-1]
            out.append(step)
    return out


def assemble_process_log(run_dir: str) -> str:
    """Concatenate every attempt log in DAG order (the ``process.log`` content)."""
    from trainer import storage

    prefix = storage.join(run_dir, LOGS_DIR).rstrip("/") + "/"
    files = sorted((f for f in storage.list_files(prefix) if f.endswith(".log")), key=_order_key)
    parts = []
    for f in files:
        name = f.rsplit("/", 1)[-1]
        parts.append(f"===== {name} =====\n{storage.read_text(f).rstrip()}\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- manifest + status


def hash_and_size(uri: str) -> tuple[str, int]:
    """sha256 hex digest and size in bytes of one object, streamed (bounded memory)."""
    from trainer import storage

    h = hashlib.sha256()
    size = 0
    with storage.open_read(uri) as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def relpath(run_dir: str, uri: str) -> str:
    """``uri`` relative to ``run_dir`` with forward slashes."""
    base = run_dir.rstrip("/") + "/"
    if uri.startswith(base):
        return uri[len(base) :]
    return os.path.relpath(uri, run_dir).replace(os.sep, "/")


def list_run_files(run_dir: str) -> list[str]:
    """Relative paths of every file in the run folder, sorted."""
    from trainer import storage

    return sorted(relpath(run_dir, f) for f in storage.list_files(run_dir.rstrip("/") + "/"))


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions (``importlib.metadata``); None for a package that is absent."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """``$LLMFT_GIT_COMMIT`` (baked into images), else ``git rev-parse HEAD`` of this checkout."""
    import subprocess
    from pathlib import Path

    env = os.environ.get("LLMFT_GIT_COMMIT", "").strip()
    if env:
        return env
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return None
    try:
        res = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = res.stdout.strip()
    return out if res.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", out) else None


def build_manifest(run_dir: str, info: dict[str, Any]) -> dict[str, Any]:
    """The manifest: ``info`` plus versions, git commit and every file with size and sha256.

    ``manifest.json`` and ``status.txt`` themselves are not listed (they are written after).
    """
    files = []
    for rel in list_run_files(run_dir):
        if rel in (MANIFEST_FILE, STATUS_FILE):
            continue
        digest, size = hash_and_size(f"{run_dir.rstrip('/')}/{rel}")
        files.append({"path": rel, "size": size, "sha256": digest})
    return {
        **info,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "created_utc": utc_now().isoformat(),
        "files": files,
    }


def missing_required(run_dir: str) -> list[str]:
    """Entries of ``REQUIRED_FILES`` absent from the run folder."""
    from trainer import storage

    return [f for f in REQUIRED_FILES if not storage.exists(storage.join(run_dir, f))]


def read_status(run_dir: str) -> str | None:
    """First word of ``status.txt`` (SUCCESS, FAILED or SKIPPED), or None while unfinished."""
    from trainer import storage

    uri = storage.join(run_dir, STATUS_FILE)
    if not storage.exists(uri):
        return None
    words = storage.read_text(uri).split()
    return words[0] if words else None


def read_json(run_dir: str, name: str) -> dict[str, Any] | None:
    """A JSON file of the run folder, or None when absent or unreadable."""
    from trainer import storage

    uri = storage.join(run_dir, name)
    try:
        return json.loads(storage.read_text(uri)) if storage.exists(uri) else None
    except (ValueError, OSError):
        return None


def write_json(uri: str, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON."""
    from trainer import storage

    storage.write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


LogFn = Callable[[str], None]


# --------------------------------------------------------------------------- liveness

LIVE_DIR = ".live"
"""``<output_root>/experiments/.live/<run folder>.json``: the process driving a local run."""
HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 120.0
"""A heartbeat older than this (from another host, where the pid cannot be checked) is dead."""


def live_uri(run_dir: str) -> str:
    """Where the liveness record of ``run_dir`` lives (outside the folder: not in manifests)."""
    from trainer import storage

    base, _, name = run_dir.rstrip("/").rpartition("/")
    return storage.join(base, LIVE_DIR, f"{name}.json")


def write_heartbeat(run_dir: str, pid: int, started: float) -> None:
    """Record (or refresh) that process ``pid`` on this host drives ``run_dir``."""
    import socket

    write_json(
        live_uri(run_dir),
        {
            "pid": pid,
            "host": socket.gethostname(),
            "process_started": started,
            "heartbeat": time.time(),
        },
    )


def liveness(run_dir: str) -> tuple[str, str]:
    """Whether the process that drives an unfinished local run is still there.

    Returns:
        ``("alive", detail)``, ``("dead", detail)`` or ``("unknown", detail)`` (no record: a
        run driven by Vertex or KFP, whose own UI knows).
    """
    import socket

    from trainer import storage

    uri = live_uri(run_dir)
    try:
        rec = json.loads(storage.read_text(uri)) if storage.exists(uri) else None
    except (OSError, ValueError):
        rec = None
    if not rec:
        return "unknown", "no local heartbeat (a Vertex or KFP run: see its UI)"
    age = time.time() - float(rec.get("heartbeat", 0))
    who = f"pid {rec.get('pid')} on {rec.get('host')}"
    if rec.get("host") == socket.gethostname():
        import psutil

        try:
            proc = psutil.Process(int(rec["pid"]))
            same = abs(proc.create_time() - float(rec.get("process_started", 0))) < 2.0
        except (psutil.Error, KeyError, ValueError):
            same = False
        if same:
            return "alive", f"{who}, heartbeat {age:.0f}s ago"
        return "dead", f"its process ({who}) is gone without writing status.txt"
    if age > STALE_SECONDS:
        return "dead", f"no heartbeat from {who} for {age:.0f}s"
    return "alive", f"{who}, heartbeat {age:.0f}s ago"
