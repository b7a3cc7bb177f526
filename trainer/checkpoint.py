"""Checkpoints, resume and SIGTERM preemption.

``<root>/checkpoint-<step>/`` holds the adapter (peft format, so it also loads on its own), the
optimizer and scheduler states, the fp16 loss scaler's state (``scaler.pt``, fp16 only), the
RNG states of python/numpy/torch (``rng_state_<rank>.pt``, one per process), and
``trainer_state.json`` (step, data position, loss history, counters). ``COMPLETE`` is written
last and lists every file with its size and sha256: a checkpoint without it was interrupted
while saving, one whose files do not match it was damaged afterwards (a truncated upload, a
full disk, a bad copy); both are skipped with a warning for the newest intact one. ``root`` may
be local or ``gs://`` (written to a local temp dir, uploaded with ``storage.upload_dir``, then
the marker). After a save, older checkpoints beyond ``keep`` are deleted.

On SIGTERM (what Kubernetes and Vertex send before killing a pod) the handler only sets a
flag; the training loop checks it at every step boundary, saves, and raises ``Preempted`` so the
process exits non-zero (143 in the CLI) and the orchestrator retries the same command, which
resumes from the latest complete checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"checkpoint-(\d+)$")


class CheckpointDamaged(ValueError):
    """A complete-looking checkpoint whose files are missing, truncated or altered."""


class DiskFull(OSError):
    """Writing failed because the file system is full; the message names the path."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ENOSPC, f"No space left on device: {path}")
        self.path = path

    def __str__(self) -> str:
        return f"No space left on device: {self.path}"


def _is_disk_full(exc: BaseException, path: str) -> bool:
    """ENOSPC as the OS, torch's zip writer or safetensors report it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left" in text or "StorageFull" in text:
        return True
    # torch.save on a full disk: "[enforce fail at inline_container.cc] unexpected pos N vs M"
    if "unexpected pos" in text or "enforce fail" in text:
        with contextlib.suppress(OSError):
            return shutil.disk_usage(path).free < 64 * 2**20
    return False


@contextlib.contextmanager
def disk_full_guard(path: str) -> Iterator[None]:
    """Turn a full-disk failure while writing under ``path`` into one ``DiskFull`` line."""
    try:
        yield
    except DiskFull:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        probe = path if os.path.exists(path) else os.path.dirname(os.path.abspath(path))
        if _is_disk_full(exc, probe):
            raise DiskFull(path) from exc
        raise


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
    with a warning (damage is found by ``load_checkpoint``: see ``complete_checkpoints``)."""
    return next(iter(complete_checkpoints(root, log=log)), None)


