"""Checkpoints: SIGTERM -> checkpoint -> resume gives the straight run's adapter.

Tolerance: the resumed adapter must match the straight run within max |diff| <= 1e-4 (on CPU
it is in fact bitwise equal: same data order, optimizer state, scheduler and RNG).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.training import sample_rows
from trainer import checkpoint
from trainer.checkpoint import MARKER, Preempted, find_latest, list_checkpoints, prune
from trainer.config import TrainConfig
from trainer.train import train

TOL = 1e-4
N = 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return sample_rows(tmp_path_factory.mktemp("data"), 120)


CFG = {
    "max_steps": N,
    "batch_size": 4,
    "lora_r": 4,
    "lora_alpha": 8,
    "learning_rate": 5e-3,
    "log_every": 1,
    "save_every": 1000,
    "seed": 11,
}


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**CFG, **kw})


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    metrics = train(cfg(), data, None, str(out), log=lambda _: None)
    return out, metrics


def _max_diff(a, b) -> float:
    from safetensors.torch import load_file

    wa = load_file(str(Path(a) / "adapter_model.safetensors"))
    wb = load_file(str(Path(b) / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_sigterm_then_resume_equals_straight_run(data, tmp_path, straight):
    ck = tmp_path / "ck"
    k = 3
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith(f"step {k}/"):
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled in-process

    with pytest.raises(Preempted) as err:
        train(cfg(), data, None, str(tmp_path / "out"), str(ck), log=log)
    assert err.value.step == k
    assert (ck / f"checkpoint-{k}" / MARKER).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored

    # A newer checkpoint without its marker (killed while saving) must be skipped.
    shutil.copytree(ck / f"checkpoint-{k}", ck / "checkpoint-9")
    (ck / "checkpoint-9" / MARKER).unlink()

    lines.clear()
    m = train(cfg(), data, None, str(tmp_path / "out"), str(ck), log=lines.append)
    assert any("skipping incomplete checkpoint" in x and "checkpoint-9" in x for x in lines)
    assert f"resumed from checkpoint-{k}" in lines
    assert m["resumed_from"] == f"checkpoint-{k}"
    assert m["steps"] == straight[1]["steps"] == N
    assert len(m["loss_per_step"]) == N
    assert m["loss_per_step"] == pytest.approx(straight[1]["loss_per_step"], abs=1e-5)
    assert _max_diff(tmp_path / "out", straight[0]) <= TOL
    # The final checkpoint is kept; pruning removed the older ones (keep_checkpoints=2).
    assert [s for s, _, c in list_checkpoints(str(ck)) if c] == [N, k]


def test_real_sigterm_to_llmft_train_exits_143_and_resumes(data, tmp_path, straight):
    ck = tmp_path / "ck"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in CFG.items()]
    cmd = [
        sys.executable,
        "-c",
        "from pipelines.cli import main; main()",
        "train",
        "--data",
        data,
        "--output",
        str(tmp_path / "out"),
        "--checkpoint-dir",
        str(ck),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    rc = proc.wait(timeout=120)
    out = "".join(seen) + rest
    assert rc == 143, out
    assert "preempted" in out
    latest = find_latest(str(ck))
    assert latest is not None
    k = latest[0]
    assert 2 <= k < N, out
    # Rerunning the same command resumes (in-process here to save an interpreter start).
    lines: list[str] = []
    m = train(cfg(), data, None, str(tmp_path / "out"), str(ck), log=lines.append)
    assert f"resumed from checkpoint-{k}" in lines
    assert m["steps"] == N
    assert m["loss_per_step"] == pytest.approx(straight[1]["loss_per_step"], abs=1e-5)
    assert _max_diff(tmp_path / "out", straight[0]) <= TOL


def _fake_ckpt(root: Path, step: int, complete: bool = True) -> None:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text("{}")
    if complete:
        (d / MARKER).write_text("x")


def test_find_latest_skips_incomplete_and_prune_keeps_the_newest(tmp_path):
    for s in (1, 2, 3, 5):
        _fake_ckpt(tmp_path, s)
    _fake_ckpt(tmp_path, 4, complete=False)
    _fake_ckpt(tmp_path, 7, complete=False)
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name
    warnings: list[str] = []
    assert find_latest(str(tmp_path), log=warnings.append) == (5, str(tmp_path / "checkpoint-5"))
    assert len(warnings) == 1 and "checkpoint-7" in warnings[0]
    prune(str(tmp_path), keep=2, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-3",
        "checkpoint-5",
        "checkpoint-7",
        "checkpoint-x",
    ]
    assert find_latest(str(tmp_path / "missing")) is None


def test_rng_states_round_trip():
    import random

    import numpy as np
    import torch

    state = checkpoint.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_gcs_checkpoints_resume(data, tmp_path, gcs_bucket):
    from trainer import storage

    root = f"gs://{gcs_bucket}/ckpt"
    c = cfg(max_steps=4, save_every=2, keep_checkpoints=1)
    train(c, data, None, str(tmp_path / "a"), root, log=lambda _: None)
    names = storage.list_files(root + "/")
    assert any(n.endswith("checkpoint-4/" + MARKER) for n in names)
    assert not any("checkpoint-2/" in n for n in names)  # pruned to keep_checkpoints=1
    lines: list[str] = []
    m = train(c, data, None, str(tmp_path / "b"), root, log=lines.append)
    assert "resumed from checkpoint-4" in lines and m["steps"] == 4
    assert _max_diff(tmp_path / "a", tmp_path / "b") == 0.0


# --------------------------------------------------------------------------- fp16 loss scaling


def _cpu_scaler(monkeypatch: pytest.MonkeyPatch, overflow_calls: set[int]) -> list[float]:
    """Give train() an enabled loss scaler on CPU (it is fp16-only on GPUs) and make the
    gradients of the given accumulate_gradients calls (1-based) overflow; returns the scales
    seen before each call."""
    import torch

    from trainer import modeling
    from trainer import train as train_mod

    monkeypatch.setattr(
        modeling,
        "grad_scaler",
        lambda amp, device: torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=4),
    )
    original = train_mod.accumulate_gradients
    calls: list[float] = []

    def accumulate(loss_model, micro, accelerator, *, amp_dtype=None, scaler=None):
        calls.append(scaler.get_scale())
        out = original(loss_model, micro, accelerator, amp_dtype=amp_dtype, scaler=scaler)
        if len(calls) in overflow_calls:
            p = next(p for p in loss_model.parameters() if p.requires_grad)
            p.grad.view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(train_mod, "accumulate_gradients", accumulate)
    return calls


def test_an_overflowing_fp16_step_advances_neither_schedule_nor_step_count(
    data, tmp_path, monkeypatch
):
    calls = _cpu_scaler(monkeypatch, {3})
    lines: list[str] = []
    c = cfg(max_steps=6, warmup_ratio=0.0, lr_schedule="linear")
    m = train(c, data, None, str(tmp_path / "o"), log=lines.append)
    assert len(calls) == 7  # six applied updates + the skipped one
    assert m["steps"] == 6 and m["skipped_steps"] == 1
    assert len(m["loss_per_step"]) == len(m["lr_per_step"]) == 6
    # The schedule saw six steps: the linear decay's values for steps 1..6 of 6.
    expected = [c.learning_rate * (1 - s / 6) for s in range(1, 7)]
    assert m["lr_per_step"] == pytest.approx(expected)
    assert calls[3] == calls[2] / 2  # the scale halved after the overflow
    assert any("optimizer step 3 skipped" in x for x in lines)
    assert m["loss_scale"] is not None


def test_scaler_state_is_checkpointed_and_restored(data, tmp_path, monkeypatch):
    import torch

    calls = _cpu_scaler(monkeypatch, {2})
    ck = tmp_path / "ck"
    c = cfg(max_steps=4, save_every=2, warmup_ratio=0.0)
    first = train(c, data, None, str(tmp_path / "a"), str(ck), log=lambda _: None)
    saved = torch.load(ck / "checkpoint-4" / "scaler.pt", weights_only=False)
    assert saved["scale"] == first["loss_scale"] == 2.0**9  # halved once, not grown back
    calls.clear()
    more = cfg(max_steps=6, save_every=2, warmup_ratio=0.0)
    # Resume from checkpoint-4: the scaler starts at the saved scale, not init_scale.
    train(more, data, None, str(tmp_path / "b"), str(ck), log=lambda _: None)
    assert calls[0] == 2.0**9


# --------------------------------------------------------------------------- damage, full disks


def test_a_damaged_complete_checkpoint_falls_back_to_the_previous_one(data, tmp_path):
    ck = tmp_path / "ck"
    c = cfg(max_steps=4, save_every=2, keep_checkpoints=2)
    train(c, data, None, str(tmp_path / "a"), str(ck), log=lambda _: None)
    opt = ck / "checkpoint-4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])  # truncated, marker intact
    lines: list[str] = []
    m = train(
        cfg(max_steps=4, save_every=2), data, None, str(tmp_path / "b"), str(ck), log=lines.append
    )
    assert any("skipping damaged checkpoint" in x and "optimizer.pt" in x for x in lines), lines
    assert m["resumed_from"] == "checkpoint-2"
    assert m["steps"] == 4
    assert _max_diff(tmp_path / "a", tmp_path / "b") <= TOL


@pytest.mark.parametrize("damage", ["delete", "flip", "old-marker-truncated"])
def test_verify_finds_every_kind_of_damage(data, tmp_path, damage):
    ck = tmp_path / "ck"
    train(
        cfg(max_steps=2, save_every=2), data, None, str(tmp_path / "a"), str(ck), log=lambda _: None
    )
    d = ck / "checkpoint-2"
    target = d / "adapter_model.safetensors"
    if damage == "delete":
        target.unlink()
    elif damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[-1] ^= 0xFF
        target.write_bytes(bytes(raw))
    else:  # a marker from before file lists existed: damage is found when loading
        (d / MARKER).write_text("checkpoint-2")
        (d / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    lines: list[str] = []
    m = train(cfg(max_steps=2), data, None, str(tmp_path / "b"), str(ck), log=lines.append)
    assert any("skipping damaged checkpoint" in x for x in lines), lines
    assert m["resumed_from"] is None  # nothing intact: a fresh start, not a crash


def test_full_disk_while_checkpointing_is_one_line_and_leaves_nothing_complete(
    data, tmp_path, monkeypatch
):
    import errno as errno_mod

    import torch

    real_save = torch.save

    def full(obj, f, *a, **k):
        if str(f).endswith("optimizer.pt"):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 663360 vs 663252"
            )
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(
        checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0)
    )
    ck = tmp_path / "ck"
    with pytest.raises(checkpoint.DiskFull) as err:
        train(
            cfg(max_steps=2, save_every=2),
            data,
            None,
            str(tmp_path / "o"),
            str(ck),
            log=lambda _: None,
        )
    assert str(err.value) == f"No space left on device: {ck / 'checkpoint-2'}"
    assert err.value.errno == errno_mod.ENOSPC
    assert not (ck / "checkpoint-2").exists()
    assert find_latest(str(ck)) is None


def test_a_real_enospc_is_one_line(capsys):
    """A real ENOSPC (/dev/full), through the CLI's error handler: one line, exit 1."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    from pipelines.cli_common import friendly_errors
    from trainer.checkpoint import disk_full_guard

    with (
        pytest.raises(SystemExit) as exit_info,
        friendly_errors(),
        disk_full_guard("/dev/full"),
        open("/dev/full", "wb") as fh,
    ):
        fh.write(b"x" * 10)
        fh.flush()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == "error: No space left on device: /dev/full"
