"""The exit task as the backends run it: the compiled ``exec-finalize-run`` command, replayed.

Each backend fills the exit task's ``PipelineTaskFinalStatus`` in its own dialect:

- KFP (kubeflow/pipelines ``backend/src/v2/driver/resolve.go``): ``state`` is the MLMD execution
  state of the exit handler's DAG (``COMPLETE``, ``CACHED``, ``FAILED``, ``CANCELED``,
  ``RUNNING``...) and ``error`` is an empty ``google.rpc.Status`` (marshalled as ``{}``).
- Vertex AI Pipelines: ``SUCCEEDED``, ``FAILED`` or ``CANCELLED`` with an error code/message.

The JSON below is what the driver hands the launcher as ``--executor_input`` (camelCase keys,
as protojson marshals them). Runs the container's own ``command`` + ``args`` from the compiled
YAML with ``{{$}}`` substituted, i.e. ``python3 -m kfp.dsl.executor_main ...`` on the
component's embedded source, against finished run folders of real local runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.pipelines.test_local_run import FAST, SAMPLE

KFP_SUCCESS = ("COMPLETE", "CACHED")
KFP_FAILURE = ("FAILED", "CANCELED", "RUNNING", "UNKNOWN", "NEW")
VERTEX_SUCCESS = ("SUCCEEDED",)
VERTEX_FAILURE = ("FAILED", "CANCELLED")
ODD = ("", "PAUSED", "succeeded-ish")


def kfp_status(state: str) -> dict[str, Any]:
    """PipelineTaskFinalStatus as the KFP v2 driver marshals it (error always empty)."""
    return {
        "state": state,
        "pipelineJobResourceName": "llm-lora-finetune-abc12",
        "pipelineTaskName": "exit-handler-1",
        "error": {},
    }


def vertex_status(state: str) -> dict[str, Any]:
    """PipelineTaskFinalStatus as Vertex AI Pipelines sends it."""
    status: dict[str, Any] = {
        "state": state,
        "pipelineJobResourceName": "projects/123/locations/us-central1/pipelineJobs/llm-x",
        "pipelineTaskName": "exit-handler-1",
    }
    if state != "SUCCEEDED":
        status["error"] = {
            "code": 9 if state == "FAILED" else 1,
            "message": "The DAG failed because some tasks failed. The failed tasks are: "
            "[train-lora]."
            if state == "FAILED"
            else "The pipeline was cancelled.",
        }
    return status


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The finalize-run container of the compiled YAML, per target."""
    from pipelines.compile import compile_pipeline

    out = tmp_path_factory.mktemp("pkg")
    found = {}
    for target, acc in (("gke", "T4"), ("vertex", "L4")):
        path = compile_pipeline(
            target,
            acc,
            str(out / f"{target}.yaml"),
            image_repo="europe-docker.pkg.dev/p/llmft",
            param_defaults={"output_root": "gs://bucket"},
        )
        spec = next(yaml.safe_load_all(Path(path).read_text()))
        found[target] = spec["deploymentSpec"]["executors"]["exec-finalize-run"]["container"]
    return found


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str) -> dict[str, str]:
    """Run folders of three real local runs: a success, a skipped run and a failed run."""
    from pipelines.local import run_local

    data = tmp_path_factory.mktemp("data") / "small.jsonl"
    data.write_text("\n".join(SAMPLE.read_text().splitlines()[:60]) + "\n")
    out = tmp_path_factory.mktemp("runs")
    ok = run_local(dataset_uri=str(data), output_root=str(out), **FAST)
    assert ok.ok, ok.error
    skipped = run_local(dataset_uri=str(data), output_root=str(out), skip_if_unchanged=True, **FAST)
    assert skipped.skipped, skipped.status_line
    os.environ["LLMFT_FAULT"] = "upload"
    try:
        failed = run_local(dataset_uri=str(data), output_root=str(out / "f"), **FAST)
    finally:
        del os.environ["LLMFT_FAULT"]
    assert failed.status == "FAILED"
    return {"success": ok.run_dir, "skipped": skipped.run_dir, "failed": failed.run_dir}