def complete_checkpoints(root: str, *, log: Callable[[str], None] = print) -> list[tuple[int, str]]:
    """Every checkpoint with its marker, newest first (incomplete ones logged and left out)."""
    out = []
    for step, uri, complete in list_checkpoints(root):
        if complete:
            out.append((step, uri))
        elif not out:
            log(f"warning: skipping incomplete checkpoint {uri} (no {MARKER} marker)")
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _manifest(d: Path) -> dict[str, Any]:
    files = {
        p.relative_to(d).as_posix(): {"size": p.stat().st_size, "sha256": _file_sha256(p)}
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
    return {"name": d.name, "files": files}


def verify(d: Path, uri: str) -> None:
    """Check a (local copy of a) checkpoint against the sizes and sha256 in its marker.

    Markers of older checkpoints hold only the name: those are not verified.

    Raises:
        CheckpointDamaged: A listed file is missing or differs.
    """
    try:
        recorded = json.loads((d / MARKER).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(recorded, dict):
        return
    for rel, want in recorded.get("files", {}).items():
        f = d / rel
        if not f.is_file():
            raise CheckpointDamaged(f"{uri}: {rel} is missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise CheckpointDamaged(f"{uri}: {rel} has {size} bytes, {want['size']} were saved")
        if _file_sha256(f) != want["sha256"]:
            raise CheckpointDamaged(f"{uri}: {rel} does not match its sha256")


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
    d: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    rank: int = 0,
    scaler: Any = None,
    rng_states: dict[int, Any] | None = None,
) -> None:
    import torch

    model.save_pretrained(str(d))
    torch.save(optimizer.state_dict(), d / "optimizer.pt")
    torch.save(scheduler.state_dict(), d / "scheduler.pt")
    if scaler is not None and scaler.is_enabled():
        torch.save(scaler.state_dict(), d / "scaler.pt")
    for r, rng in (rng_states or {rank: capture_rng()}).items():
        torch.save(rng, d / f"rng_state_{r}.pt")
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
    scaler: Any = None,
    rng_states: dict[int, Any] | None = None,
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
        scaler: The fp16 ``GradScaler`` (its state is saved when enabled).
        rng_states: RNG state of every process by rank (default: this process's as rank 0).

    Returns:
        The checkpoint URI.

    Raises:
        DiskFull: The file system filled up; the partial checkpoint is removed (it has no
            marker either way, so it is never resumed from).
    """
    name = f"checkpoint-{step}"
    uri = _join(root, name)
    if _is_gcs(root):
        from trainer import storage

        tmp = Path(tempfile.mkdtemp(prefix="llmft-ckpt-"))
        try:
            with disk_full_guard(str(tmp)):
                _write(
                    tmp, model, optimizer, scheduler, state, scaler=scaler, rng_states=rng_states
                )
                manifest = _manifest(tmp)
            storage.delete_prefix(uri.rstrip("/") + "/")
            storage.upload_dir(str(tmp), uri)
            storage.write_text(_join(uri, MARKER), json.dumps(manifest, indent=1))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        d = Path(_local(uri))
        if d.exists():
            shutil.rmtree(d)
        try:
            with disk_full_guard(str(d)):
                d.mkdir(parents=True)
                _write(d, model, optimizer, scheduler, state, scaler=scaler, rng_states=rng_states)
                (d / MARKER).write_text(json.dumps(_manifest(d), indent=1))
        except DiskFull:
            shutil.rmtree(d, ignore_errors=True)
            raise
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
    uri: str,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    rank: int = 0,
    scaler: Any = None,
) -> dict[str, Any]:
    """Verify a checkpoint, then restore adapter weights, optimizer, scheduler, scaler and RNG.

    Nothing is loaded until every file matched the marker's sizes and sha256.

    Args:
        uri: A complete checkpoint directory (local or ``gs://``).
        model: The peft model (unwrapped) whose adapter weights are overwritten.
        optimizer: Loaded in place.
        scheduler: Loaded in place.
        rank: Process rank (each process restores its own RNG file when present).
        scaler: The fp16 ``GradScaler``, restored when the checkpoint has ``scaler.pt``.

    Returns:
        The saved trainer state (``trainer_state.json``).

    Raises:
        CheckpointDamaged: A file is missing, truncated, altered or unreadable.
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
        verify(d, uri)
        try:
            weights = load_file(str(d / "adapter_model.safetensors"))
            optim_state = torch.load(d / "optimizer.pt", weights_only=False)
            sched_state = torch.load(d / "scheduler.pt", weights_only=False)
            scaler_file = d / "scaler.pt"
            scaler_state = (
                torch.load(scaler_file, weights_only=False) if scaler_file.exists() else None
            )
            rng_file = d / f"rng_state_{rank}.pt"
            if not rng_file.exists():
                rng_file = d / "rng_state_0.pt"
            rng = torch.load(rng_file, weights_only=False)
            state = json.loads((d / STATE_FILE).read_text())
        except (OSError, RuntimeError, ValueError, EOFError) as exc:
            # A checkpoint saved before markers listed files, damaged since: same remedy.
            raise CheckpointDamaged(f"{uri}: unreadable ({type(exc).__name__}: {exc})") from exc
        result = set_peft_model_state_dict(model, weights)
        missing = [k for k in result.unexpected_keys if "lora" in k]
        if missing:
            raise ValueError(f"{uri}: adapter weights do not match the model: {missing[:3]}")
        optimizer.load_state_dict(optim_state)
        scheduler.load_state_dict(sched_state)
        if scaler is not None and scaler.is_enabled() and scaler_state is not None:
            scaler.load_state_dict(scaler_state)
        restore_rng(rng)
        return state
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
