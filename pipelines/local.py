"""Run the whole DAG on this machine through ``kfp.local`` (the embedded default).

Every task runs as a subprocess of the current interpreter (``SubprocessRunner(use_venv=False)``),
so the project's venv is used as is, environment variables (``STORAGE_EMULATOR_HOST``,
``LLMFT_FAULT``, ``HF_TOKEN``) reach the tasks, and retries really happen. The run folder lands
in ``<output_root>/experiments/``; ``output_root`` may be ``gs://`` (the KFP pipeline root, which
kfp.local needs on local disk, then goes to a temporary directory).

kfp.local 2.17 cannot evaluate a ``dsl.If`` on a named output of a multi-output task (it reads
``pipelinechannel--init-run-skipped`` as a parent input, finds nothing and treats the condition
as false, so the guarded tasks never run). ``_conditions_on_task_outputs`` fixes that lookup
for the duration of a local run; Vertex and KFP evaluate the same condition server-side.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

KFP_LOCAL_DIR = ".kfp_local"
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}
"""Exit codes of a local run stopped by a signal (128 + the signal number)."""
"""Pipeline root for kfp.local artifacts, inside a local ``output_root``."""

Event = Callable[[str, str, str], None]
"""``on_event(step, kind, text)``: kind is start, done, failed, retry or log."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([\w-]+)'")
_DONE = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
_RETRY = re.compile(r"Task ([\w-]+) failed \(attempt (\d+)/(\d+)\)")
_STEP_LINE = re.compile(r"^\s*\[([\w-]+)\] (.*)$")


@dataclass
class LocalRunResult:
    """What a local run produced.

    Attributes:
        run_dir: The run folder (None if the run never claimed one).
        status: SUCCESS, FAILED or SKIPPED (first word of status.txt), UNKNOWN without one.
        status_line: The whole status.txt line (SKIPPED and FAILED carry the reason).
        params: The pipeline parameters the run used.
        steps: Per step: state, attempts, wall_s, error (from the run folder's step records).
        metrics: metrics.json (``{"base", "tuned", "gate"}``) when published.
        data: The validation summary staged in ``data/summary.json`` (None when refused).
        train: ``final_model/train_metrics.json`` when published.
        error: error.log content (empty on success).
        wall_s: Wall time of the whole run.
        task_wall_s: Per KFP task, wall seconds including process start-up and imports.
        log_path: The full kfp.local console output.
    """

    run_dir: str | None
    status: str
    params: dict[str, Any]
    status_line: str = ""
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    error: str = ""
    wall_s: float = 0.0
    task_wall_s: dict[str, float] = field(default_factory=dict)
    log_path: str = ""

    @property
    def ok(self) -> bool:
        """True when status.txt says SUCCESS."""
        return self.status == "SUCCESS"

    @property
    def skipped(self) -> bool:
        """True when skip_if_unchanged ended the run early (status.txt says SKIPPED)."""
        return self.status == "SKIPPED"

    @property
    def clean_exit(self) -> bool:
        """SUCCESS or SKIPPED: nothing went wrong (the CLI exits 0)."""
        return self.ok or self.skipped


class LocalRunInterrupted(Exception):
    """A local run was stopped by a signal (or its own process crashed); the run folder was
    finalized FAILED first.

    Attributes:
        reason: ``interrupted by SIGINT``, ``interrupted by SIGTERM`` or the crash.
        run_dir: The run folder (None if init-run had not claimed one).
        exit_code: 130 (SIGINT), 143 (SIGTERM) or 1 (crash).
    """

    def __init__(self, reason: str, run_dir: str | None, exit_code: int) -> None:
        where = f"; {run_dir} marked FAILED" if run_dir else ""
        super().__init__(f"{reason}{where}")
        self.reason = reason
        self.run_dir = run_dir
        self.exit_code = exit_code


