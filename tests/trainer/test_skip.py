"""Skip-if-unchanged detection: the newest SUCCESS run's dataset sha256, failures passed over."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.skip import last_success, previous_success_sha, run_folders, should_skip, skip_reason


def make_run(
    root: Path, name: str, status: str | None, sha: str | None, flat: bool = False
) -> Path:
    run = root / "experiments" / name
    (run / "final_model").mkdir(parents=True)
    (run / "final_model" / "status.txt").write_text("SUCCESS\n")  # a decoy deeper down
    if sha is not None:
        manifest = {"dataset_sha256": sha} if flat else {"dataset": {"sha256": sha}}
        (run / "manifest.json").write_text(json.dumps(manifest))
    if status is not None:
        (run / "status.txt").write_text(status + "\n")
    return run


def test_no_runs_yet(tmp_path):
    assert previous_success_sha(str(tmp_path)) is None
    assert should_skip(str(tmp_path), "abc") is False


def test_newest_success_wins_and_failures_are_passed_over(tmp_path):
    make_run(tmp_path, "finetune_job_20260101_000000_a", "SUCCESS", "old")
    make_run(tmp_path, "finetune_job_20260102_000000_b", "SUCCESS", "new", flat=True)
    make_run(tmp_path, "finetune_job_20260103_000000_c", "FAILED train-lora", "newer")
    make_run(tmp_path, "finetune_job_20260104_000000_d", None, "running")  # unfinished
    make_run(tmp_path, "finetune_job_20260105_000000_e", "SKIPPED", "new")
    assert previous_success_sha(str(tmp_path)) == "new"
    assert should_skip(str(tmp_path), "new") is True
    assert should_skip(str(tmp_path), "newer") is False  # the failed run never counts
    assert should_skip(str(tmp_path), "") is False
    names = [Path(f).name for f in run_folders(str(tmp_path))]
    assert names[0] == "finetune_job_20260105_000000_e" and "final_model" not in names
    folder, sha = last_success(str(tmp_path))
    assert (Path(folder).name, sha) == ("finetune_job_20260102_000000_b", "new")
    assert skip_reason(str(tmp_path), "new") == (
        "dataset sha256 new equals run finetune_job_20260102_000000_b's, the last SUCCESS"
    )
    assert skip_reason(str(tmp_path), "old") is None  # only the newest success counts


def test_success_without_manifest_hash_proves_nothing(tmp_path):
    make_run(tmp_path, "finetune_job_20260101_000000_a", "SUCCESS", "old")
    make_run(tmp_path, "finetune_job_20260102_000000_b", "SUCCESS", None)
    assert previous_success_sha(str(tmp_path)) == "old"


def test_on_gcs(gcs_bucket):
    from trainer import storage

    root = f"gs://{gcs_bucket}/prefix"
    run = f"{root}/experiments/finetune_job_20260101_000000_a"
    storage.write_text(f"{run}/manifest.json", json.dumps({"dataset": {"sha256": "abc"}}))
    storage.write_text(f"{run}/status.txt", "SUCCESS\n")
    assert should_skip(root, "abc") is True
    assert should_skip(f"gs://{gcs_bucket}/other", "abc") is False
