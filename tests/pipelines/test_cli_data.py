"""``llmft validate`` / ``convert`` / ``model tiny``: exit codes, one-line errors, flags, start-up."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from trainer.config import ValidateConfig

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _rows(n: int) -> str:
    return "".join(
        json.dumps({"instruction": f"Repeat {i}.", "input": "", "output": str(i)}) + "\n"
        for i in range(n)
    )


def test_every_validate_config_field_has_a_flag() -> None:
    import typer.main

    cmd = typer.main.get_command(app)
    validate = cmd.commands["validate"]  # type: ignore[attr-defined]
    opts = {o for p in validate.params for o in p.opts}
    for f in dataclasses.fields(ValidateConfig):
        assert "--" + f.name.replace("_", "-") in opts, f.name
        param = next(p for p in validate.params if p.name == f.name)
        assert param.default == f.default
        assert param.help == f.metadata["help"]


def test_sample_dataset_is_valid() -> None:
    res = runner.invoke(app, ["validate", str(REPO / "dataset" / "sample.jsonl"), "--schema-only"])
    assert res.exit_code == 0, res.output
    assert "VALID" in res.output and "3000" in res.output


def test_invalid_data_exits_1_with_file_line_code(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text(_rows(3) + '{"instruction": "x"}\n')
    res = runner.invoke(app, ["validate", str(src), "--schema-only"])
    assert res.exit_code == 1
    assert f"{src}:4: missing-field: missing key 'output'" in res.output
    assert "Traceback" not in res.output


def test_problems_are_capped(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text("x\n" * 80)
    res = runner.invoke(app, ["validate", str(src), "--schema-only"])
    assert res.exit_code == 1
    assert res.output.count(": invalid-json: ") == 50
    assert "and 30 more problem(s)" in res.output


def test_skip_policy_and_out_dir(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text(_rows(40) + "oops\n")
    out = tmp_path / "out"
    args = ["validate", str(src), "--schema-only", "--on-error", "skip", "--out-dir", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "report.md").exists() and (out / "summary.json").exists()
    res = runner.invoke(app, [*args, "--max-error-fraction", "0.01"])
    assert res.exit_code == 1


def test_json_output(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text(_rows(10))
    res = runner.invoke(app, ["validate", str(src), "--schema-only", "--json"])
    assert res.exit_code == 0
    summary = json.loads(res.stdout)
    assert summary["ok"] and summary["lines_read"] == 10 and summary["balanced"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--on-error", "maybe"], "on_error must be 'fail' or 'skip'"),
        (["--eval-fraction", "1.5"], "eval_fraction must be in [0, 1)"),
        (["--max-line-bytes", "1"], "max_line_bytes must be >= 64"),
    ],
)
def test_bad_flag_values_are_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text(_rows(2))
    res = runner.invoke(app, ["validate", str(src), "--schema-only", *args])
    assert res.exit_code == 2
    assert needle in res.output and "Traceback" not in res.output


def test_missing_file_and_unknown_flag_are_usage_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["validate", str(tmp_path / "nope.jsonl"), "--schema-only"])
    assert res.exit_code == 2 and "nope.jsonl" in res.output
    res = runner.invoke(app, ["validate", "x.jsonl", "--no-such-flag"])
    assert res.exit_code == 2


def test_json_array_says_convert_then_convert_works(tmp_path: Path) -> None:
    src = REPO / "dataset" / "sample_alpaca.json"
    res = runner.invoke(app, ["validate", str(src), "--schema-only"])
    assert res.exit_code == 1
    assert "llmft convert" in res.output and "Traceback" not in res.output
    out = tmp_path / "s.jsonl"
    res = runner.invoke(app, ["convert", str(src), "-o", str(out)])
    n = len(json.loads(src.read_text()))
    assert res.exit_code == 0 and f"wrote {n} rows to {out}" in res.output
    assert runner.invoke(app, ["validate", str(out), "--schema-only"]).exit_code == 0


def test_convert_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    res = runner.invoke(app, ["convert", str(bad), "-o", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 1
    assert "[index 0]: expected an object" in res.output and "Traceback" not in res.output


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    env = {**os.environ, "LLMFT_DEBUG": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pipelines.cli import main; main()",
            "convert",
            str(bad),
            "-o",
            str(tmp_path / "o"),
            "--debug",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_schema_only_does_not_import_torch_or_transformers(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text(_rows(5))
    code = (
        "import sys\n"
        "from pipelines.cli import app\n"
        "try:\n"
        f"    app(['validate', {str(src)!r}, '--schema-only'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'tokenizers', 'kfp', 'google.cloud.storage', 'google.cloud.aiplatform') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert proc.stdout.strip().splitlines()[-1] == "none", proc.stdout


def test_model_tiny_copies_the_cached_model(tmp_path: Path, tiny_model_dir: str) -> None:
    out = tmp_path / "tiny"
    res = runner.invoke(app, ["model", "tiny", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "config.json").exists() and (out / "tokenizer_config.json").exists()
    res = runner.invoke(app, ["model", "tiny"])
    assert res.exit_code == 0 and Path(res.output.strip()).name == Path(tiny_model_dir).name


@pytest.mark.parametrize(
    "args",
    [
        ["d.jsonl"],
        ["d.jsonl", "--schema-only"],
        ["--schema-only", "d.jsonl", "--no-schema-only", "--json"],
        ["d.jsonl", "--eval-fraction", "0.25", "--max-line-bytes=4096", "--on-error", "skip"],
        ["--out-dir", "out", "--debug", "--model=m", "--system-prompt", "Be brief.", "d.jsonl"],
        ["d.jsonl", "--duplicates", "warn", "--unknown-fields", "error", "--max-seq-len", "64"],
        ["--long-rows", "truncate", "--", "-odd-name.jsonl"],
    ],
)
def test_fast_validate_parses_like_typer(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.cli_data as cli_data

    seen: list[dict] = []

    def capture(src: str, **kw: object) -> int:
        seen.append({"src": src, **kw})
        return 0

    monkeypatch.setattr(cli_data, "_validate", capture)
    res = runner.invoke(app, ["validate", *args])
    assert res.exit_code == 0, res.output
    assert cli_data.fast_validate(args) == 0
    assert len(seen) == 2 and seen[0] == seen[1]


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        [],
        ["a.jsonl", "b.jsonl"],
        ["d.jsonl", "--no-such-flag"],
        ["d.jsonl", "--max-line-bytes", "lots"],
        ["d.jsonl", "--eval-fraction"],
        ["d.jsonl", "--eval-fraction", "-0.5"],
        ["d.jsonl", "--json=yes"],
        ["-"],
        ["d.jsonl", "--", "--long-rows", "drop"],
    ],
)
def test_fast_validate_defers_anything_unusual_to_typer(args: list[str]) -> None:
    from pipelines.cli_data import fast_validate

    assert fast_validate(args) is None


def test_validate_process_imports_neither_typer_nor_heavy_libraries(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text(_rows(5) + "{}\n")
    code = (
        "import sys\n"
        f"sys.argv = ['llmft', 'validate', {str(src)!r}, '--schema-only']\n"
        "from pipelines.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "heavy = ('typer', 'pydantic', 'torch', 'transformers', 'kfp', 'google.cloud.storage')\n"
        "print(','.join(m for m in heavy if m in sys.modules) or 'none')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    out = proc.stdout.strip().splitlines()
    assert out[-2:] == ["exit 1", "none"], proc.stdout
    assert f"{src}:6: missing-field" in proc.stdout


def test_main_registers_only_the_owning_module(tmp_path: Path) -> None:
    # `llmft train --help` through main(): only cli_train is imported, and a module with a
    # single command still runs as a subcommand.
    code = (
        "import sys\n"
        "sys.argv = ['llmft', 'train', '--help']\n"
        "from pipelines.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('pipelines.cli_'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert "Usage: llmft train" in proc.stdout
    *_, exit_line, modules = proc.stdout.strip().splitlines()
    assert exit_line == "exit 0"
    loaded = set(modules.split(","))
    assert "pipelines.cli_train" in loaded
    assert not loaded & {f"pipelines.cli_{m}" for m in ("data", "eval", "pipeline", "cloud")}


def _run_main(
    args: list[str], cwd: Path = REPO, env: dict | None = None, pre: str = ""
) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        f"{pre}"
        f"sys.argv = ['llmft', *{args!r}]\n"
        "from pipelines.cli import main\n"
        "main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_validate_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run_main(["validate", str(tmp_path), "--schema-only"])
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path}: is a directory, not a JSONL file"
    res = runner.invoke(app, ["validate", str(tmp_path), "--schema-only", "--json"])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_full_disk_is_one_line_and_leaves_no_outputs(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text(_rows(5000))
    out = tmp_path / "out"
    pre = (
        "import trainer.validate as v\n"
        "v._create = lambda path: open('/dev/full', 'wb')\n"  # every output: a full disk
    )
    proc = _run_main(["validate", str(src), "--schema-only", "--out-dir", str(out)], pre=pre)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: No space left on device: {out / 'train.jsonl'}"], proc.stderr
    assert list(out.iterdir()) == []


def test_no_training_row_exits_1_naming_the_reason(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["validate", str(REPO / "dataset" / "sample.jsonl"), "--schema-only",
         "--eval-fraction", "0.999999"],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "INVALID" in res.output and "invalid: no training row" in res.output


def test_plain_summary_when_not_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text(_rows(3) + '{"instruction": "a", "instruction": "b", "output": "c"}\n')
    proc = _run_main(["validate", str(src), "--schema-only"])
    assert proc.returncode == 1
    assert f"{src}:4: duplicate-key: key 'instruction' given twice" in proc.stdout
    assert f"{src}: INVALID" in proc.stdout and "duplicate-key: 1 (first lines 4)" in proc.stdout
    assert "nothing lost: 4 read = 3 accepted + 1 rejected + 0 blank" in proc.stdout
    assert "rich" not in proc.stderr
