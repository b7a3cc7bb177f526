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
def forks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int | None, int]]:
    """Ranges of 2 KB, and the (start, end, pid) of every worker started.

    The test process may run idle helper threads (servers of other tests' fixtures); they
    touch nothing a worker uses, so the thread guard is lifted here (it is tested below).
    """
    started: list[tuple[int, int | None, int]] = []
    real = V._fork_worker

    def counting(path: str, start: int, end: int | None, *args: object) -> object:
        pid, spool = real(path, start, end, *args)  # type: ignore[arg-type]
        started.append((start, end, pid))
        return pid, spool

    monkeypatch.setattr(V, "_MIN_RANGE_BYTES", 2048)
    monkeypatch.setattr(V, "_fork_worker", counting)
    monkeypatch.setattr(V, "_threads_running", lambda: False)
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


def _jsonl(tmp_path: Path, lines: list[bytes], final_newline: bool = True) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
    return path


def test_a_repeat_in_a_later_range_names_the_first_line(tmp_path: Path, forks: list) -> None:
    lines = _rows(400)
    lines.insert(350, b'{"instruction": "  Task 3.  ", "output": "Answer 3.", "input": ""}')
    lines.insert(200, b'{"instruction": "bad", "output": 5}')
    path = _jsonl(tmp_path, lines)
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
    path = _jsonl(tmp_path, lines, final_newline=False)
    expected = _result(validate_file(str(path), _cfg(), workers=1))

    def dies(*args: object) -> None:
        os._exit(3)  # the worker dies without writing its verdicts

    monkeypatch.setattr(V, "_scan_range", dies)
    got = validate_file(str(path), _cfg(), workers=3)
    assert len(forks) == 2
    assert _result(got) == expected
    assert [(p.line, p.code) for p in got.problems] == [(251, "duplicate-key")]


def test_outputs_and_remote_sources_stay_in_one_process(tmp_path: Path, forks: list) -> None:
    path = _jsonl(tmp_path, _rows(400))
    s = validate_file(str(path), _cfg(), str(tmp_path / "out"), workers=4)
    assert not forks and s.accepted == 400 and s.split_computed
    assert validate_file(str(path), _cfg(), workers=4).accepted == 400
    assert forks


def test_negative_workers_are_refused(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, _rows(3))
    with pytest.raises(ValueError, match="workers must be >= 0"):
        validate_file(str(path), _cfg(), workers=-1)


@pytest.mark.parametrize("lead", [b"", b"not json\n" + b"\n".join(_rows(60)) + b"\n"])
def test_a_long_last_line_without_newline_loses_nothing(
    tmp_path: Path, forks: list, lead: bytes
) -> None:
    # No line starts after the first cut point: the ranges collapse, the first is still read.
    path = tmp_path / "d.jsonl"
    tail = b'{"instruction": "long", "output": "' + b"y" * 9000 + b'"}'
    path.write_bytes(lead + (tail if lead else b"y" * 9000))
    cfg = _cfg(on_error="fail")
    one = validate_file(str(path), cfg, workers=1)
    many = validate_file(str(path), cfg, workers=4)
    assert _result(many) == _result(one)
    assert not many.ok and many.problems[0].line == 1 and many.input_bytes == len(path.read_bytes())


def test_ctrl_c_while_waiting_kills_and_reaps_the_workers(
    tmp_path: Path, forks: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import time

    path = _jsonl(tmp_path, _rows(300))
    monkeypatch.setattr(V, "_scan_range", lambda *a: time.sleep(60))

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            validate_file(str(path), _cfg(), workers=3)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < 10
    assert len(forks) == 2
    for _, _, pid in forks:
        with pytest.raises(ChildProcessError):  # killed and waited for: nothing left
            os.waitpid(pid, os.WNOHANG)


def test_no_fork_possible_means_one_process(
    tmp_path: Path, forks: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _rows(300)
    lines[280] = b'{"instruction": "a", "output": ""}'
    path = _jsonl(tmp_path, lines)
    expected = _result(validate_file(str(path), _cfg(), workers=1))

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(V.os, "fork", no_fork)
    got = validate_file(str(path), _cfg(), workers=3)
    assert [pid for _, _, pid in forks] == [0, 0]
    assert _result(got) == expected and got.problems[0].line == 281


def test_running_threads_keep_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(V, "_MIN_RANGE_BYTES", 2048)
    path = _jsonl(tmp_path, _rows(300))
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert V._threads_running()
        v = V._Validator(str(path), _cfg(), None, None, workers=4)
        assert V._worker_count(v, path.stat().st_size) == 1
    finally:
        stop.set()
        t.join()
