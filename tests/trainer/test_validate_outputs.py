"""What validation writes and decides at the end: raw rejects, empty splits, atomic outputs."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import trainer.validate as validate_module
from trainer.config import ValidateConfig
from trainer.validate import validate_file


def _row(i: int, **extra: object) -> str:
    return json.dumps({"instruction": f"Repeat {i}.", "input": "", "output": str(i), **extra})


def _write(tmp_path: Path, lines: list[str], name: str = "d.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _rejects(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("tiny_model_dir")
def test_token_level_rejects_keep_the_original_line(tmp_path: Path) -> None:
    long_row = json.dumps(
        {"output": " ".join(["story"] * 300), "instruction": "Tell  it.", "source": "web"},
        ensure_ascii=True,
    ).replace(", ", ",   ")
    src = tmp_path / "d.jsonl"
    src.write_bytes((_row(1) + "\r\n" + long_row + "\r\n" + _row(3) + "\r\n").encode())
    out = tmp_path / "o"
    s = validate_file(str(src), ValidateConfig(max_seq_len=64, long_rows="drop"), str(out))
    assert s.dropped_long == 1
    (rej,) = _rejects(out)
    assert rej["line"] == 2 and rej["code"] == "too-long"
    assert rej["raw"] == long_row  # the bytes as read: key order, spacing, the unknown key


@pytest.mark.usefixtures("tiny_model_dir")
def test_token_checks_do_not_print_the_tokenizer_length_warning(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Longer than the tiny model's 2048-token context: the tokenizer's own warning is silenced.
    src = _write(tmp_path, [_row(1), json.dumps({"instruction": "a", "output": "w " * 3000})])
    s = validate_file(src, ValidateConfig(max_seq_len=64))
    assert s.token_stats and s.token_stats["response"]["max"] > 2048
    assert "Token indices sequence length" not in capfd.readouterr().err


@pytest.mark.parametrize("out_dir", [True, False])
def test_no_training_row_is_invalid(tmp_path: Path, out_dir: bool) -> None:
    src = _write(tmp_path, [_row(i) for i in range(300)])
    cfg = ValidateConfig(schema_only=True, eval_fraction=0.999999)
    s = validate_file(src, cfg, str(tmp_path / "o") if out_dir else None)
    assert not s.ok and s.train_empty and s.counts_by_code.get("no-train") == 1
    assert any(r.startswith("no training row") for r in s.reasons)
    if out_dir:
        assert s.n_train == 0 and s.n_eval == 300
        assert "no training row" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize("out_dir", [True, False])
def test_empty_eval_stays_a_warning(tmp_path: Path, out_dir: bool) -> None:
    src = _write(tmp_path, [_row(1)])
    cfg = ValidateConfig(schema_only=True, eval_fraction=1e-9)
    s = validate_file(src, cfg, str(tmp_path / "o") if out_dir else None)
    assert s.ok and s.eval_empty and s.counts_by_code.get("empty-eval") == 1


def test_an_ordinary_split_is_valid_without_out_dir(tmp_path: Path) -> None:
    s = validate_file(
        _write(tmp_path, [_row(i) for i in range(50)]), ValidateConfig(schema_only=True)
    )
    assert s.ok and not s.train_empty and not s.eval_empty and not s.split_computed


def test_outputs_appear_only_when_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o"
    src = _write(tmp_path, [_row(i) for i in range(100)])
    validate_file(src, ValidateConfig(schema_only=True), str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {
        "train.jsonl",
        "eval.jsonl",
        "rejects.jsonl",
        "report.md",
        "summary.json",
    }

    # A second run that dies half-way (a full disk on the eval file) changes nothing there.
    real = validate_module._create

    def full_on_eval(path: Path):
        return open("/dev/full", "wb") if "eval" in path.name else real(path)

    monkeypatch.setattr(validate_module, "_create", full_on_eval)
    src2 = _write(tmp_path, [_row(i) for i in range(20_000)], "big.jsonl")
    with pytest.raises(OSError) as err:
        validate_file(src2, ValidateConfig(schema_only=True), str(out))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(out / "eval.jsonl")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp file left


def test_a_directory_is_not_a_source(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="Is a directory"):
        validate_file(str(tmp_path), ValidateConfig(schema_only=True))
