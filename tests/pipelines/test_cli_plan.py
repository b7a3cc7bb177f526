"""``llmft plan``: flags from TrainConfig, exit codes 0 / 1 / 2, --json, the readable table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipelines import cli_plan

QWEN25_7B = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}


@pytest.fixture
def app() -> typer.Typer:
    # Until pipelines/cli.py registers cli_plan, build an app the same way it does.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        pass

    cli_plan.register(app)
    return app


@pytest.fixture
def qwen_dir(tmp_path: Path) -> str:
    d = tmp_path / "qwen7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(QWEN25_7B))
    return str(d)


def _run(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["plan", *args])


def test_json_has_the_promised_keys_and_exit_1_when_it_does_not_fit(app, qwen_dir) -> None:
    r = _run(app, "--model", qwen_dir, "--accelerator", "L4", "--batch-size", "16", "--json")
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout)
    assert d["fits"] is False
    assert isinstance(d["peak_gib"], float) and d["peak_gib"] > d["capacity_gib"]
    assert d["precision"] == "bf16"
    assert isinstance(d["advice"], list)
    assert any("keeps the effective batch" in a for a in d["advice"])


def test_exit_0_when_it_fits_and_t4_is_fp16(app, qwen_dir) -> None:
    r = _run(
        app,
        "--model",
        qwen_dir,
        "--accelerator",
        "T4",
        "--quantization",
        "4bit",
        "--gradient-checkpointing",
        "--batch-size",
        "2",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["fits"] is True and d["precision"] == "fp16" and d["quantization"] == "4bit"
    assert d["batch_size"] == 2 and d["gradient_checkpointing"] is True


def test_train_knobs_are_flags(app, qwen_dir) -> None:
    r = _run(
        app,
        "--model",
        qwen_dir,
        "--accelerator",
        "H100",
        "--max-seq-len",
        "2048",
        "--lora-r",
        "64",
        "--grad-accum",
        "4",
        "--accelerator-count",
        "2",
        "--json",
    )
    d = json.loads(r.stdout)
    assert d["max_seq_len"] == 2048
    assert d["grad_accum"] == 4 and d["accelerator_count"] == 2
    assert d["effective_batch"] == 16 * 4 * 2
    assert d["params"]["trainable"] == 4 * 40_370_176  # r 64 vs the r 16 count


def test_batch_size_auto_keeps_the_effective_batch(app, qwen_dir) -> None:
    r = _run(
        app,
        "--model",
        qwen_dir,
        "--accelerator",
        "L4",
        "--quantization",
        "4bit",
        "--batch-size",
        "auto",
        "--max-seq-len",
        "1024",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["auto_batch"] is True
    assert d["batch_size"] * d["grad_accum"] == 16


def test_human_output_is_a_table_with_verdict_and_advice(app, qwen_dir) -> None:
    r = _run(app, "--model", qwen_dir, "--accelerator", "L4")
    assert r.exit_code == 1
    out = r.stdout
    for needle in (
        "component",
        "base weights",
        "peak",
        "capacity",
        "bf16",
        "DOES NOT FIT",
        "advice:",
    ):
        assert needle in out, out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/model"], "no such model directory"),
        (["--accelerator", "V100"], "unknown accelerator"),
        (["--quantization", "3bit"], "quantization must be none, 4bit or 8bit"),
        (["--batch-size", "many"], "batch_size must be"),
        (["--accelerator", "T4", "--precision", "bf16"], "bf16 is not supported on T4"),
    ],
)
def test_usage_errors_exit_2_with_one_line(app, qwen_dir, args, message) -> None:
    if "--model" not in args:
        args = ["--model", qwen_dir, *args]
    r = _run(app, *args)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in r.output


def test_directory_without_config_json_exits_2(app, tmp_path: Path) -> None:
    r = _run(app, "--model", str(tmp_path))
    assert r.exit_code == 2
    assert "no config.json" in r.stderr
