"""The run folder contract: naming, one folder per job, per-attempt logs, manifest, status."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from trainer import runfolder as rf


def test_folder_name_is_utc_timestamp_with_suffix() -> None:
    cest = timezone(timedelta(hours=2))
    when = datetime(2025, 3, 4, 7, 8, 9, tzinfo=cest)
    assert rf.run_folder_name(when, "ab12cd") == "finetune_job_20250304_050809_ab12cd"
    assert rf.run_folder_name(when) == "finetune_job_20250304_050809"
    assert rf.run_folder_name(when, "a/b..c") == "finetune_job_20250304_050809_abc"


def test_claim_is_stable_per_job_and_unique_across_jobs(tmp_path: Path) -> None:
    root = str(tmp_path)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    first = rf.claim_run_dir(root, "llm-lora-finetune-1", "111", now=now)
    # Another task of the same job (or a retry, or the exit task) gets the same folder, even
    # when it runs later.
    again = rf.claim_run_dir(root, "llm-lora-finetune-1", "111", now=now + timedelta(hours=1))
    assert again == first
    assert rf.find_run_dir(root, "llm-lora-finetune-1", "111") == first
    # Two runs started in the same second (e.g. UI + schedule) still differ.
    other = rf.claim_run_dir(root, "llm-lora-finetune-1", "222", now=now)
    assert other != first
    assert re.fullmatch(r"finetune_job_20250101_000000_[0-9a-f]{6}", Path(first).name)
    assert Path(first).parent == tmp_path / "experiments"
    assert rf.find_run_dir(root, "never", "ran") is None


def test_step_log_records_success_and_failure(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    with rf.step_log(run, "upload", echo=False) as log:
        log("hello\nworld")
    with pytest.raises(ValueError, match="bad"), rf.step_log(run, "train-lora", echo=False) as log:
        log("about to fail")
        raise ValueError("bad thing")
    recs = rf.step_records(run)
    assert [(r["step"], r["state"]) for r in recs] == [
        ("upload", "SUCCEEDED"),
        ("train-lora", "FAILED"),
    ]
    assert recs[1]["error"] == "ValueError: bad thing"
    assert recs[0]["wall_s"] >= 0
    text = rf.assemble_process_log(run)
    assert text.index("hello") < text.index("world") < text.index("about to fail")
    assert "ValueError: bad thing" in text


def test_retried_step_adds_an_attempt_without_duplicating(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    for attempt in range(2):
        try:
            with rf.step_log(run, "train-lora", echo=False) as log:
                log(f"attempt body {attempt}")
                if attempt == 0:
                    raise RuntimeError("preempted")
        except RuntimeError:
            pass
    with rf.step_log(run, "init-run", echo=False) as log:
        log("init line")
    text = rf.assemble_process_log(run)
    assert text.count("attempt body 0") == 1
    assert text.count("attempt body 1") == 1
    # DAG order first (init-run before train-lora although written later), then attempt order.
    assert text.index("init line") < text.index("attempt body 0") < text.index("attempt body 1")
    summary = rf.step_summary(rf.step_records(run))
    assert summary["train-lora"]["attempts"] == 2
    assert summary["train-lora"]["state"] == "SUCCEEDED"


def test_manifest_lists_every_file_with_hash(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "final_model").mkdir(parents=True)
    (run / "final_model" / "adapter_model.safetensors").write_bytes(b"\x00" * 1000)
    (run / "config.json").write_text("{}")
    (run / "status.txt").write_text("SUCCESS\n")
    manifest = rf.build_manifest(str(run), {"dataset": {"sha256": "x"}})
    paths = {f["path"]: f for f in manifest["files"]}
    assert set(paths) == {"final_model/adapter_model.safetensors", "config.json"}
    entry = paths["final_model/adapter_model.safetensors"]
    assert entry["size"] == 1000
    assert entry["sha256"] == hashlib.sha256(b"\x00" * 1000).hexdigest()
    assert manifest["packages"]["kfp"]
    assert manifest["dataset"] == {"sha256": "x"}
    json.dumps(manifest)


def test_git_commit_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMFT_GIT_COMMIT", "abc123")
    assert rf.git_commit() == "abc123"


def test_missing_required_and_status(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert set(rf.missing_required(str(run))) == set(rf.REQUIRED_FILES)
    assert rf.read_status(str(run)) is None
    (run / "status.txt").write_text("FAILED train-lora: boom\n")
    assert rf.read_status(str(run)) == "FAILED"


def test_run_folder_on_gcs(gcs_bucket: str) -> None:
    root = f"gs://{gcs_bucket}/prefix"
    run = rf.claim_run_dir(root, "job", "1")
    assert run.startswith(f"gs://{gcs_bucket}/prefix/experiments/finetune_job_")
    assert rf.claim_run_dir(root, "job", "1") == run
    with rf.step_log(run, "upload", echo=False) as log:
        log("to gcs")
    assert "to gcs" in rf.assemble_process_log(run)
    files = {f["path"] for f in rf.build_manifest(run, {})["files"]}
    assert any(p.startswith("logs/") and p.endswith(".log") for p in files)
