"""Line-exact validation: every physical line is one JSON value, whatever the bytes.

A slow, obviously-correct reference (``json.loads`` on each line of ``data.split(b"\\n")``)
is checked against ``validate_file`` on generated files that mix valid rows (enough of them to
fill several chunks, so the chunked fast path runs) with the shapes that fool a chunked
decoder: two objects on a line, an object split over lines inside a string or between
tokens, blank and whitespace-only lines, CRLF, a BOM, invalid UTF-8, non-ASCII, arrays,
numbers, nested objects, repeated keys, lines around max_line_bytes, no final newline.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.config import ValidateConfig
from trainer.validate import validate_file

FIELDS = ("instruction", "input", "output")
BOM = b"\xef\xbb\xbf"

# --------------------------------------------------------------------------- the reference


class _Pairs(list):
    pass


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _ref_line(raw: bytes) -> tuple[tuple[str, str, str] | None, list[tuple[str, str]]]:
    """One non-blank line: the row (or None) and its (code, severity) in the validator's order."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, [("invalid-utf8", "error")]
    try:
        value = json.loads(
            text, object_pairs_hook=_Pairs, parse_constant=_no_constants, parse_float=_finite
        )
    except ValueError:
        return None, [("invalid-json", "error")]
    if not isinstance(value, _Pairs):
        return None, [("not-an-object", "error")]
    found: list[tuple[str, str]] = []
    keys = [k for k, _ in value]
    for key in dict.fromkeys(keys):
        if keys.count(key) > 1:
            found.append(("duplicate-key", "error"))
    obj = dict(value)  # the last value of a repeated key, as every JSON reader keeps
    for key in obj:
        if key not in FIELDS:
            found.append(("unknown-field", "warning"))
    for key in FIELDS:
        if key not in obj:
            if key != "input":
                found.append(("missing-field", "error"))
            continue
        v = obj[key]
        if not isinstance(v, str):
            found.append(("wrong-type", "error"))
        elif key != "input" and not v.strip():
            found.append(("empty-field", "error"))
    if any(sev == "error" for _, sev in found):
        return None, found
    return (obj["instruction"], obj.get("input", ""), obj["output"]), found