class _Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler (like KeyboardInterrupt for SIGINT)."""


class _LiveRun:
    """Learns this run's folder from init-run's receipt and keeps its heartbeat fresh."""

    def __init__(self, receipt: str) -> None:
        import threading

        self.receipt = receipt
        self.run_dir: str | None = None
        self._stop = threading.Event()
        self._started = _process_started()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _LiveRun:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def poll(self) -> str | None:
        if self.run_dir is None and os.path.exists(self.receipt):
            text = open(self.receipt, encoding="utf-8").read().strip()  # noqa: SIM115
            if text:
                self.run_dir = text
                self._beat()
        return self.run_dir

    def _beat(self) -> None:
        from trainer import runfolder as rf

        if self.run_dir:
            with contextlib.suppress(Exception):  # a missed heartbeat is not worth a crash
                rf.write_heartbeat(self.run_dir, os.getpid(), self._started)

    def _loop(self) -> None:
        from trainer import runfolder as rf

        last = 0.0
        while not self._stop.wait(0.5):
            had = self.run_dir
            self.poll()
            if self.run_dir and (had is None or time.time() - last > rf.HEARTBEAT_SECONDS):
                self._beat()
                last = time.time()


def _process_started() -> float:
    import psutil

    return psutil.Process(os.getpid()).create_time()


def _stop_children(timeout: float = 15.0) -> None:
    """Terminate the task subprocesses kfp.local started (a SIGINT from a terminal already
    reached them; a SIGTERM sent to this process alone did not)."""
    import psutil

    children = psutil.Process(os.getpid()).children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _finalize_interrupted(run_dir: str, step: str, reason: str) -> None:
    """Write error.log, process.log, manifest and status.txt FAILED for a stopped local run."""
    import json

    from trainer import runfolder as rf
    from trainer import storage
    from trainer.steps import finalize_step

    cfg_uri = storage.join(run_dir, rf.CONFIG_FILE)
    cfg = json.loads(storage.read_text(cfg_uri)) if storage.exists(cfg_uri) else {}
    kfp = cfg.get("kfp", {})
    root = cfg.get("output_root") or run_dir.rstrip("/").rsplit("/", 2)[0]
    finalize_step(
        root,
        kfp.get("job_name", ""),
        kfp.get("job_id", ""),
        "CANCELLED",
        reason,
        step,
        interrupted=reason,
    )


class _Tap(io.TextIOBase):
    """A stdout replacement that keeps the kfp.local console output and reports events."""

    def __init__(self, sink: io.TextIOBase, on_event: Event | None, echo: bool) -> None:
        self.sink = sink
        self.on_event = on_event
        self.echo = echo
        self.buf = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.sink.write(s)
        if self.echo:
            sys.__stdout__.write(s)
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(s)

    def flush(self) -> None:
        self.sink.flush()

    def _line(self, line: str) -> None:
        if not self.on_event:
            return
        if m := _START.search(line):
            self.on_event(m.group(1), "start", "")
        elif m := _DONE.search(line):
            kind = "done" if m.group(2) == "SUCCESS" else "failed"
            self.on_event(m.group(1), kind, m.group(2))
        elif m := _RETRY.search(line):
            self.on_event(m.group(1), "retry", f"attempt {m.group(2)}/{m.group(3)} failed")
        elif m := _STEP_LINE.match(line):
            self.on_event(m.group(1), "log", m.group(2))


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """Pipeline defaults overlaid with ``params``, checked by name, type and range.

    Args:
        params: Overrides by pipeline parameter name.

    Returns:
        Every parameter with its value for this run.

    Raises:
        trainer.config.ConfigError: Unknown name or an invalid value.
    """
    from pipelines.compile import convert, parameter_defaults, parameter_types
    from trainer.config import ConfigError
    from trainer.steps import config_dicts, resolve_dataset_uri

    types = parameter_types()
    unknown = sorted(set(params) - set(types))
    if unknown:
        raise ConfigError(f"unknown pipeline parameter(s): {', '.join(unknown)}")
    values = dict(parameter_defaults())
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, str) and types[name] is not str:
            value = convert(name, value, types[name])
        values[name] = value
    config_dicts(values)  # range checks now, before any task starts
    uri = resolve_dataset_uri(str(values["dataset_uri"]))
    if "://" not in uri and not os.path.isfile(uri):
        raise FileNotFoundError(f"dataset not found: {values['dataset_uri']}")
    values["dataset_uri"] = uri if "://" in uri else os.path.abspath(uri)
    root = str(values["output_root"])
    values["output_root"] = root if "://" in root else os.path.abspath(root)
    return values


def _pointers(output_root: str) -> set[str]:
    from trainer import runfolder as rf
    from trainer import storage

    prefix = storage.join(output_root, rf.EXPERIMENTS, rf.POINTERS).rstrip("/") + "/"
    try:
        return set(storage.list_files(prefix))
    except (OSError, ValueError):
        return set()


@contextlib.contextmanager
def _pipeline_root(output_root: str) -> Iterator[str]:
    if "://" not in output_root:
        root = os.path.join(output_root, KFP_LOCAL_DIR)
        os.makedirs(root, exist_ok=True)
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="llmft-kfp-") as tmp:
        yield tmp


def run_local(
    *, on_event: Event | None = None, echo: bool = False, **params: Any
) -> LocalRunResult:
    """Run the full pipeline through ``kfp.local`` and read back its run folder.

    Args:
        on_event: Progress callback ``(step, kind, text)`` (kind: start, done, failed, retry,
            log).
        echo: Also stream the raw kfp.local console output to stdout.
        **params: Pipeline parameters (``dataset_uri``, ``model``, ``output_root``,
            hyperparameters, ...); missing ones take the pipeline defaults (the bundled sample,
            the tiny model, ``./runs``).

    Returns:
        The run's ``LocalRunResult`` (``.ok`` tells SUCCESS).

    Raises:
        trainer.config.ConfigError: Unknown parameter or invalid value (nothing ran).
    """
    from kfp import local

    from pipelines.compile import pipeline_for
    from trainer import runfolder as rf
    from trainer.models import prepare_builtin
    from trainer.steps import RECEIPT_ENV

    values = resolve_params(params)
    starts: dict[str, float] = {}
    task_wall: dict[str, float] = {}

    running: list[str] = []

    def track(step: str, kind: str, text: str) -> None:
        if kind == "start":
            starts[step] = time.time()
            running.append(step)
        elif kind in ("done", "failed") and step in starts:
            task_wall[step] = round(task_wall.get(step, 0.0) + time.time() - starts[step], 3)
            if step in running:
                running.remove(step)
        if on_event is not None:
            on_event(step, kind, text)

    # Build/convert a built-in model once here, not inside a task. If that fails, the upload
    # task fails with the same error and the run folder ends FAILED, so nothing is lost.
    with contextlib.suppress(Exception):
        prepare_builtin(str(values["model"]))
    output_root = str(values["output_root"])
    before = _pointers(output_root)
    t0 = time.time()
    receipt_dir = tempfile.mkdtemp(prefix="llmft-receipt-")
    receipt = os.path.join(receipt_dir, "run_dir.txt")
    saved_env = os.environ.get(RECEIPT_ENV)
    os.environ[RECEIPT_ENV] = receipt  # kfp.local tasks inherit the environment
    interrupted: tuple[str, int] | None = None
    try:
        with _pipeline_root(output_root) as proot, _LiveRun(receipt) as live:
            log_path = os.path.join(
                proot if "://" not in output_root else tempfile.gettempdir(),
                f"kfp-local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log",
            )
            local.init(
                runner=local.SubprocessRunner(use_venv=False),
                pipeline_root=proot,
                raise_on_error=False,
            )
            pipe = pipeline_for("local", "none")
            try:
                with (
                    open(log_path, "w", encoding="utf-8") as sink,
                    contextlib.redirect_stdout(_Tap(sink, track, echo)),
                    _quiet_warnings(),
                    _conditions_on_task_outputs(),
                    _sigterm_raises(),
                ):
                    pipe(**values)
            except KeyboardInterrupt:
                interrupted = ("interrupted by SIGINT", SIGNAL_EXIT["SIGINT"])
            except _Terminated:
                interrupted = ("interrupted by SIGTERM", SIGNAL_EXIT["SIGTERM"])
            except Exception as exc:  # kfp.local itself failed: the folder still gets a status
                interrupted = (f"llmft run --local crashed: {type(exc).__name__}: {exc}", 1)
            if interrupted is not None:
                _stop_children()
                run_dir = live.poll()
                step = running[-1] if running else "init-run"
                if run_dir:
                    _finalize_interrupted(run_dir, step, interrupted[0])
                raise LocalRunInterrupted(interrupted[0], run_dir, interrupted[1])
            run_dir = live.poll()
    finally:
        if saved_env is None:
            os.environ.pop(RECEIPT_ENV, None)
        else:
            os.environ[RECEIPT_ENV] = saved_env
        shutil.rmtree(receipt_dir, ignore_errors=True)
    wall = time.time() - t0
    if run_dir is None:
        # An init-run that never claimed a folder (or an older task image): the pointer it
        # wrote, if any, is the only trace.
        new = sorted(_pointers(output_root) - before)
        if len(new) == 1:
            from trainer import storage

            name = storage.read_text(new[0]).strip()
            run_dir = storage.join(output_root, rf.EXPERIMENTS, name)
    result = collect_result(run_dir, values, wall_s=wall, log_path=log_path)
    result.task_wall_s = task_wall
    return result


@contextlib.contextmanager
def _conditions_on_task_outputs() -> Iterator[None]:
    """Let kfp.local resolve ``<task>-<output>`` channels in dsl.If conditions (see module doc).

    Tried first as the output ``<output>`` of task ``<task>`` (every split of the name at a
    hyphen, longest task name first); anything else goes to kfp's own lookup unchanged.
    """
    try:
        from kfp.local.orchestrator.enhanced_dag_orchestrator import ConditionEvaluator
    except ImportError:  # another kfp layout: leave it alone
        yield
        return
    original = ConditionEvaluator.__dict__.get("_resolve_pipeline_channel")
    if original is None:
        yield
        return
    fallback = original.__func__ if isinstance(original, staticmethod) else original

    def resolve(channel_ref: str, io_store: Any) -> Any:
        ref = channel_ref.replace("pipelinechannel--", "", 1)
        if "--" not in ref and "-Output" not in ref and "-" in ref:
            parts = ref.split("-")
            for i in range(len(parts) - 1, 0, -1):
                try:
                    return io_store.get_task_output("-".join(parts[:i]), "-".join(parts[i:]))
                except (KeyError, ValueError):
                    continue
        return fallback(channel_ref, io_store)

    ConditionEvaluator._resolve_pipeline_channel = staticmethod(resolve)
    try:
        yield
    finally:
        ConditionEvaluator._resolve_pipeline_channel = original


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        # kfp.local warns that it ignores accelerator/resource settings; nothing to act on.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # "custom base image in a Python environment": intended, the venv is the image here.
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def collect_result(
    run_dir: str | None, params: dict[str, Any], *, wall_s: float = 0.0, log_path: str = ""
) -> LocalRunResult:
    """Read a finished run folder into a ``LocalRunResult``."""
    from trainer import runfolder as rf
    from trainer import storage

    if run_dir is None:
        return LocalRunResult(None, "UNKNOWN", params, wall_s=wall_s, log_path=log_path)
    status = rf.read_status(run_dir) or "UNKNOWN"
    status_uri = storage.join(run_dir, rf.STATUS_FILE)
    line = storage.read_text(status_uri).strip() if storage.exists(status_uri) else ""
    err_uri = storage.join(run_dir, rf.ERROR_FILE)
    return LocalRunResult(
        run_dir=run_dir,
        status=status,
        params=params,
        status_line=line,
        steps=rf.step_summary(rf.step_records(run_dir)),
        metrics=rf.read_json(run_dir, "metrics.json"),
        data=rf.read_json(run_dir, "data/summary.json"),
        train=rf.read_json(run_dir, "final_model/train_metrics.json"),
        error=storage.read_text(err_uri) if storage.exists(err_uri) else "",
        wall_s=wall_s,
        log_path=log_path,
    )
