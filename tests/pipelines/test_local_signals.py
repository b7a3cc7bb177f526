"""`llmft run --local` as a user drives it: Ctrl-C, SIGTERM, kill -9, two runs at once.

Each case runs the real CLI in its own process group (as a terminal would), on a small
dataset and the tiny model, and reads the run folder and `llmft status` afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipelines.test_local_run import FAST, SAMPLE

pytestmark = pytest.mark.timeout(300)
LLMFT = str(Path(sys.executable).parent / "llmft")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    path.write_text("\n".join(SAMPLE.read_text().splitlines()[:60]) + "\n")
    return str(path)


def _args(data: str, out: Path, **over: object) -> list[str]:
    params = {**FAST, **over}
    args = [LLMFT, "run", "--local", "--verbose", "--data", data, "--output", str(out)]
    for k, v in params.items():
        args += ["--param", f"{k}={v}"]
    return args


def _start(args: list[str], tmp: Path, name: str) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        args,
        stdout=open(log, "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal job
        env=env,
    )
    return proc, log


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {text!r}:\n{log.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout}s:\n{log.read_text()[-3000:]}")


def _run_dir(out: Path) -> Path:
    (run,) = (out / "experiments").glob("finetune_job_*")
    return run


def _status(run: Path) -> tuple[int, str]:
    res = subprocess.run(
        [LLMFT, "status", str(run)], capture_output=True, text=True, timeout=120, check=False
    )
    return res.returncode, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("sig", "code", "to_group"),
    [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_ends_the_run_folder_failed_with_the_step(
    data: str, tmp_path: Path, tiny_model_dir: str, sig: int, code: int, to_group: bool
) -> None:
    out = tmp_path / "runs"
    # Enough steps that train-lora is still running when the signal comes.
    proc, log = _start(_args(data, out, max_steps=400, save_every=1000), tmp_path, "run")
    try:
        _wait_for(log, "[train-lora] training", proc)
        if to_group:
            os.killpg(proc.pid, sig)  # Ctrl-C: the whole foreground group gets SIGINT
        else:
            proc.send_signal(sig)  # `kill PID`: the driver alone
        assert proc.wait(timeout=120) == code, log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    run = _run_dir(out)
    name = signal.Signals(sig).name
    status = (run / "status.txt").read_text().strip()
    assert status == f"FAILED train-lora: interrupted by {name}", status
    error = (run / "error.log").read_text()
    assert "FAILED step: train-lora" in error and f"interrupted by {name}" in error
    assert (run / "manifest.json").exists() and (run / "process.log").exists()
    tail = log.read_text().strip().splitlines()[-1]
    assert tail.startswith(f"error: interrupted by {name}"), tail
    rc, text = _status(run)
    assert rc == 1 and "FAILED" in text, text
    # No task process outlived the run.
    assert subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode != 0


def test_status_tells_a_dead_local_run_from_a_live_one(
    data: str, tmp_path: Path, tiny_model_dir: str
) -> None:
    out = tmp_path / "runs"
    proc, log = _start(_args(data, out, max_steps=400, save_every=1000), tmp_path, "run")
    try:
        _wait_for(log, "[train-lora] training", proc)
        run = _run_dir(out)
        deadline = time.time() + 30
        while not (out / "experiments" / ".live" / f"{run.name}.json").exists():
            assert time.time() < deadline, "no heartbeat record"
            time.sleep(0.2)
        rc, text = _status(run)
        assert rc == 0 and "RUNNING" in text and f"pid {proc.pid}" in text, text
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9: nothing can write a status
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (run / "status.txt").exists()
    rc, text = _status(run)
    assert rc == 1 and "DEAD" in text and "is gone" in text, text


def test_two_runs_into_one_output_root_each_report_their_own_folder(
    data: str, tmp_path: Path, tiny_model_dir: str
) -> None:
    out = tmp_path / "runs"
    a, log_a = _start(_args(data, out, seed=1), tmp_path, "a")
    b, log_b = _start(_args(data, out, seed=2), tmp_path, "b")
    try:
        assert a.wait(timeout=280) == 0, log_a.read_text()[-3000:]
        assert b.wait(timeout=280) == 0, log_b.read_text()[-3000:]
    finally:
        for p in (a, b):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    import json

    seen = {}
    for name, log in (("a", log_a), ("b", log_b)):
        line = next(x for x in log.read_text().splitlines() if x.startswith("run folder: "))
        run = Path(line.removeprefix("run folder: ").strip())
        cfg = json.loads((run / "config.json").read_text())
        seen[name] = (run, cfg["train"]["seed"])
    assert seen["a"][0] != seen["b"][0]
    assert seen["a"][1] == 1 and seen["b"][1] == 2  # each printed the folder of its own run