def reference(data: bytes, cfg: ValidateConfig) -> dict:
    """What validation must find, computed one physical line at a time."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it does not start another
    res: dict = {"problems": [], "rejects": [], "train": b"", "eval": b"", "blank": 0}
    first_of: dict[tuple[str, str, str], int] = {}
    accepted = 0
    threshold = int(cfg.eval_fraction * 2**32)
    for number, raw in enumerate(lines, 1):
        raw = raw.removesuffix(b"\r")
        if len(raw) > cfg.max_line_bytes:
            res["problems"].append((number, "line-too-large", "error"))
            res["rejects"].append((number, "line-too-large", None, len(raw)))
            continue
        if not raw.strip(b" \t\r"):
            res["blank"] += 1
            continue
        row, found = _ref_line(raw)
        res["problems"] += [(number, code, sev) for code, sev in found]
        if row is None:
            code = next(c for c, sev in found if sev == "error")
            res["rejects"].append((number, code, raw, len(raw)))
            continue
        norm = tuple(f.strip() for f in row)
        first = first_of.setdefault(norm, number)  # type: ignore[arg-type]
        if first != number and cfg.duplicates != "allow":
            sev = "error" if cfg.duplicates == "error" else "warning"
            res["problems"].append((number, "duplicate", sev))
            res.setdefault("dup_of", {})[number] = first
            if sev == "error":
                res["rejects"].append((number, "duplicate", raw, len(raw)))
                continue
        accepted += 1
        canonical = msgspec.json.encode(dict(zip(FIELDS, row, strict=True)))
        side = "eval" if zlib.crc32(canonical) < threshold else "train"
        res[side] += canonical + b"\n"
    res["lines_read"] = len(lines)
    res["accepted"] = accepted
    return res


# --------------------------------------------------------------------------- the files

_words = st.sampled_from(["word", "café", "数据", "naïve", "Ünïcode", "😀", "tab\tin", "a:b"])
_text = st.lists(_words, min_size=1, max_size=6).map(" ".join)
_obj = st.fixed_dictionaries(
    {"instruction": _text, "output": _text}, optional={"input": st.one_of(st.just(""), _text)}
)


def _dump(obj: object, ascii_only: bool, compact: bool) -> bytes:
    seps = (",", ":") if compact else (", ", ": ")
    return json.dumps(obj, ensure_ascii=ascii_only, separators=seps).encode("utf-8")


_row = st.builds(_dump, _obj, st.booleans(), st.booleans())


@st.composite
def _two_on_a_line(draw: st.DrawFn) -> bytes:
    joint = draw(st.sampled_from([b",", b" ", b"", b" , "]))
    return draw(_row) + joint + draw(_row)


@st.composite
def _split_in_a_string(draw: st.DrawFn) -> bytes:
    row = draw(_row)
    at = row.index(b'": "' if b'": "' in row else b'":"') + 4
    return row[:at] + b"\n" + row[at:]


@st.composite
def _split_between_tokens(draw: st.DrawFn) -> bytes:
    row = draw(_row)
    commas = [i for i in range(len(row)) if row[i : i + 2] in (b', "', b',"')]
    cut = draw(st.sampled_from(commas)) if commas else len(row) // 2
    keep_comma = draw(st.booleans())
    return row[: cut + keep_comma] + b"\n" + row[cut + keep_comma :]


@st.composite
def _repeated_key(draw: st.DrawFn) -> bytes:
    key = draw(st.sampled_from((*FIELDS, "source")))
    a, b = draw(_text), draw(_text)
    return (
        b'{"instruction": "x", "output": "y", '
        + json.dumps(key).encode()
        + b": "
        + json.dumps(a).encode()
        + b", "
        + json.dumps(key).encode()
        + b": "
        + json.dumps(b).encode()
        + b"}"
    )


def _sized(size: int) -> bytes:
    head = b'{"instruction": "sized", "output": "'
    return head + b"z" * max(1, size - len(head) - 2) + b'"}'


_hostile = st.one_of(
    _row,
    _two_on_a_line(),
    _split_in_a_string(),
    _split_between_tokens(),
    _repeated_key(),
    st.sampled_from(
        [
            b"",
            b"   ",
            b" \t ",
            b"[1, 2]",
            b'[{"instruction": "a", "output": "b"}]',
            b"42",
            b"-1.5e3",
            b"1e400",
            b"null",
            b'"text"',
            b'{"instruction": {"nested": 1}, "output": "b"}',
            b'{"instruction": "a", "output": "b", "meta": {"k": 1, "k": 2}}',
            b'{"instruction": "caf\xe9", "output": "x"}',
            b"\xff\xfe",
            b'{"instruction": "a", "output": "b"} trailing',
            b'{"instruction": "a\\u003a", "instruction": "b", "output": "c"}',
            b'{"instruction": "", "output": "b"}',
            b'{"instruction": "  ", "output": "b"}',
            b'{"instruction": "a", "output": "b", "input": null}',
            b"{",
            b"}",
            b"],[",
        ]
    ),
    st.integers(min_value=-3, max_value=3).map(lambda d: _sized(256 + d)),
)


@st.composite
def _file(draw: st.DrawFn) -> bytes:
    n_fill = draw(st.sampled_from([0, 0, 300, 600]))
    fill = [
        _dump({"instruction": f"Row {i} " + "filler " * 8, "input": "", "output": f"{i}"}, 1, 0)
        for i in range(n_fill)
    ]
    hostile = draw(st.lists(_hostile, min_size=1, max_size=12))
    lines = list(fill)
    for h in hostile:  # hostile lines land among the filler, several chunks apart
        lines.insert(draw(st.integers(min_value=0, max_value=len(lines))), h)
    if n_fill and draw(st.booleans()):
        lines.append(fill[draw(st.integers(min_value=0, max_value=n_fill - 1))])  # a repeat
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = eol.join(lines) + (eol if draw(st.booleans()) else b"")
    return (BOM if draw(st.booleans()) else b"") + data


def _written(out: Path, name: str) -> bytes:
    return (out / name).read_bytes()


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=_file(), dups=st.sampled_from(["error", "warn"]), small=st.booleans())
def test_validation_matches_the_line_by_line_reference(
    tmp_path: Path, data: bytes, dups: str, small: bool
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    out = tmp_path / "out"
    for f in out.glob("*") if out.exists() else ():
        f.unlink()
    cfg = ValidateConfig(
        schema_only=True,
        on_error="skip",
        max_error_fraction=1.0,
        duplicates=dups,
        eval_fraction=0.3,
        max_line_bytes=256 if small else 1_000_000,
    )
    s = validate_file(str(path), cfg, str(out))
    ref = reference(data, cfg)
    got = sorted((p.line, p.code, p.severity) for p in s.problems)
    assert got == sorted(ref["problems"])
    assert (s.lines_read, s.accepted, s.blank) == (ref["lines_read"], ref["accepted"], ref["blank"])
    assert s.rejected == len(ref["rejects"]) and s.balanced
    for p in s.problems:
        if p.code == "duplicate":
            assert f"same content as line {ref['dup_of'][p.line]} " in p.message
    assert _written(out, "train.jsonl") == ref["train"]
    assert _written(out, "eval.jsonl") == ref["eval"]
    rejects = [json.loads(x) for x in _written(out, "rejects.jsonl").splitlines()]
    assert [(r["line"], r["code"]) for r in rejects] == [(n, c) for n, c, _, _ in ref["rejects"]]
    for r, (_, _, raw, size) in zip(rejects, ref["rejects"], strict=True):
        if raw is None:
            assert r["raw"] is None and r["raw_bytes"] == size
        elif r["raw"] is None:
            assert base64.b64decode(r["raw_base64"]) == raw
        else:
            assert r["raw"].encode("utf-8") == raw


# --------------------------------------------------------------------------- the examples


def _rows(n: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"instruction": f"Repeat {i}.", "input": "", "output": str(i)}).encode()
        for i in range(start, start + n)
    ]


def _check(tmp_path: Path, lines: list[bytes], **kw: object) -> tuple[object, dict]:
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    cfg = ValidateConfig(schema_only=True, on_error="skip", max_error_fraction=1.0, **kw)  # type: ignore[arg-type]
    return validate_file(str(path), cfg), reference(data, cfg)


def test_two_objects_on_one_line_is_one_bad_line(tmp_path: Path) -> None:
    two = _rows(2, 10)[0] + b"," + _rows(1, 20)[0]
    s, _ = _check(tmp_path, [_rows(1)[0], two, _rows(1, 2)[0]])
    assert (s.lines_read, s.accepted, s.rejected) == (3, 2, 1)
    assert [(p.line, p.code) for p in s.problems] == [(2, "invalid-json")]


def test_object_split_inside_a_string_is_two_bad_lines(tmp_path: Path) -> None:
    lines = _rows(2998)
    lines.insert(1500, b'{"instruction": "broken')
    lines.insert(1501, b'here", "output": "x"}')
    lines.insert(2500, b"{bad")
    s, ref = _check(tmp_path, lines)
    assert s.lines_read == len(lines) == 3001
    assert [(p.line, p.code) for p in s.problems] == [
        (1501, "invalid-json"),
        (1502, "invalid-json"),
        (2501, "invalid-json"),
    ]
    assert s.accepted == ref["accepted"] == 2998


def test_compensating_shapes_in_one_chunk_change_nothing(tmp_path: Path) -> None:
    # One line with two objects (+1 value) and one object over two lines (-1 value) in the
    # same chunk: as many values as lines, still three bad lines, the rest unaffected.
    lines = _rows(100)
    lines[10] = lines[10] + b", " + _rows(1, 500)[0]
    lines[50:51] = [b'{"instruction": "a", "input": ""', b'"output": "b"}']
    s, ref = _check(tmp_path, lines)
    assert [(p.line, p.code) for p in s.problems] == [
        (11, "invalid-json"),
        (51, "invalid-json"),
        (52, "invalid-json"),
    ]
    assert (s.lines_read, s.accepted) == (101, 98) == (ref["lines_read"], ref["accepted"])


def test_a_row_is_judged_alone_not_by_its_chunk(tmp_path: Path) -> None:
    good = _rows(200)
    s_alone, _ = _check(tmp_path, good)
    s_mixed, _ = _check(tmp_path, [*good[:100], b"[]", *good[100:]])
    assert s_alone.accepted == s_mixed.accepted == 200
    assert [(p.line, p.code) for p in s_mixed.problems] == [(101, "not-an-object")]


@pytest.mark.parametrize(
    ("line", "key", "values"),
    [
        (b'{"instruction": "a", "instruction": "b", "output": "c"}', "instruction", '"a" then "b"'),
        (b'{"instruction": "a", "input": "", "input": "x", "output": "c"}', "input", '"" then "x"'),
        (b'{"instruction":"a","output":"c","output":"c"}', "output", '"c" then "c"'),
        (b'{"instruction":"a:b","output":"c","output":"d:e"}', "output", '"c" then "d:e"'),
        (b'{"instruction":"a\\u003a","output":"c","output":"d"}', "output", '"c" then "d"'),
        (b'{"instruction": "a", "output": "c", "src": 1, "src": 2}', "src", "1 then 2"),
    ],
)
def test_repeated_key_is_rejected_naming_key_and_values(
    tmp_path: Path, line: bytes, key: str, values: str
) -> None:
    # Among many valid rows (the chunk's fast decode keeps only the last value silently).
    lines = _rows(400)
    lines.insert(200, line)
    s, _ = _check(tmp_path, lines)
    dup = [p for p in s.problems if p.code == "duplicate-key"]
    assert [(p.line, p.severity) for p in dup] == [(201, "error")]
    assert f"key {key!r} given twice: {values}" in dup[0].message
    assert s.rejected == 1 and s.accepted == 400


def test_repeated_key_three_times(tmp_path: Path) -> None:
    s, _ = _check(tmp_path, [b'{"instruction": "a", "output": "1", "output": "2", "output": "3"}'])
    assert '"1" then "2" then "3"' in s.problems[0].message and "3 times" in s.problems[0].message


def test_rows_without_input_and_mixed_rows_take_the_fast_path_exactly(tmp_path: Path) -> None:
    no_input = [
        json.dumps({"instruction": f"q{i}", "output": f"a:{i}"}).encode() for i in range(300)
    ]
    mixed = [r if i % 3 else _rows(1, 1000 + i)[0] for i, r in enumerate(no_input)]
    for lines in (no_input, mixed):
        bad = [*lines[:150], b'{"instruction": "z", "output": "1", "output": "2"}', *lines[150:]]
        s, ref = _check(tmp_path, bad)
        assert [(p.line, p.code) for p in s.problems] == [(151, "duplicate-key")]
        assert s.accepted == ref["accepted"] == 300


def test_an_escaped_colon_cannot_hide_a_repeated_key(tmp_path: Path) -> None:
    # Without input keys (the 2-key decoder): the repeat adds a pair and the escape hides a
    # colon from the raw count, so the counts balance; the escape check refuses the proof.
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}).encode() for i in range(300)]
    lines.insert(100, b'{"instruction":"a:","output":"c","output":"d\\u003a"}')
    s, _ = _check(tmp_path, lines)
    assert [(p.line, p.code) for p in s.problems] == [(101, "duplicate-key")]
    assert '"c" then "d:"' in s.problems[0].message
