"""Data-parallel training: N gloo processes on the CPU, launched by ``trainer.launch``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.training import SAMPLE, adapter_tensors, sample_rows
from trainer.config import TrainConfig
from trainer.launch import WorkerFailed, train_processes

LLMFT = [sys.executable, "-c", "from pipelines.cli import main; main()"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> str:
    return sample_rows(tmp_path_factory.mktemp("dp"), 160)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_processes_with_batch_8_train_the_adapter_of_one_with_batch_16(rows, tmp_path):
    base = {"max_steps": 4, "grad_accum": 2, "lora_r": 4, "lora_alpha": 8,
            "learning_rate": 5e-3, "seed": 7, "log_every": 1}  # fmt: skip
    quiet = {"log": lambda _: None}
    one = train_processes(1, TrainConfig(batch_size=16, **base), rows, None, str(tmp_path / "1"),
                          None, **quiet)  # fmt: skip
    lines: list[str] = []
    steps: list[tuple[int, int]] = []
    two = train_processes(
        2,
        TrainConfig(batch_size=8, **base),
        rows,
        None,
        str(tmp_path / "2"),
        str(tmp_path / "ck"),
        log=lines.append,
        progress=lambda s, t: steps.append((s, t)),
    )
    assert _max_diff(adapter_tensors(tmp_path / "1"), adapter_tensors(tmp_path / "2")) < 1e-4
    assert two["loss_per_step"] == pytest.approx(one["loss_per_step"], abs=1e-4)
    assert two["supervised_tokens"] == one["supervised_tokens"]
    # Counts are summed over ranks (shards differ by a row), not rank 0's times N. (Padding
    # may differ: each shard pads to its own longest row.)
    assert two["tokens"] == one["tokens"] and two["epochs"] == one["epochs"]
    assert two["processes"] == 2 and one["processes"] == 1
    assert steps == [(s, 4) for s in range(1, 5)]  # rank 0's progress reaches the caller
    assert any("processes=2" in x for x in lines)
    saved = json.loads((tmp_path / "2" / "train_metrics.json").read_text())
    assert saved["processes"] == 2 and saved["steps"] == 4  # rank 0's, not a worker's
    ck = tmp_path / "ck" / "checkpoint-4"
    assert {p.name for p in ck.glob("rng_state_*.pt")} == {"rng_state_0.pt", "rng_state_1.pt"}


def _cli_train(rows: str, out: Path, ck: Path, *extra: str) -> subprocess.Popen:
    args = ["train", "--data", rows, "--output", str(out), "--checkpoint-dir", str(ck),
            "--num-processes", "2", "--batch-size", "4", "--max-steps", "24", "--save-every", "3",
            "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.2", "--seed", "5",
            "--learning-rate", "5e-3", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*LLMFT, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_sigterm_saves_every_rank_exits_143_and_the_rerun_resumes_exactly(rows, tmp_path):
    straight = _cli_train(rows, tmp_path / "a", tmp_path / "ck-a")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    run = _cli_train(rows, tmp_path / "b", tmp_path / "ck-b")
    deadline = time.monotonic() + 240
    while not (tmp_path / "ck-b" / "checkpoint-3" / "COMPLETE").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert "preempted" in err and "rerun the same command to resume" in err
    stopped = max(int(p.name.split("-")[1]) for p in (tmp_path / "ck-b").glob("checkpoint-*"))
    assert 3 <= stopped < 24  # it stopped early, at a step boundary, and saved there
    last = tmp_path / "ck-b" / f"checkpoint-{stopped}"
    assert (last / "COMPLETE").exists()
    r0, r1 = ((last / f"rng_state_{r}.pt").read_bytes() for r in (0, 1))
    assert r0 != r1  # each rank's own dropout stream, not rank 0's copied

    rerun = _cli_train(rows, tmp_path / "b", tmp_path / "ck-b")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"resumed from checkpoint-{stopped}" in out
    # Dropout 0.2 draws random masks: only per-rank RNG restore makes this exact.
    assert _max_diff(adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b")) < 1e-6


def test_a_failing_process_is_one_clear_line(tmp_path):
    one_row = tmp_path / "one.jsonl"
    one_row.write_text(SAMPLE.read_text().splitlines()[0] + "\n")
    res = subprocess.run(
        [
            *LLMFT,
            "train",
            "--data",
            str(one_row),
            "--output",
            str(tmp_path / "o"),
            "--num-processes",
            "2",
            "--max-steps",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 1
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: process ") and "1 rows cannot feed 2 processes" in lines[-1]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o" / "train_metrics.json").exists()


def test_the_process_that_failed_first_is_named_not_a_peer_it_broke(rows, tmp_path, monkeypatch):
    # Rank 1 fails in its first step; rank 0 is left in the gradient all-reduce, fails there
    # ("Connection closed by peer") or is stopped: the error must name rank 1's own cause.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import trainer.train as t\n"
        "    def boom(*a, **k):\n"
        "        raise RuntimeError('rank one broke')\n"
        "    t.accumulate_gradients = boom\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    cfg = TrainConfig(batch_size=4, max_steps=2, lora_r=4, lora_alpha=8)
    with pytest.raises(WorkerFailed, match=r"^process 1 of 2: rank one broke$"):
        train_processes(2, cfg, rows, None, str(tmp_path / "o"), None, log=lambda _: None)


def test_resuming_with_another_process_count_is_refused(rows, tmp_path):
    cfg = TrainConfig(batch_size=4, max_steps=2, save_every=1, lora_r=4, lora_alpha=8)
    ck = str(tmp_path / "ck")
    train_processes(1, cfg, rows, None, str(tmp_path / "o1"), ck, log=lambda _: None)
    more = TrainConfig(batch_size=4, max_steps=4, save_every=1, lora_r=4, lora_alpha=8)
    with pytest.raises(WorkerFailed, match=r"written by 1 training process\(es\), this run has 2"):
        train_processes(2, more, rows, None, str(tmp_path / "o2"), ck, log=lambda _: None)


def test_one_process_runs_in_this_process(rows, tmp_path, monkeypatch):
    monkeypatch.setattr("trainer.launch._run_workers", lambda *a: pytest.fail("spawned"))
    m = train_processes(1, TrainConfig(max_steps=1, batch_size=8), rows, None, str(tmp_path),
                        None, log=lambda _: None)  # fmt: skip
    assert m["processes"] == 1
    with pytest.raises(ValueError, match="num_processes"):
        train_processes(0, TrainConfig(), rows, None, str(tmp_path), None)
