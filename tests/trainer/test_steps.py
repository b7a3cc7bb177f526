"""trainer.steps without KFP: init, validate, upload, publish and finalize on real files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from trainer import runfolder as rf
from trainer import steps
from trainer.config import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "dataset" / "sample.jsonl"


@pytest.fixture
def small_data(tmp_path: Path) -> str:
    lines = SAMPLE.read_text().splitlines()[:40]
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def bad_data(tmp_path: Path) -> str:
    lines = SAMPLE.read_text().splitlines()[:20]
    lines[4] = '{"instruction": "no output here"}'
    lines[9] = "not json at all"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _params(**over: object) -> dict[str, object]:
    from pipelines.compile import parameter_defaults

    p = dict(parameter_defaults())
    p.pop("dataset_uri")
    p.pop("output_root")
    p.update(over)
    return p


def test_config_dicts_coerces_kfp_numbers_and_checks_ranges() -> None:
    cfg = steps.config_dicts({"lora_r": 8.0, "merge": "true", "max_steps": "12"})
    assert cfg["train"]["lora_r"] == 8 and isinstance(cfg["train"]["lora_r"], int)
    assert cfg["train"]["merge"] is True
    assert cfg["train"]["max_steps"] == 12
    assert cfg["validate"]["max_seq_len"] == cfg["train"]["max_seq_len"]
    with pytest.raises(ConfigError, match="lora_r"):
        steps.config_dicts({"lora_r": 0})
    with pytest.raises(ValueError, match="integer"):
        steps.config_dicts({"lora_r": 2.5})


def test_fault_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMFT_FAULT", "publish, train:preempt-once")
    assert steps.fault_requested("publish")
    assert steps.fault_requested("train", "preempt-once")
    assert not steps.fault_requested("train")
    monkeypatch.delenv("LLMFT_FAULT")
    assert not steps.fault_requested("publish")


def test_init_step_claims_folder_writes_config_and_hashes(tmp_path: Path, small_data: str) -> None:
    out = steps.init_step(str(tmp_path), small_data, _params(max_steps=7), job_name="j", job_id="1")
    run = Path(out["run_dir"])
    assert run.parent == tmp_path / "experiments"
    assert out["dataset_sha256"] == hashlib.sha256(Path(small_data).read_bytes()).hexdigest()
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["max_steps"] == 7
    assert config["dataset_sha256"] == out["dataset_sha256"]
    assert json.loads(out["train_config"])["max_steps"] == 7
    assert [r["state"] for r in rf.step_records(str(run))] == ["SUCCEEDED"]


def test_init_step_bad_parameter_fails_with_a_record(tmp_path: Path, small_data: str) -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        steps.init_step(
            str(tmp_path), small_data, _params(learning_rate=-1.0), job_name="j", job_id="2"
        )
    run = rf.find_run_dir(str(tmp_path), "j", "2")
    assert run is not None
    rec = rf.step_records(run)[-1]
    assert rec["state"] == "FAILED" and "learning_rate" in rec["error"]


def _validate(tmp_path: Path, data: str, **over: object) -> tuple[str, dict]:
    cfg = json.loads(
        steps.init_step(str(tmp_path), data, _params(**over), job_name="j", job_id=data)[
            "validate_config"
        ]
    )
    splits = tmp_path / "splits"
    summary = steps.validate_step(
        data,
        hashlib.sha256(Path(data).read_bytes()).hexdigest(),
        json.dumps(cfg),
        str(splits),
        str(tmp_path),
    )
    return str(splits), summary


def test_validate_then_upload_stages_data_and_snapshots_model(
    tmp_path: Path, small_data: str, tiny_model_dir: str
) -> None:
    splits, summary = _validate(tmp_path, small_data)
    assert summary["ok"] and summary["accepted"] == 40
    # A success parks nothing: only failures need finalize's help.
    assert not (tmp_path / "experiments" / steps.VALIDATION_FAILURES).exists()
    run = rf.find_run_dir(str(tmp_path), "j", small_data)
    out = steps.upload_step(run, splits, "llmft-tiny", str(tmp_path))
    data = Path(out["data_dir"])
    assert data == Path(run) / "data"
    assert (data / "train.jsonl").read_bytes() == Path(splits, "train.jsonl").read_bytes()
    assert (Path(run) / "data_report.md").exists()
    snap = Path(out["model_uri"])
    assert snap.parent == tmp_path / "models" / "llmft-tiny"
    assert snap.name == out["model_revision"] == steps.dir_content_hash(tiny_model_dir)[:16]
    assert (snap / "config.json").exists() and (snap / steps.COMPLETE_MARKER).exists()
    # validate-data's log joined the run's logs; a second upload reuses the snapshot.
    assert "validate-data" in rf.step_summary(rf.step_records(run))
    again = steps.upload_step(run, splits, "llmft-tiny", str(tmp_path))
    assert again["model_uri"] == out["model_uri"]
    assert "model snapshot reused" in rf.assemble_process_log(run)


def test_validate_rejects_changed_content(tmp_path: Path, small_data: str) -> None:
    cfg = json.dumps(steps.config_dicts({})["validate"])
    with pytest.raises(RuntimeError, match="changed during the run"):
        steps.validate_step(small_data, "0" * 64, cfg, str(tmp_path / "splits"))


def test_validate_fails_on_invalid_data_naming_file_and_line(tmp_path: Path, bad_data: str) -> None:
    with pytest.raises(steps.DataInvalid) as exc:
        _validate(tmp_path, bad_data)
    msg = str(exc.value)
    assert "\n" not in msg
    # The validator's reason, then the first problems as file:line: code: message.
    assert msg.index("rejected") < msg.index(f"{bad_data}:5: ") < msg.index(f"{bad_data}:10: ")
    # Outputs are written before the task fails (the KFP UI shows the report)...
    splits = tmp_path / "splits"
    assert "5" in (splits / "report.md").read_text()
    assert json.loads((splits / "summary.json").read_text())["ok"] is False
    rec = next(splits.glob("logs/*.json"))
    assert json.loads(rec.read_text())["state"] == "FAILED"
    # ...and parked for finalize-run, keyed like the cache key (the run folder is no input).
    (parked,) = (tmp_path / "experiments" / steps.VALIDATION_FAILURES).iterdir()
    assert {p.name for p in parked.iterdir()} >= {"data_report.md", "rejects.jsonl", "logs"}
    assert len((parked / "rejects.jsonl").read_text().splitlines()) == 2


def test_finalize_brings_in_a_failed_validation(tmp_path: Path, bad_data: str) -> None:
    with pytest.raises(steps.DataInvalid):
        _validate(tmp_path, bad_data)
    run = Path(rf.find_run_dir(str(tmp_path), "j", bad_data))
    out = steps.finalize_step(str(tmp_path), "j", bad_data, "FAILED", "Task exit-handler-1 failed.")
    assert out["status"] == "FAILED" and out["failed_step"] == "validate-data"
    err = (run / "error.log").read_text()
    assert err.startswith("FAILED step: validate-data\nreason: DataInvalid: ")
    assert f"{bad_data}:5:" in err.splitlines()[1]
    assert (run / "status.txt").read_text().startswith("FAILED validate-data: DataInvalid")
    assert (run / "data_report.md").exists() and (run / "rejects.jsonl").exists()
    assert "INVALID" in (run / "process.log").read_text()
    listed = {f["path"] for f in json.loads((run / "manifest.json").read_text())["files"]}
    assert "data_report.md" in listed


def test_finalize_ignores_a_parked_failure_of_an_earlier_run(tmp_path: Path, bad_data: str) -> None:
    with pytest.raises(steps.DataInvalid):
        _validate(tmp_path, bad_data)
    # A later run on the same data whose validate-data died without a word (OOM, say).
    steps.init_step(str(tmp_path), bad_data, _params(), job_name="later", job_id="2")
    out = steps.finalize_step(str(tmp_path), "later", "2", "FAILED", "validate-data: OOMKilled")
    run = Path(out["run_dir"])
    assert (out["failed_step"], out["error"]) == ("unknown", "validate-data: OOMKilled")
    assert "DataInvalid" not in (run / "error.log").read_text()
    assert not (run / "data_report.md").exists()


def test_upload_still_refuses_a_summary_that_did_not_pass(tmp_path: Path, small_data: str) -> None:
    splits, _ = _validate(tmp_path, small_data)
    summary_path = Path(splits, "summary.json")
    summary = json.loads(summary_path.read_text())
    summary.update(
        ok=False,
        reasons=["1 row(s) rejected (on_error=fail)"],
        problems=[
            f"{small_data}:3: missing_field: no output (warning)",
            f"{small_data}:7: bad_json: x",
        ],
    )
    summary_path.write_text(json.dumps(summary))  # e.g. a result cached by an older version
    run = rf.find_run_dir(str(tmp_path), "j", small_data)
    with pytest.raises(steps.DataInvalid) as exc:
        steps.upload_step(run, splits, "llmft-tiny", str(tmp_path))
    msg = str(exc.value)
    # Errors are named; a warning never made the data invalid.
    assert f"{small_data}:7: bad_json: x" in msg and f"{small_data}:3:" not in msg
    assert not (Path(run) / "data").exists()


def _success_with_sha(root: Path, name: str, sha: str, status: str = "SUCCESS") -> Path:
    run = root / "experiments" / name
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"dataset": {"sha256": sha}}))
    (run / "status.txt").write_text(status + "\n")
    return run


def test_init_skips_when_data_equals_the_last_success(tmp_path: Path, small_data: str) -> None:
    sha = hashlib.sha256(Path(small_data).read_bytes()).hexdigest()
    first = steps.init_step(
        str(tmp_path), small_data, _params(), job_name="s", job_id="0", skip_if_unchanged=True
    )
    assert first["skipped"] is False  # no run yet
    assert not Path(first["run_dir"], rf.SKIP_FILE).exists()
    _success_with_sha(tmp_path, "finetune_job_20200101_000000_aaaaaa", sha)
    _success_with_sha(tmp_path, "finetune_job_20200102_000000_bbbbbb", sha, "FAILED train-lora")
    off = steps.init_step(str(tmp_path), small_data, _params(), job_name="s", job_id="1")
    assert off["skipped"] is False
    out = steps.init_step(
        str(tmp_path), small_data, _params(), job_name="s", job_id="2", skip_if_unchanged="true"
    )
    assert out["skipped"] is True
    reason = Path(out["run_dir"], rf.SKIP_FILE).read_text().strip()
    assert reason == (
        f"dataset sha256 {sha} equals run finetune_job_20200101_000000_aaaaaa's, the last SUCCESS"
    )
    assert json.loads(Path(out["run_dir"], "config.json").read_text())["skip_if_unchanged"]
    assert "SKIPPED" in rf.assemble_process_log(out["run_dir"])

    done = steps.finalize_step(str(tmp_path), "s", "2", "SUCCEEDED")
    run = Path(out["run_dir"])
    assert done["status"] == "SKIPPED" and done["error"] == reason
    assert (run / "status.txt").read_text() == f"SKIPPED {reason}\n"
    assert not (run / "error.log").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "SKIPPED" and manifest["skip_reason"] == reason
    assert manifest["dataset"]["sha256"] == sha
    # A skipped run is never a reference itself; the SUCCESS it pointed at still is.
    from trainer.skip import last_success

    assert Path(last_success(str(tmp_path))[0]).name == "finetune_job_20200101_000000_aaaaaa"


def test_skip_marker_never_hides_a_failure(tmp_path: Path, small_data: str) -> None:
    sha = hashlib.sha256(Path(small_data).read_bytes()).hexdigest()
    _success_with_sha(tmp_path, "finetune_job_20200101_000000_aaaaaa", sha)
    steps.init_step(
        str(tmp_path), small_data, _params(), job_name="s", job_id="3", skip_if_unchanged=True
    )
    out = steps.finalize_step(str(tmp_path), "s", "3", "FAILED", "cancelled")
    assert out["status"] == "FAILED"
    assert Path(out["run_dir"], "status.txt").read_text().startswith("FAILED")


def _fake_success_run(tmp_path: Path) -> str:
    run = rf.claim_run_dir(str(tmp_path), "job", "9")
    for step in ("init-run", "upload", "train-lora", "evaluate"):
        with rf.step_log(run, step, echo=False) as log:
            log(f"{step} did its work")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "train_config.json").write_text('{"model": "snap"}')
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "metrics.json").write_text('{"base": {}, "tuned": {}}')
    (scores / "eval_report.md").write_text("# eval")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "report.md").write_text("# data")
    Path(run, "config.json").write_text('{"train": {"model": "llmft-tiny"}}')
    steps.publish_step(run, str(adapter), str(scores), str(splits), "snap-uri", "rev1")
    return run


def test_finalize_success_writes_manifest_then_status(tmp_path: Path) -> None:
    run = _fake_success_run(tmp_path)
    out = steps.finalize_step(str(tmp_path), "job", "9", "SUCCEEDED")
    assert out["status"] == "SUCCESS" and out["run_dir"] == run
    assert Path(run, "status.txt").read_text() == "SUCCESS\n"
    assert not Path(run, "error.log").exists()
    manifest = json.loads(Path(run, "manifest.json").read_text())
    assert manifest["status"] == "SUCCESS"
    assert manifest["base_model"] == {
        "name": "llmft-tiny",
        "snapshot": "snap-uri",
        "revision": "rev1",
    }
    listed = {f["path"]: f for f in manifest["files"]}
    assert "status.txt" not in listed and "manifest.json" not in listed
    assert "process.log" in listed and "final_model/adapter_model.safetensors" in listed
    for rel, entry in listed.items():
        data = Path(run, rel).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest(), rel
    # status.txt is the newest file: written last.
    newest = max(Path(run).rglob("*"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "status.txt"
    process = Path(run, "process.log").read_text()
    assert process.index("init-run did its work") < process.index("evaluate did its work")
    assert "finalize-run" in process


def test_finalize_never_says_success_for_a_half_written_folder(tmp_path: Path) -> None:
    run = _fake_success_run(tmp_path)
    Path(run, "metrics.json").unlink()
    out = steps.finalize_step(str(tmp_path), "job", "9", "SUCCEEDED")
    assert out["status"] == "FAILED"
    assert Path(run, "status.txt").read_text().startswith("FAILED")
    assert "metrics.json" in Path(run, "error.log").read_text()


def test_finalize_names_the_failed_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = rf.claim_run_dir(str(tmp_path), "job", "3")
    monkeypatch.setenv("LLMFT_FAULT", "train")
    with pytest.raises(steps.InjectedFault):
        steps.train_step(run, "unused", "unused", "{}", str(tmp_path / "out"))
    out = steps.finalize_step(str(tmp_path), "job", "3", "FAILED", "Task exit-handler-1 failed.")
    assert out["failed_step"] == "train-lora"
    err = Path(run, "error.log").read_text()
    assert "FAILED step: train-lora" in err and "InjectedFault" in err
    assert Path(run, "status.txt").read_text().startswith("FAILED train-lora:")


def test_finalize_without_init_still_leaves_a_failed_folder(tmp_path: Path) -> None:
    out = steps.finalize_step(str(tmp_path), "job", "never-started", "FAILED", "quota exceeded")
    run = Path(out["run_dir"])
    assert run.parent == tmp_path / "experiments"
    assert (run / "status.txt").read_text().startswith("FAILED")
    assert "quota exceeded" in (run / "error.log").read_text()
    assert (run / "config.json").exists() and (run / "manifest.json").exists()


def test_publish_fault_leaves_failed_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFT_FAULT", "publish")
    with pytest.raises(steps.InjectedFault):
        _fake_success_run(tmp_path)
    run = rf.find_run_dir(str(tmp_path), "job", "9")
    # KFP would say FAILED here; even a (wrong) SUCCEEDED must not produce SUCCESS.
    out = steps.finalize_step(str(tmp_path), "job", "9", "SUCCEEDED")
    assert out["status"] == "FAILED"
    assert Path(run, "final_model", "adapter_model.safetensors").exists()
    assert Path(run, "status.txt").read_text().startswith("FAILED publish-artifacts")


def test_finalize_reports_a_step_killed_without_record(tmp_path: Path) -> None:
    run = rf.claim_run_dir(str(tmp_path), "job", "oom")
    log = rf.StepLog(run, "train-lora", echo=False)
    log("step 10/300 loss 2.0")
    log.flush()  # the pod is OOM-killed here: a log, but no attempt record
    out = steps.finalize_step(str(tmp_path), "job", "oom", "FAILED", "train-lora: OOMKilled")
    assert out["failed_step"] == "train-lora"
    err = Path(run, "error.log").read_text()
    assert "killed" in err and "OOMKilled" in err


def test_failed_validation_reaches_a_gcs_run_folder(
    gcs_bucket: str, bad_data: str, tmp_path: Path
) -> None:
    from trainer import storage

    root = f"gs://{gcs_bucket}/llmft"
    init = steps.init_step(root, bad_data, _params(), job_name="g", job_id="1")
    with pytest.raises(steps.DataInvalid):
        steps.validate_step(
            bad_data, init["dataset_sha256"], init["validate_config"], str(tmp_path / "s"), root
        )
    out = steps.finalize_step(root, "g", "1", "FAILED", "Task exit-handler-1 failed.")
    run = init["run_dir"]
    assert out["failed_step"] == "validate-data" and f"{bad_data}:5:" in out["error"]
    assert storage.read_text(f"{run}/error.log").startswith("FAILED step: validate-data")
    assert storage.exists(f"{run}/data_report.md") and storage.exists(f"{run}/rejects.jsonl")


# --- the memory preflight in upload -----------------------------------------------------------

QWEN25_7B_CONFIG = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}


def _config_only_model(tmp_path: Path) -> str:
    d = tmp_path / "qwen7b-config-only"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(QWEN25_7B_CONFIG))
    return str(d)


def _train_config(**over: object) -> str:
    import dataclasses

    from trainer.config import TrainConfig

    return json.dumps({**dataclasses.asdict(TrainConfig()), **over})


def test_upload_fails_before_any_gpu_step_when_the_model_cannot_fit(
    tmp_path: Path, small_data: str
) -> None:
    splits, _ = _validate(tmp_path, small_data)
    run = rf.find_run_dir(str(tmp_path), "j", small_data)
    model = _config_only_model(tmp_path)
    from trainer.plan import DoesNotFit

    with pytest.raises(DoesNotFit) as err:
        steps.upload_step(
            run, splits, model, str(tmp_path), train_config=_train_config(), accelerator="T4"
        )
    text = str(err.value)
    assert "does NOT fit" in text and "T4" in text and "fp16" in text  # never bf16 on a T4
    assert "4bit" in text  # the advice names the way out
    # The same model with QLoRA-sized knobs on an 80 GB GPU passes and logs the estimate.
    steps.upload_step(
        run,
        splits,
        model,
        str(tmp_path),
        train_config=_train_config(batch_size=1, gradient_checkpointing=True),
        accelerator="H100",
    )
    assert "preflight:" in rf.assemble_process_log(run)


def test_preflight_only_logs_without_an_accelerator_or_when_told_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _config_only_model(tmp_path)
    lines: list[str] = []
    steps.preflight(model, _train_config(), "none", log=lines.append)
    assert any("preflight:" in line for line in lines)
    monkeypatch.setenv(steps.PREFLIGHT_ENV, "1")
    lines.clear()
    steps.preflight(model, _train_config(), "T4", log=lines.append)
    assert any("does not fit" in line for line in lines)
    # An architecture the planner cannot read is no reason to stop a run.
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "mystery"}))
    monkeypatch.delenv(steps.PREFLIGHT_ENV)
    lines.clear()
    steps.preflight(str(odd), _train_config(), "L4", log=lines.append)
    assert any("no memory estimate" in line for line in lines)
