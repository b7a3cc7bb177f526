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

from trainer import checkpoint
from trainer.checkpoint import MARKER, Preempted, find_latest, list_checkpoints, prune
from trainer.config import TrainConfig
from trainer.train import train

SAMPLE = Path(__file__).resolve().parents[2] / "dataset" / "sample.jsonl"
TOL = 1e-4
N = 24


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two shared cores: more torch threads than free cores makes every step many times slower.
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("data")
    (d / "train.jsonl").write_text("\n".join(SAMPLE.read_text().splitlines()[:120]) + "\n")
    return str(d / "train.jsonl")


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