def replay(container: dict[str, Any], run_dir: str, status: dict[str, Any], tmp: Path) -> str:
    """Run the compiled exit-task command on ``run_dir``; return the new status.txt line."""
    cfg = json.loads(Path(run_dir, "config.json").read_text())
    tmp.mkdir(parents=True, exist_ok=True)
    executor_input = {
        "inputs": {
            "parameterValues": {
                "output_root": cfg["output_root"],
                "job_name": cfg["kfp"]["job_name"],
                "job_id": cfg["kfp"]["job_id"],
                "image": "europe-docker.pkg.dev/p/llmft/llmft-gpu:0.1.0",
                "status": status,
            }
        },
        "outputs": {
            "parameters": {"Output": {"outputFile": str(tmp / "Output")}},
            "outputFile": str(tmp / "executor_output.json"),
        },
    }
    args = [a.replace("{{$}}", json.dumps(executor_input)) for a in container["args"]]
    # `python3` in the container command is the image's interpreter: here, this venv's.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("LLMFT_FAULT", None)
    proc = subprocess.run(
        [*container["command"], *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp / "executor_output.json").read_text())
    assert out["parameterValues"]["Output"] == run_dir  # the component's return value
    return Path(run_dir, "status.txt").read_text().strip()


def _cases() -> list[tuple[str, str, str, str]]:
    cases = []
    for target, dialect, states, outcome in (
        ("gke", "kfp", KFP_SUCCESS, "SUCCESS"),
        ("gke", "kfp", KFP_FAILURE + ODD, "FAILED"),
        ("vertex", "vertex", VERTEX_SUCCESS, "SUCCESS"),
        ("vertex", "vertex", VERTEX_FAILURE + ODD, "FAILED"),
    ):
        cases += [(target, dialect, s, outcome) for s in states]
    return cases


@pytest.mark.parametrize(("target", "dialect", "state", "outcome"), _cases())
def test_finished_run_status_follows_the_backend_state(
    packages: dict[str, Any],
    finished: dict[str, str],
    tmp_path: Path,
    target: str,
    dialect: str,
    state: str,
    outcome: str,
) -> None:
    status = kfp_status(state) if dialect == "kfp" else vertex_status(state)
    line = replay(packages[target], finished["success"], status, tmp_path)
    error_log = Path(finished["success"], "error.log")
    if outcome == "SUCCESS":
        assert line == "SUCCESS"
        assert not error_log.exists()
        manifest = json.loads(Path(finished["success"], "manifest.json").read_text())
        assert manifest["kfp"]["state"] == state
    else:
        assert line.startswith("FAILED "), line
        text = error_log.read_text()
        assert f"pipeline state: {state}" in text
        # The reason names the state, or the backend's own message when it sent one.
        if dialect == "kfp" or not status.get("error"):
            assert f"pipeline state {state or '(none)'}" in line
        else:
            assert status["error"]["message"] in line


@pytest.mark.parametrize(
    ("target", "status", "outcome"),
    [
        ("gke", kfp_status("COMPLETE"), "SKIPPED"),
        ("gke", kfp_status("CACHED"), "SKIPPED"),
        ("vertex", vertex_status("SUCCEEDED"), "SKIPPED"),
        ("gke", kfp_status("CANCELED"), "FAILED"),
        ("vertex", vertex_status("CANCELLED"), "FAILED"),
    ],
)
def test_skipped_run_ends_skipped_under_both_dialects(
    packages: dict[str, Any],
    finished: dict[str, str],
    tmp_path: Path,
    target: str,
    status: dict[str, Any],
    outcome: str,
) -> None:
    line = replay(packages[target], finished["skipped"], status, tmp_path)
    assert line.split()[0] == outcome, line
    if outcome == "SKIPPED":
        assert "unchanged" in line or "sha256" in line, line


@pytest.mark.parametrize(
    ("target", "status"),
    [("gke", kfp_status("FAILED")), ("vertex", vertex_status("FAILED"))],
)
def test_failed_step_is_named_whatever_the_dialect(
    packages: dict[str, Any],
    finished: dict[str, str],
    tmp_path: Path,
    target: str,
    status: dict[str, Any],
) -> None:
    line = replay(packages[target], finished["failed"], status, tmp_path)
    assert line.startswith("FAILED upload: InjectedFault"), line


def test_a_success_state_never_hides_a_failed_step(
    packages: dict[str, Any], finished: dict[str, str], tmp_path: Path
) -> None:
    line = replay(packages["gke"], finished["failed"], kfp_status("COMPLETE"), tmp_path)
    assert line.startswith("FAILED upload"), line


def test_skip_if_unchanged_finds_a_success_finalized_by_kfp(
    packages: dict[str, Any], finished: dict[str, str], tmp_path: Path
) -> None:
    """The knock-on bug: with only KFP-finalized runs there was never a SUCCESS to compare."""
    from trainer.skip import skip_reason

    replay(packages["gke"], finished["success"], kfp_status("COMPLETE"), tmp_path)
    cfg = json.loads(Path(finished["success"], "config.json").read_text())
    assert skip_reason(cfg["output_root"], cfg["dataset_sha256"])
