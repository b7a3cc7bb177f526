"""``llmft train``: flags mirror TrainConfig, usage errors are one line, a short run works."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.cli_train import EXIT_PREEMPTED, build_config, flag_name
from trainer.config import TrainConfig, field_help

SAMPLE = Path(__file__).resolve().parents[2] / "dataset" / "sample.jsonl"


def _train_command():
    click_app = typer.main.get_command(app)
    return click_app.commands["train"]  # type: ignore[attr-defined]


def test_every_config_field_is_a_flag_with_its_help():
    params = {p.name: p for p in _train_command().params}
    for name, help_text in field_help(TrainConfig).items():
        assert name in params, f"--{name} missing"
        p = params[name]
        assert flag_name(name) in p.opts
        assert help_text in (p.help or "")
    for fixed in ("data", "eval_data", "output", "checkpoint_dir"):
        assert fixed in params
    bools = [f.name for f in dataclasses.fields(TrainConfig) if f.type in ("bool", bool)]
    assert bools
    for name in bools:
        assert f"--no-{name.replace('_', '-')}" in params[name].secondary_opts


def test_given_flags_override_defaults_and_epochs_alone_switch_off_max_steps():
    assert build_config({"lora_r": 8, "merge": None}) == TrainConfig(lora_r=8)
    cfg = build_config({"epochs": 2.0})
    assert cfg.max_steps == 0 and cfg.epochs == 2.0
    assert build_config({"epochs": 2.0, "max_steps": 5}).max_steps == 5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batching", "zigzag"], "batching must be"),
        (["--lora-r", "0"], "lora_r must be"),
    ],
)
def test_bad_values_are_one_line_usage_errors(tmp_path, args, needle):
    result = CliRunner().invoke(
        app, ["train", "--data", "x.jsonl", "--output", str(tmp_path / "o"), *args]
    )
    assert result.exit_code == 2
    err = result.stderr if hasattr(result, "stderr") else result.output
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_missing_data_file_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "--data", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "nope.jsonl" in result.output and "Traceback" not in result.output


@pytest.fixture
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_short_run_writes_the_adapter(tmp_path, one_thread):
    lines = SAMPLE.read_text().splitlines()
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines[:64]) + "\n")
    ev = tmp_path / "eval.jsonl"
    ev.write_text("\n".join(lines[-16:]) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--eval-data",
            str(ev),
            "--output",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--lora-r",
            "4",
            "--log-every",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "step 2/2" in result.output and "eval loss" in result.output
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["eval_loss"] is not None
    assert EXIT_PREEMPTED == 143
