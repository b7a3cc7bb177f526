"""Checkpoints, resume and SIGTERM preemption.

``<root>/checkpoint-<step>/`` holds the adapter (peft format, so it also loads on its own), the
optimizer and scheduler states, the RNG states of python/numpy/torch, and ``trainer_state.json``
(step, data position, loss history, counters). ``COMPLETE`` is written last: a checkpoint
without it was interrupted while saving and is skipped (with a warning) on resume. ``root`` may
be local or ``gs://`` (written to a local temp dir, uploaded with ``storage.upload_dir``, then
the marker). After a save, older checkpoints beyond ``keep`` are deleted.

On SIGTERM (what Kubernetes and Vertex send before killing a pod) the handler only sets a
flag; the training loop checks it at every step boundary, saves, and raises ``Preempted`` so the
process exits non-zero (143 in the CLI) and the orchestrator retries the same command, which
resumes from the latest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"checkpoint-(\d+)$")


class Preempted(Exception):
    """Training stopped on SIGTERM after saving ``checkpoint`` at ``step``."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(f"preempted (SIGTERM) at step {step}; saved {checkpoint or 'nothing'}")
        self.step = step
        self.checkpoint = checkpoint


class SigtermFlag:
    """Installs a SIGTERM handler that only records the signal; restores the old one on exit.

    Outside the main thread (where Python cannot install handlers) it stays inert.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> SigtermFlag:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        except ValueError:
            self._installed = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._old)


def _is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def _local(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if _is_gcs(root) else str(Path(_local(root)) / name)


def list_checkpoints(root: str) -> list[tuple[int, str, bool]]:
    """``(step, uri, complete)`` for every ``checkpoint-<step>`` under ``root``, newest first."""
    found: dict[int, tuple[str, bool]] = {}
    if _is_gcs(root):
        from trainer import storage

        prefix = root.rstrip("/") + "/"
        for f in storage.list_files(prefix):
            rel = f[len(prefix) :] if f.startswith(prefix) else f.rsplit(prefix, 1)[-1]
            parts = rel.split("/")
            m = _NAME.match(parts[0]) if len(parts) >= 2 else None
            if not m:
                continue
            step = int(m.group(1))
            uri, done = found.get(step, (prefix + parts[0], False))
            found[step] = (uri, done or parts[1] == MARKER)
    else:
        base = Path(_local(root))
        if base.is_dir():
            for d in base.iterdir():
                m = _NAME.match(d.name)
                if m and d.is_dir():
                    found[int(m.group(1))] = (str(d), (d / MARKER).exists())
    return [(s, u, c) for s, (u, c) in sorted(found.items(), reverse=True)]


def find_latest(root: str, *, log: Callable[[str], None] = print) -> tuple[int, str] | None:
    """The newest complete checkpoint as ``(step, uri)``; newer incomplete ones are skipped
    with a warning."""
    for step, uri, complete in list_checkpoints(root):
        if complete:
            return step, uri
        log(f"warning: skipping incomplete checkpoint {uri} (no {MARKER} marker)")
    return None


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy, torch (and CUDA when present)."""
    import numpy as np
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write(
    d: Path, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any], rank: int = 0
) -> None:
    import torch

    model.save_pretrained(str(d))
    torch.save(optimizer.state_dict(), d / "optimizer.pt")
    torch.save(scheduler.state_dict(), d / "scheduler.pt")
    torch.save(capture_rng(), d / f"rng_state_{rank}.pt")
    (d / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))


def save_checkpoint(
    root: str,
    step: int,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
    log: Callable[[str], None] = print,
) -> str:
    """Write ``checkpoint-<step>`` under ``root`` (marker last) and prune to ``keep``.

    Args:
        root: Local directory or ``gs://`` prefix.
        step: Optimizer steps done.
        model: The peft model (unwrapped); its adapter is saved with ``save_pretrained``.
        optimizer: Its ``state_dict()`` is saved.
        scheduler: Its ``state_dict()`` is saved.
        state: JSON-able trainer state (step, data position, history, counters).
        keep: Complete checkpoints kept after pruning (the newest ones).
        log: Progress messages.

    Returns:
        The checkpoint URI.
    """
    name = f"checkpoint-{step}"
    uri = _join(root, name)
    if _is_gcs(root):
        from trainer import storage

        tmp = Path(tempfile.mkdtemp(prefix="llmft-ckpt-"))
        try:
            _write(tmp, model, optimizer, scheduler, state)
            storage.delete_prefix(uri.rstrip("/") + "/")
            storage.upload_dir(str(tmp), uri)
            storage.write_text(_join(uri, MARKER), name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        d = Path(uri)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        _write(d, model, optimizer, scheduler, state)
        (d / MARKER).write_text(name)
    log(f"saved {name} to {uri}")
    prune(root, keep, log=log)
    return uri


def prune(root: str, keep: int, *, log: Callable[[str], None] = print) -> None:
    """Delete checkpoints older than the ``keep`` newest complete ones, and incomplete ones
    older than the newest complete one (left by a save that was killed)."""
    ckpts = list_checkpoints(root)
    complete = [s for s, _, c in ckpts if c]
    if not complete:
        return
    cutoff = complete[keep - 1] if len(complete) >= keep else complete[-1]
    for step, uri, done in ckpts:
        if step < cutoff or (not done and step < complete[0]):
            if _is_gcs(uri):
                from trainer import storage

                storage.delete_prefix(uri.rstrip("/") + "/")
            else:
                shutil.rmtree(uri, ignore_errors=True)
            log(f"pruned {os.path.basename(uri.rstrip('/'))}")


def load_checkpoint(
    uri: str, *, model: Any, optimizer: Any, scheduler: Any, rank: int = 0
) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and RNG from a checkpoint.

    Args:
        uri: A complete checkpoint directory (local or ``gs://``).
        model: The peft model (unwrapped) whose adapter weights are overwritten.
        optimizer: Loaded in place.
        scheduler: Loaded in place.
        rank: Process rank (each process restores its own RNG file when present).

    Returns:
        The saved trainer state (``trainer_state.json``).
    """
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    tmp = None
    if _is_gcs(uri):
        from trainer import storage

        tmp = tempfile.mkdtemp(prefix="llmft-ckpt-")
        storage.download_dir(uri, tmp)
        d = Path(tmp)
    else:
        d = Path(_local(uri))
    try:
        weights = load_file(str(d / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model, weights)
        missing = [k for k in result.unexpected_keys if "lora" in k]
        if missing:
            raise ValueError(f"{uri}: adapter weights do not match the model: {missing[:3]}")
        optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(d / "scheduler.pt", weights_only=False))
        rng_file = d / f"rng_state_{rank}.pt"
        if not rng_file.exists():
            rng_file = d / "rng_state_0.pt"
        restore_rng(torch.load(rng_file, weights_only=False))
        return json.loads((d / STATE_FILE).read_text())
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
