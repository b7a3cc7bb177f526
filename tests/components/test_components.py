"""Each component's python_func on tiny inputs: artifacts in, paths to trainer.steps, artifacts out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from kfp import dsl

SAMPLE = Path(__file__).resolve().parents[2] / "dataset" / "sample.jsonl"


def _art(cls: type, path: Path) -> Any:
    return cls(name=path.name, uri=str(path), metadata={})


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str) -> dict[str, Any]:
    """init-run, validate-data and upload on 40 rows (shared by the tests below)."""
    from components.init_run import init_run
    from components.upload import upload
    from components.validate_data import validate_data
    from pipelines.compile import parameter_defaults

    tmp = tmp_path_factory.mktemp("components")
    data = tmp / "small.jsonl"
    data.write_text("\n".join(SAMPLE.read_text().splitlines()[:40]) + "\n")
    params = dict(parameter_defaults())
    params.update(dataset_uri=str(data), output_root=str(tmp / "out"), max_steps=2, batch_size=4)
    init = init_run.python_func(
        job_name="job", job_id="42", image="img:1", target="local", **params
    )
    run_dir, sha, skipped, vcfg, tcfg, ecfg = init
    splits = _art(dsl.Dataset, tmp / "splits")
    report = _art(dsl.Markdown, tmp / "report.md")
    metrics = _art(dsl.Metrics, tmp / "metrics")
    validate_data.python_func(
        dataset_uri=str(data),
        dataset_sha256=sha,
        validate_config=vcfg,
        output_root=str(tmp / "out"),
        splits=splits,
        report=report,
        metrics=metrics,
    )
    data_dir, model_uri, revision = upload.python_func(
        run_dir=run_dir, output_root=str(tmp / "out"), model="llmft-tiny", splits=splits
    )
    return {
        "tmp": tmp,
        "data": data,
        "run_dir": run_dir,
        "sha": sha,
        "skipped": skipped,
        "train_config": tcfg,
        "eval_config": ecfg,
        "splits": splits,
        "report": report,
        "metrics": metrics,
        "data_dir": data_dir,
        "model_uri": model_uri,
        "revision": revision,
    }


def test_init_run_outputs(staged: dict[str, Any]) -> None:
    assert staged["sha"] == hashlib.sha256(staged["data"].read_bytes()).hexdigest()
    assert staged["skipped"] is False  # skip_if_unchanged defaults to off
    assert Path(staged["run_dir"]).name.startswith("finetune_job_")
    assert json.loads(staged["train_config"])["max_steps"] == 2
    config = json.loads(Path(staged["run_dir"], "config.json").read_text())
    assert config["image"] == "img:1" and config["kfp"]["job_id"] == "42"


def test_validate_data_fills_report_and_metrics(staged: dict[str, Any]) -> None:
    assert Path(staged["report"].path).read_text().strip()
    meta = staged["metrics"].metadata
    assert meta["accepted"] == 40 and meta["rejected"] == 0
    assert meta["n_train"] + meta["n_eval"] == 40
    assert staged["splits"].metadata["sha256"] == staged["sha"]


def test_validate_data_fails_on_invalid_data_but_keeps_the_report(tmp_path: Path) -> None:
    from components.validate_data import validate_data
    from trainer.steps import DataInvalid, config_dicts

    lines = SAMPLE.read_text().splitlines()[:20]
    lines[2] = "{not json"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    report = _art(dsl.Markdown, tmp_path / "report.md")
    with pytest.raises(DataInvalid, match=f"{bad}:3: "):
        validate_data.python_func(
            dataset_uri=str(bad),
            dataset_sha256=hashlib.sha256(bad.read_bytes()).hexdigest(),
            validate_config=json.dumps(config_dicts({})["validate"], sort_keys=True),
            output_root=str(tmp_path / "out"),
            splits=_art(dsl.Dataset, tmp_path / "splits"),
            report=report,
            metrics=_art(dsl.Metrics, tmp_path / "metrics"),
        )
    assert Path(report.path).read_text().strip()  # the KFP UI shows why
    assert list((tmp_path / "out" / "experiments" / ".validate-failed").glob("*/data_report.md"))


def test_upload_returns_run_folder_data_and_snapshot(staged: dict[str, Any]) -> None:
    assert staged["data_dir"] == str(Path(staged["run_dir"]) / "data")
    assert Path(staged["data_dir"], "train.jsonl").exists()
    assert Path(staged["model_uri"]).name == staged["revision"]


def test_publish_and_finalize(staged: dict[str, Any], tmp_path: Path) -> None:
    from components.finalize_run import finalize_run
    from components.publish_artifacts import publish_artifacts

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"w")
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "metrics.json").write_text(
        '{"base": {"eval_loss": 2.0}, "tuned": {"eval_loss": 1.0}}'
    )
    (scores / "eval_report.md").write_text("# eval")
    publish_artifacts.python_func(
        run_dir=staged["run_dir"],
        model_uri=staged["model_uri"],
        model_revision=staged["revision"],
        adapter=_art(dsl.Model, adapter),
        scores=_art(dsl.Artifact, scores),
        splits=staged["splits"],
    )
    run = Path(staged["run_dir"])
    assert (run / "final_model" / "adapter_model.safetensors").read_bytes() == b"w"
    assert (run / "data_report.md").read_text() == Path(staged["report"].path).read_text()
    status = dsl.PipelineTaskFinalStatus(
        state="SUCCEEDED",
        pipeline_job_resource_name="x",
        pipeline_task_name="exit-handler-1",
        error_code=None,
        error_message=None,
    )
    out = finalize_run.python_func(
        output_root=str(staged["tmp"] / "out"),
        job_name="job",
        job_id="42",
        image="img:1",
        status=status,
    )
    assert out == staged["run_dir"]
    assert (run / "status.txt").read_text() == "SUCCESS\n"


def test_train_and_evaluate_components(staged: dict[str, Any], tmp_path: Path) -> None:
    from components.evaluate import evaluate
    from components.train_lora import train_lora

    adapter = _art(dsl.Model, tmp_path / "adapter")
    tmetrics = _art(dsl.Metrics, tmp_path / "tm")
    train_lora.python_func(
        run_dir=staged["run_dir"],
        data_dir=staged["data_dir"],
        model_uri=staged["model_uri"],
        train_config=staged["train_config"],
        adapter=adapter,
        metrics=tmetrics,
    )
    assert Path(adapter.path, "adapter_model.safetensors").exists()
    assert tmetrics.metadata and adapter.metadata["base_model"] == staged["model_uri"]
    ecfg = json.loads(staged["eval_config"])
    ecfg.update(max_eval_samples=2, max_new_tokens=4, gate_min_improvement=-1.0)
    scores = _art(dsl.Artifact, tmp_path / "scores")
    emetrics = _art(dsl.Metrics, tmp_path / "em")
    report = _art(dsl.Markdown, tmp_path / "report.md")
    evaluate.python_func(
        run_dir=staged["run_dir"],
        data_dir=staged["data_dir"],
        model_uri=staged["model_uri"],
        eval_config=json.dumps(ecfg),
        train_config=staged["train_config"],
        adapter=adapter,
        scores=scores,
        metrics=emetrics,
        report=report,
    )
    assert "base_eval_loss" in emetrics.metadata and "tuned_eval_loss" in emetrics.metadata
    assert Path(report.path).read_text().strip()
    assert json.loads(Path(scores.path, "metrics.json").read_text())["tuned"]
