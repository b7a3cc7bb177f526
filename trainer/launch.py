"""Data-parallel training in N processes on one machine (one per GPU, or gloo on the CPU).

``train_processes`` starts N copies of this module (``python -m trainer.launch SPEC``) with the
environment contract of ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), which ``accelerate`` reads to join the
process group: NCCL on GPUs, gloo on the CPU. Each worker runs ``trainer.train.train``; the
training loop already shards global batches over ranks, reduces the per-token loss over all
of them and saves from rank 0 only.

Why not ``torchrun`` itself: its agent reports every worker failure as exit 1 and SIGKILLs the
workers 30 s after forwarding SIGTERM, while our contract is "SIGTERM saves a checkpoint and
exits 143" (orchestrators retry 143 and the retry resumes). This launcher forwards SIGTERM and
SIGINT, waits for the checkpoint, and reports a preemption as ``Preempted``; when one worker
fails it stops the others (they would otherwise wait in a collective until its timeout) and
raises that worker's own one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig

PROGRESS_PREFIX = "\x1eprogress "
"""Rank 0 prints ``<prefix><step> <total>`` lines; the launcher turns them into ``progress``."""

FAIL_GRACE_S = 5.0
"""After one worker failed, how long the others get to exit on SIGTERM before SIGKILL."""

EXIT_PREEMPTED = 143


class WorkerFailed(RuntimeError):
    """A training process failed; the message is its own error line, prefixed by its rank."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(
    rank: int, world: int, port: int, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of worker ``rank``: torchrun's variables, one thread share on CPU.

    Args:
        rank: The worker's rank (also its local rank: one machine).
        world: Number of workers.
        port: The rendezvous port on 127.0.0.1.
        base: Environment to extend (default: this process's).

    Returns:
        A new environment mapping.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    # N processes each using every core thrash; torchrun defaults to 1 thread, we share them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    return env


def train_processes(
    num_processes: int,
    cfg: TrainConfig,
    data: str,
    eval_data: str | None,
    output: str,
    checkpoint_dir: str | None,
    *,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train with ``num_processes`` data-parallel workers; same arguments as ``train``.

    N workers with ``batch_size`` b take the optimizer steps of one process with N x b (same
    examples per step, same order), so the effective batch grows with N.

    Args:
        num_processes: Workers to start (>= 1; 1 runs in this process).
        cfg: Training configuration.
        data: Training JSONL.
        eval_data: Held-out JSONL for the eval loss (optional).
        output: Adapter output directory (local or ``gs://``).
        checkpoint_dir: Checkpoint location (optional).
        log: Receives rank 0's log lines.
        progress: Called as ``progress(step, total)`` after each optimizer step.

    Returns:
        Rank 0's ``train_metrics.json`` content.

    Raises:
        trainer.checkpoint.Preempted: SIGTERM/SIGINT arrived; workers saved a checkpoint.
        WorkerFailed: a worker failed (its rank and error line).
    """
    from trainer.train import train

    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if num_processes == 1:
        return train(cfg, data, eval_data, output, checkpoint_dir, log=log, progress=progress)
    with tempfile.TemporaryDirectory(prefix="llmft-launch-") as tmp:
        spec = Path(tmp, "spec.json")
        spec.write_text(
            json.dumps(
                {
                    "config": dataclasses.asdict(cfg),
                    "data": data,
                    "eval_data": eval_data,
                    "output": output,
                    "checkpoint_dir": checkpoint_dir,
                    "result_dir": tmp,
                }
            )
        )
        return _run_workers(num_processes, spec, Path(tmp), log, progress)


def _run_workers(
    n: int,
    spec: Path,
    tmp: Path,
    log: Callable[[str], None],
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    from trainer.checkpoint import Preempted

    port = _free_port()
    procs: list[subprocess.Popen[str]] = []
    try:
        for rank in range(n):
            with open(tmp / f"stderr-{rank}.txt", "w") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "trainer.launch", str(spec)],
                        env=worker_env(rank, n, port),
                        stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                        stderr=err,
                        text=True,
                        # Own session: a terminal's Ctrl-C reaches the launcher only, which
                        # forwards SIGTERM so every worker saves instead of dying mid-step.
                        start_new_session=True,
                    )
                )
    except BaseException:
        for p in procs:  # no orphans from a start that failed half-way
            p.kill()
            p.wait()
        raise
    signalled: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        signalled.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    reader = threading.Thread(target=_relay, args=(procs[0], log, progress), daemon=True)
    reader.start()
    try:
        codes, first = _wait(procs)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        reader.join(timeout=5)
    result = _read_json(tmp / "result-0.json")
    if all(c == 0 for c in codes) and result and "metrics" in result:
        return result["metrics"]
    if signalled:
        # The launcher was told to stop: a preemption whatever the workers died of (one that
        # got SIGTERM before training installed its handler exits -15, the others then fail
        # in a collective). The retry resumes from the newest complete checkpoint.
        pre = (result or {}).get("preempted") or {}
        raise Preempted(int(pre.get("step", 0)), pre.get("uri"))
    # The first process seen failing is the cause; the others then fail in a collective
    # ("Connection closed by peer") and must not hide it.
    order = ([first] if first is not None else []) + [r for r in range(n) if r != first]
    for r in order:
        err = _read_json(tmp / f"result-{r}.json") or {}
        if codes[r] not in (0, EXIT_PREEMPTED) and "error" in err:
            raise WorkerFailed(f"process {r} of {n}: {err['error']}")
    if EXIT_PREEMPTED in codes:
        pre = (result or {}).get("preempted") or {}
        raise Preempted(int(pre.get("step", 0)), pre.get("uri"))
    bad = [r for r in order if codes[r] != 0]
    if not bad:
        raise WorkerFailed(f"process 0 of {n} finished without writing its metrics")
    r = bad[0]
    tail = _last_line(tmp / f"stderr-{r}.txt")
    raise WorkerFailed(f"process {r} of {n} exited {codes[r]}" + (f": {tail}" if tail else ""))


def _wait(procs: list[subprocess.Popen[str]]) -> tuple[list[int], int | None]:
    """Wait for every worker; once one fails (not 0, not 143), stop the others.

    Returns:
        The exit codes and the rank first seen failing (None when none failed).
    """
    failed_at = None
    first: int | None = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return [int(c) for c in codes if c is not None], first
        if failed_at is None and any(c not in (None, 0, EXIT_PREEMPTED) for c in codes):
            first = next(r for r, c in enumerate(codes) if c not in (None, 0, EXIT_PREEMPTED))
            failed_at = time.monotonic()
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        if failed_at is not None and time.monotonic() - failed_at > FAIL_GRACE_S:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)


def _relay(
    proc: subprocess.Popen[str],
    log: Callable[[str], None],
    progress: Callable[[int, int], None] | None,
) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        # Keep draining whatever a callback does: a dead relay would fill rank 0's pipe and
        # block it in print() while the others wait in a collective.
        try:
            if line.startswith(PROGRESS_PREFIX):
                if progress:
                    step, total = line[len(PROGRESS_PREFIX) :].split()
                    progress(int(step), int(total))
            else:
                log(line)
        except Exception:
            continue


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _watch_parent() -> None:
    """SIGTERM this worker when the launcher dies (its own session hides the terminal's)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def worker_main(spec_path: str) -> int:
    """One worker: train from the launcher's spec, leave ``result-<rank>.json``, return the code.

    Args:
        spec_path: The JSON written by ``train_processes``.

    Returns:
        0, 143 (preempted after saving) or 1 (failed; the error line is in the result file).
    """
    from trainer.checkpoint import Preempted
    from trainer.train import train

    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    result = Path(spec["result_dir"], f"result-{rank}.json")
    _watch_parent()
    main = rank == 0

    def log(line: str) -> None:
        if main:
            print(line, flush=True)

    def progress(step: int, total: int) -> None:
        if main:
            print(f"{PROGRESS_PREFIX}{step} {total}", flush=True)

    try:
        metrics = train(
            TrainConfig(**spec["config"]),
            spec["data"],
            spec["eval_data"],
            spec["output"],
            spec["checkpoint_dir"],
            log=log,
            progress=progress,
        )
    except Preempted as exc:
        result.write_text(json.dumps({"preempted": {"step": exc.step, "uri": exc.checkpoint}}))
        return EXIT_PREEMPTED
    except Exception as exc:
        result.write_text(json.dumps({"error": str(exc) or type(exc).__name__}))
        import traceback

        traceback.print_exc()
        return 1
    if main:
        result.write_text(json.dumps({"metrics": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
