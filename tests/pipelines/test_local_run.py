"""The whole DAG through kfp.local on the tiny model: the run folder it leaves, per outcome.

One successful run is shared by the assertions on the happy path (module fixture); failure
runs stop early and cost little. The retry/resume run and the gs:// run are full runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "dataset" / "sample.jsonl"
FAST: dict[str, Any] = {
    "max_steps": 5,
    "batch_size": 4,
    "save_every": 2,
    "log_every": 1,
    "max_eval_samples": 2,
    "max_new_tokens": 4,
    "eval_batch_size": 8,
    "max_seq_len": 256,
}
STEPS = [
    "init-run",
    "validate-data",
    "upload",
    "train-lora",
    "evaluate",
    "publish-artifacts",
    "finalize-run",
]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    path.write_text("\n".join(SAMPLE.read_text().splitlines()[:60]) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def success(tmp_path_factory: pytest.TempPathFactory, small_data: str, tiny_model_dir: str) -> Any:
    from pipelines.local import run_local

    out = tmp_path_factory.mktemp("runs")
    events: list[tuple[str, str]] = []
    result = run_local(
        dataset_uri=small_data,
        output_root=str(out),
        on_event=lambda step, kind, text: events.append((step, kind)),
        **FAST,
    )
    result.events = events  # type: ignore[attr-defined]
    return result


def _files(run: str) -> set[str]:
    root = Path(run)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_success_run_folder_contract(success: Any) -> None:
    assert success.ok, success.error
    run = Path(success.run_dir)
    assert run.parent.name == "experiments"
    assert run.name.startswith("finetune_job_")
    files = _files(success.run_dir)
    top = {f.split("/")[0] for f in files}
    assert top == {
        "config.json",
        "data",
        "data_report.md",
        "checkpoints",
        "final_model",
        "metrics.json",
        "eval_report.md",
        "logs",
        "process.log",
        "manifest.json",
        "status.txt",
    }
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json"):
        assert f"final_model/{name}" in files
    assert {"data/train.jsonl", "data/eval.jsonl"} <= files
    assert (run / "status.txt").read_text().split()[0] == "SUCCESS"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["base"]["eval_loss"] > 0 and metrics["tuned"]["eval_loss"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["max_steps"] == 5
    assert (
        config["dataset_sha256"]
        == hashlib.sha256(Path(success.params["dataset_uri"]).read_bytes()).hexdigest()
    )
    assert config["base_model"]["snapshot"].endswith(config["base_model"]["revision"])


def test_success_manifest_hashes_match_files(success: Any) -> None:
    run = Path(success.run_dir)
    manifest = json.loads((run / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == _files(success.run_dir) - {"manifest.json", "status.txt"}
    for rel, entry in listed.items():
        data = (run / rel).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), rel
        assert entry["size"] == len(data)
    assert (
        manifest["dataset"]["sha256"]
        == json.loads((run / "config.json").read_text())["dataset_sha256"]
    )
    assert manifest["kfp"]["job_id"] and manifest["kfp"]["job_name"].startswith("llm-lora-finetune")
    assert manifest["packages"]["torch"] and manifest["image"]


def test_success_steps_logged_in_order(success: Any) -> None:
    assert list(success.steps) == STEPS
    assert all(s["state"] == "SUCCEEDED" and s["attempts"] == 1 for s in success.steps.values())
    assert set(success.task_wall_s) == set(STEPS)
    started = [s for s, kind in success.events if kind == "start"]
    assert started == STEPS
    log = (Path(success.run_dir) / "process.log").read_text()
    positions = [log.index(f"[{s}] started") for s in STEPS]
    assert positions == sorted(positions)


def test_invalid_data_fails_with_error_log_and_exit_code(
    tmp_path: Path, tiny_model_dir: str
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    lines = SAMPLE.read_text().splitlines()[:30]
    lines[6] = '{"instruction": "missing the output"}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(
        app, ["run", "--local", "--data", str(bad), "--output", str(tmp_path / "runs")]
    )
    assert res.exit_code == 1, res.output
    assert "FAILED" in res.output and "Traceback" not in res.output
    (run,) = (tmp_path / "runs" / "experiments").glob("finetune_job_*")
    assert (run / "status.txt").read_text().startswith("FAILED validate-data: DataInvalid")
    err = (run / "error.log").read_text()
    assert err.startswith("FAILED step: validate-data\n")
    reason = err.splitlines()[1]
    assert "rejected" in reason and f"{bad}:7: " in reason
    assert "validate-data: FAILED after 1 attempt(s)" in err  # failed data is not retried
    files = _files(str(run))
    assert "data_report.md" in files and "rejects.jsonl" in files
    assert "metrics.json" not in files and not any(f.startswith("final_model/") for f in files)
    assert "upload" not in (run / "process.log").read_text()  # nothing ran after validate
    assert "manifest.json" in files and "process.log" in files


def _new_run(root: Path, known: set[Path]) -> Path:
    (run,) = set((root / "experiments").glob("finetune_job_*")) - known
    return run


def test_skip_if_unchanged_skips_same_data_and_runs_changed_data(
    success: Any, small_data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.local import run_local

    assert success.ok, success.error
    root = Path(success.run_dir).parent.parent
    first = Path(success.run_dir)
    known = set((root / "experiments").glob("finetune_job_*"))
    fast = [f"--param={k}={v}" for k, v in FAST.items()]
    # Same data, same output root: the CLI shows SKIPPED and exits 0.
    res = CliRunner().invoke(
        app,
        [
            "run",
            "--local",
            "--data",
            small_data,
            "--output",
            str(root),
            "--skip-if-unchanged",
            *fast,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "SKIPPED" in res.output and first.name in res.output.replace("\n", "")
    second = _new_run(root, known)
    reason = f"dataset sha256 {_sha(small_data)} equals run {first.name}'s"
    assert (second / "status.txt").read_text().startswith(f"SKIPPED {reason}, the last SUCCESS")
    files = _files(str(second))
    assert not any(f.startswith(("final_model/", "data/", "checkpoints/")) for f in files)
    assert "error.log" not in files and "skipped.txt" in files
    log = (second / "process.log").read_text()
    for step in ("validate-data", "upload", "train-lora", "evaluate", "publish-artifacts"):
        assert f"[{step}]" not in log, step
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["status"] == "SKIPPED" and manifest["dataset"]["sha256"] == _sha(small_data)
    assert set(manifest["steps"]) == {"init-run", "finalize-run"}

    # One more row: new content, so the guarded steps run. Cheap: an injected fault stops the
    # run at upload, after validate-data has proved the branch was taken.
    changed = tmp_path / "changed.jsonl"
    extra = {"instruction": "Name a colour of the sky.", "input": "", "output": "Blue."}
    changed.write_text(Path(small_data).read_text() + json.dumps(extra) + "\n")
    monkeypatch.setenv("LLMFT_FAULT", "upload")
    third = run_local(
        dataset_uri=str(changed), output_root=str(root), skip_if_unchanged=True, **FAST
    )
    assert third.steps["validate-data"]["state"] == "SUCCEEDED"
    assert third.steps["upload"]["state"] == "FAILED" and "InjectedFault" in third.error
    assert not Path(third.run_dir, "skipped.txt").exists()
    assert "the data differs" in Path(third.run_dir, "process.log").read_text()


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_fault_in_train_is_retried_then_failed(
    tmp_path: Path, small_data: str, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: str
) -> None:
    from pipelines.local import run_local

    monkeypatch.setenv("LLMFT_FAULT", "train")
    result = run_local(dataset_uri=small_data, output_root=str(tmp_path), **FAST)
    assert result.status == "FAILED"
    assert result.steps["train-lora"] == {
        "state": "FAILED",
        "attempts": 2,
        "wall_s": result.steps["train-lora"]["wall_s"],
        "error": result.steps["train-lora"]["error"],
    }
    assert "InjectedFault" in result.error and "FAILED step: train-lora" in result.error
    files = _files(result.run_dir)
    assert not any(f.startswith("final_model/") for f in files)
    assert "evaluate" not in result.steps


def test_cli_rejects_bad_hyperparameter_before_running(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    res = CliRunner().invoke(
        app, ["run", "--local", "--output", str(tmp_path), "--param", "lora_r=0"]
    )
    assert res.exit_code == 2
    assert "lora_r" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "experiments").exists()


def test_preempted_train_resumes_from_checkpoint(
    tmp_path: Path, small_data: str, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: str
) -> None:
    from pipelines.local import run_local

    monkeypatch.setenv("LLMFT_FAULT", "train:preempt-once")
    result = run_local(
        dataset_uri=small_data, output_root=str(tmp_path), **{**FAST, "max_steps": 8}
    )
    assert result.ok, result.error
    assert result.steps["train-lora"]["attempts"] == 2
    log = (Path(result.run_dir) / "process.log").read_text()
    assert "simulated preemption" in log
    assert "resumed from checkpoint-" in log
    assert result.train["resumed_from"].startswith("checkpoint-")


def test_output_to_gcs(gcs_bucket: str, small_data: str, tiny_model_dir: str) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from trainer import runfolder as rf
    from trainer import storage

    root = f"gs://{gcs_bucket}/llmft"
    res = CliRunner().invoke(
        app,
        ["run", "--local", "--data", small_data, "--output", root]
        + [f"--param={k}={v}" for k, v in {**FAST, "max_steps": 3}.items()],
    )
    assert res.exit_code == 0, res.output
    assert f"run folder: {root}/experiments/finetune_job_" in res.output.replace("\n", "")
    (ptr,) = storage.list_files(f"{root}/experiments/.runs/")
    run = f"{root}/experiments/{storage.read_text(ptr).strip()}"
    assert rf.read_status(run) == "SUCCESS"
    manifest = json.loads(storage.read_text(f"{run}/manifest.json"))
    for entry in manifest["files"][:5]:
        assert storage.sha256(f"{run}/{entry['path']}") == entry["sha256"]
    assert storage.exists(f"{run}/final_model/adapter_model.safetensors")
    assert any("/models/llmft-tiny/" in f for f in storage.list_files(f"{root}/models/"))
