"""Worker processes check a large local file exactly as one process does.

The check without outputs splits a local file into ranges of whole lines; forked workers run
the fast path over theirs and this process merges their verdicts in file order. These tests
shrink the range size so that small generated files (the hostile shapes of
``test_validate_lines``) are split, and require the result (problems, counts, messages, the
probe's empty-split verdicts) to equal the one-process run and the line-by-line reference.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.trainer.test_validate_lines import _file, reference
from trainer import validate as V
from trainer.config import ValidateConfig
from trainer.validate import validate_file


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int | None]]:
    """Ranges of 2 KB, and the (start, end) of every worker started."""
    started: list[tuple[int, int | None]] = []
    real = V._fork_worker

    def counting(path: str, start: int, end: int | None, *args: object) -> object:
        started.append((start, end))
        return real(path, start, end, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(V, "_MIN_RANGE_BYTES", 2048)
    monkeypatch.setattr(V, "_fork_worker", counting)
    assert threading.active_count() == 1, "a thread is running: workers would not be used"
    return started


def _result(s: V.ValidationSummary) -> dict:
    d = s.to_dict()
    d["problems"] = [(p.line, p.code, p.severity, p.message) for p in s.problems]
    return d


def _cfg(**kw: object) -> ValidateConfig:
    base: dict = {"schema_only": True, "on_error": "skip", "max_error_fraction": 1.0}
    return ValidateConfig(**{**base, **kw})


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=_file(),
    dups=st.sampled_from(["error", "warn", "allow"]),
    small=st.booleans(),
    workers=st.sampled_from([2, 3, 7]),
    eval_fraction=st.sampled_from([0.0, 0.3, 0.999999]),
)
def test_workers_find_exactly_what_one_process_finds(
    tmp_path: Path,
    forks: list,
    data: bytes,
    dups: str,
    small: bool,
    workers: int,
    eval_fraction: float,
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    cfg = _cfg(
        duplicates=dups, max_line_bytes=256 if small else 1_000_000, eval_fraction=eval_fraction
    )
    forks.clear()
    one = validate_file(str(path), cfg, workers=1)
    assert not forks
    many = validate_file(str(path), cfg, workers=workers)
    if len(data) >= 2 * 2048:
        assert forks, "the file was not split"
    assert _result(many) == _result(one)
    ref = reference(data, cfg)
    assert sorted((p.line, p.code, p.severity) for p in many.problems) == sorted(ref["problems"])
    assert (many.lines_read, many.accepted, many.blank) == (
        ref["lines_read"],
        ref["accepted"],
        ref["blank"],
    )
    assert many.input_bytes == len(data)


def _rows(n: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"instruction": f"Task {i}.", "input": "", "output": f"Answer {i}."}).encode()
        for i in range(start, start + n)
    ]


def test_a_repeat_in_a_later_range_names_the_first_line(tmp_path: Path, forks: list) -> None:
    lines = _rows(400)
    lines.insert(350, b'{"instruction": "  Task 3.  ", "output": "Answer 3.", "input": ""}')
    lines.insert(200, b'{"instruction": "bad", "output": 5}')
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    s = validate_file(str(path), _cfg(), workers=4)
    assert len(forks) >= 2
    assert [(p.line, p.code) for p in s.problems] == [(201, "wrong-type"), (352, "duplicate")]
    assert "same content as line 4 " in s.problems[1].message
    assert (s.lines_read, s.accepted, s.rejected) == (402, 400, 2)


def test_a_failed_worker_has_its_range_checked_here(
    tmp_path: Path, forks: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _rows(300)
    lines[250] = b'{"instruction": "x", "instruction": "y", "output": "z"}'
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines))  # no final newline
    expected = _result(validate_file(str(path), _cfg(), workers=1))

    def dies(*args: object) -> None:
        os._exit(3)  # the worker dies without writing its verdicts

    monkeypatch.setattr(V, "_scan_range", dies)
    got = validate_file(str(path), _cfg(), workers=3)
    assert len(forks) == 2
    assert _result(got) == expected
    assert [(p.line, p.code) for p in got.problems] == [(251, "duplicate-key")]


def test_outputs_and_remote_sources_stay_in_one_process(tmp_path: Path, forks: list) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(_rows(400)) + b"\n")
    s = validate_file(str(path), _cfg(), str(tmp_path / "out"), workers=4)
    assert not forks and s.accepted == 400 and s.split_computed
    assert validate_file(str(path), _cfg(), workers=4).accepted == 400
    assert forks


def test_negative_workers_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(_rows(3)) + b"\n")
    with pytest.raises(ValueError, match="workers must be >= 0"):
        validate_file(str(path), _cfg(), workers=-1)
