"""The data contract: every error class with its code and line, the split, tokens, convert."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.config import ValidateConfig
from trainer.validate import (
    CODES,
    ConvertError,
    NeedsConversion,
    convert_json_to_jsonl,
    validate_file,
)

REPO = Path(__file__).resolve().parents[2]
EXT = REPO.parent / "shared" / "ext"

GOOD = '{"instruction": "Say hi.", "input": "", "output": "hi"}'


def row(i: int, **extra: object) -> str:
    d = {"instruction": f"Repeat the number {i}.", "input": "", "output": str(i), **extra}
    return json.dumps(d)


def write(
    tmp_path: Path, lines: list[str | bytes], name: str = "data.jsonl", *, eol: bytes = b"\n"
) -> str:
    path = tmp_path / name
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode("utf-8")) + eol for ln in lines)
    path.write_bytes(data)
    return str(path)


def schema(**kw: object) -> ValidateConfig:
    return ValidateConfig(schema_only=True, **kw)  # type: ignore[arg-type]


def found(summary) -> list[tuple[int, str]]:
    return [(p.line, p.code) for p in summary.problems]


# --------------------------------------------------------------------------- each error class


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ('{"instruction": "a", "output": "b"', "invalid-json"),  # truncated
        ("{instruction: 1}", "invalid-json"),
        ('{"instruction": "a", "output": "b"} trailing', "invalid-json"),
        ('{"instruction": "a", "output": "b"}{"x": 1}', "invalid-json"),
        ('["instruction", "output"]', "not-an-object"),
        ('"just a string"', "not-an-object"),
        ("42", "not-an-object"),
        ("null", "not-an-object"),
        ('{"input": "", "output": "b"}', "missing-field"),
        ('{"instruction": "a", "input": ""}', "missing-field"),
        ('{"instruction": "", "output": "b"}', "empty-field"),
        ('{"instruction": "a", "output": "  \\n\\t "}', "empty-field"),
        ('{"instruction": 3, "output": "b"}', "wrong-type"),
        ('{"instruction": "a", "output": null}', "wrong-type"),
        ('{"instruction": "a", "output": {"text": "b"}}', "wrong-type"),
        ('{"instruction": "a", "output": ["b"]}', "wrong-type"),
        ('{"instruction": "a", "input": 5, "output": "b"}', "wrong-type"),
        ('{"instruction": "a", "input": null, "output": "b"}', "wrong-type"),
        ('{"instruction": "a\\ud800", "output": "b"}', "invalid-utf8"),
    ],
)
def test_error_class_reported_with_code_and_line(tmp_path: Path, bad: str, code: str) -> None:
    src = write(tmp_path, [row(1), row(2), bad, row(4)])
    s = validate_file(src, schema())
    assert (3, code) in found(s)
    assert not s.ok
    assert s.rejected == 1 and s.accepted == 3
    assert str(s.problems[0]).startswith(f"{src}:3: {code}: ")


def test_invalid_utf8_bytes(tmp_path: Path) -> None:
    src = write(tmp_path, [row(1), b'{"instruction": "caf\xe9", "output": "x"}', row(3)])
    s = validate_file(src, schema(on_error="skip", max_error_fraction=0.5), str(tmp_path / "out"))
    assert found(s) == [(2, "invalid-utf8")]
    assert "0xe9" in s.problems[0].message
    rej = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert rej[0]["line"] == 2 and rej[0]["raw"] is None
    import base64

    assert base64.b64decode(rej[0]["raw_base64"]).startswith(b'{"instruction": "caf\xe9"')


def test_unknown_field_is_a_warning_by_default_and_an_error_when_asked(tmp_path: Path) -> None:
    src = write(tmp_path, [row(1), row(2, source="web"), row(3)])
    s = validate_file(src, schema(), str(tmp_path / "o"))
    assert found(s) == [(2, "unknown-field")]
    assert s.problems[0].severity == "warning"
    assert s.ok and s.accepted == 3
    kept = [json.loads(x) for x in (tmp_path / "o" / "train.jsonl").read_text().splitlines()]
    kept += [json.loads(x) for x in (tmp_path / "o" / "eval.jsonl").read_text().splitlines()]
    assert all(list(r) == ["instruction", "input", "output"] for r in kept)
    s2 = validate_file(src, schema(unknown_fields="error"))
    assert not s2.ok and s2.rejected == 1


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + b"\r\n".join(r.encode() for r in [row(1), "", row(2), "   ", row(3)])
        + b"\r\n\r\n"
    )
    s = validate_file(str(path), schema())
    assert s.ok, [str(p) for p in s.problems]
    assert (s.lines_read, s.accepted, s.blank, s.rejected) == (6, 3, 3, 0)
    # The split does not depend on the line ending.
    lf = write(tmp_path, [row(1), row(2), row(3)], "lf.jsonl")
    s_lf = validate_file(lf, schema(eval_fraction=0.5), str(tmp_path / "lf"))
    s_crlf = validate_file(str(path), schema(eval_fraction=0.5), str(tmp_path / "crlf"))
    assert (s_lf.n_train, s_lf.n_eval) == (s_crlf.n_train, s_crlf.n_eval)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "lf" / name).read_bytes() == (tmp_path / "crlf" / name).read_bytes()


def test_bom_only_at_start(tmp_path: Path) -> None:
    src = write(tmp_path, [row(1), b"\xef\xbb\xbf" + row(2).encode()])
    assert found(validate_file(src, schema())) == [(2, "invalid-json")]


def test_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(row(1) + "\n" + row(2))
    s = validate_file(str(path), schema())
    assert s.ok and s.lines_read == 2


def test_duplicates_after_whitespace_normalisation(tmp_path: Path) -> None:
    a = {"instruction": "Name a colour.", "input": "", "output": "red"}
    b = {"instruction": "  Name a colour.\n", "output": "red "}  # same row once stripped
    src = write(
        tmp_path,
        [json.dumps(a), row(2), json.dumps(b), json.dumps(a, indent=None, separators=(",", ":"))],
    )
    s = validate_file(src, schema())
    assert found(s) == [(3, "duplicate"), (4, "duplicate")]
    assert "line 1" in s.problems[0].message
    assert not s.ok and s.rejected == 2
    warn = validate_file(src, schema(duplicates="warn"))
    assert warn.ok and warn.accepted == 4 and warn.counts_by_code["duplicate"] == 2
    allow = validate_file(src, schema(duplicates="allow"))
    assert allow.ok and "duplicate" not in allow.counts_by_code


def test_duplicates_found_across_fast_batches(tmp_path: Path) -> None:
    # Many valid rows (fast path, many chunks) with one repeat far apart.
    lines = [row(i, output="x" * 600 + str(i)) for i in range(4000)]
    lines.append(lines[5])
    src = write(tmp_path, lines)
    s = validate_file(src, schema())
    assert found(s) == [(4001, "duplicate")]
    assert "line 6" in s.problems[0].message


@pytest.mark.parametrize("first", ["", "{bad"])
def test_hash_collisions_never_make_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    # Every row gets the same 64-bit hash: each hit is settled by re-reading the earlier row
    # (across ~5 chunks), so only true repeats are reported, fast path and slow path alike.
    import trainer.validate as validate_module

    monkeypatch.setattr(validate_module, "hash", lambda _obj: 42, raising=False)
    lines = [row(i, output="x" * 600 + str(i)) for i in range(4000)]
    lines += [
        lines[5],
        json.dumps({"output": "x" * 600 + "3999 ", "instruction": "Repeat the number 3999."}),
    ]
    src = write(tmp_path, [first, *lines] if first else lines)
    s = validate_file(src, schema(on_error="skip", max_error_fraction=0.5))
    shift = 1 if first else 0
    dups = [(p.line - shift, p.message) for p in s.problems if p.code == "duplicate"]
    assert dups == [
        (4001, f"same content as line {6 + shift} (after stripping whitespace)"),
        (4002, f"same content as line {4000 + shift} (after stripping whitespace)"),
    ]
    assert s.accepted == 4000


def test_line_too_large_is_refused_and_following_lines_still_checked(tmp_path: Path) -> None:
    big = '{"instruction": "a", "output": "' + "x" * 5000 + '"}'
    src = write(tmp_path, [row(1), big, row(3)])
    s = validate_file(
        src,
        schema(max_line_bytes=1000, on_error="skip", max_error_fraction=0.5),
        str(tmp_path / "o"),
    )
    assert found(s) == [(2, "line-too-large")]
    assert s.accepted == 2 and s.ok
    rej = json.loads((tmp_path / "o" / "rejects.jsonl").read_text())
    assert rej["raw"] is None and rej["raw_bytes"] == len(big)


def test_line_of_tens_of_mb_uses_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(row(1).encode() + b"\n")
        f.write(b'{"instruction": "a", "output": "')
        block = b"y" * (1 << 20)
        for _ in range(40):
            f.write(block)
        f.write(b'"}\n' + row(3).encode() + b"\n")
    code = textwrap.dedent(
        f"""
        import json, resource
        from trainer.config import ValidateConfig
        from trainer.validate import validate_file
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        s = validate_file({str(path)!r}, ValidateConfig(schema_only=True, on_error="skip", max_error_fraction=0.5))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grow_kb": after - before, "codes": [(p.line, p.code) for p in s.problems],
                          "accepted": s.accepted, "read": s.lines_read}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    )
    res = json.loads(out.stdout)
    assert res["codes"] == [[2, "line-too-large"]]
    assert res["accepted"] == 2 and res["read"] == 3
    assert res["grow_kb"] < 12 * 1024, res  # a 40 MB line costs a few MB at most


def test_json_array_file_asks_for_convert(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([json.loads(row(1))]))
    with pytest.raises(NeedsConversion, match="llmft convert"):
        validate_file(str(path), schema())


def test_empty_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    s = validate_file(str(path), schema())
    assert not s.ok and s.lines_read == 0 and "no valid row" in s.reasons


def test_single_row_is_valid_with_an_empty_eval_warning(tmp_path: Path) -> None:
    src = write(tmp_path, [GOOD])
    s = validate_file(src, schema(eval_fraction=0.1), str(tmp_path / "o"))
    assert s.ok and s.split_computed
    assert s.n_train + s.n_eval == 1


def test_schema_only_check_without_out_dir_skips_the_split(tmp_path: Path) -> None:
    # The fast check path: counts and problems, but no split (it is only used for the files).
    src = write(tmp_path, [row(i) for i in range(50)])
    s = validate_file(src, schema(eval_fraction=0.5))
    assert s.ok and s.accepted == 50 and not s.split_computed
    assert (s.n_train, s.n_eval) == (0, 0) and "empty-eval" not in s.counts_by_code
    s2 = validate_file(src, schema(eval_fraction=0.5), str(tmp_path / "o"))
    assert s2.split_computed and s2.n_train + s2.n_eval == 50 and s2.n_eval > 0


def test_on_error_skip_and_max_error_fraction(tmp_path: Path) -> None:
    lines = [row(i) for i in range(1, 20)] + ["nope"]
    src = write(tmp_path, lines)
    assert not validate_file(src, schema()).ok  # fail: any rejected row
    assert validate_file(src, schema(on_error="skip", max_error_fraction=0.1)).ok  # 5 %
    s = validate_file(src, schema(on_error="skip", max_error_fraction=0.01))
    assert not s.ok and "max_error_fraction" in s.reasons[0]


def test_on_problem_streams_every_problem(tmp_path: Path) -> None:
    src = write(tmp_path, ["[]", row(2), "{}", "x"])
    seen = []
    s = validate_file(src, schema(), str(tmp_path / "o"), on_problem=seen.append)
    assert [(p.line, p.code) for p in seen] == [
        (1, "not-an-object"),
        (3, "missing-field"),
        (3, "missing-field"),
        (4, "invalid-json"),
    ]
    assert s.counts_by_code == {
        "invalid-json": 1,
        "missing-field": 2,
        "not-an-object": 1,
        "empty-eval": 1,
    }


def test_every_code_is_documented() -> None:
    for code in (
        "invalid-json",
        "not-an-object",
        "missing-field",
        "empty-field",
        "wrong-type",
        "unknown-field",
        "invalid-utf8",
        "line-too-large",
        "duplicate",
        "too-long",
        "empty-after-format",
    ):
        assert code in CODES


# --------------------------------------------------------------------------- outputs and split


def test_out_dir_files_and_summary(tmp_path: Path) -> None:
    lines = [row(i) for i in range(1, 101)] + ["{bad", ""]
    src = write(tmp_path, lines)
    out = tmp_path / "out"
    s = validate_file(src, schema(on_error="skip", eval_fraction=0.2), str(out))
    assert {p.name for p in out.iterdir()} == {
        "train.jsonl",
        "eval.jsonl",
        "rejects.jsonl",
        "report.md",
        "summary.json",
    }
    train = (out / "train.jsonl").read_text().splitlines()
    ev = (out / "eval.jsonl").read_text().splitlines()
    assert len(train) == s.n_train and len(ev) == s.n_eval and s.n_train + s.n_eval == 100
    assert 5 <= s.n_eval <= 40
    summary = json.loads((out / "summary.json").read_text())
    import hashlib

    assert summary["input_sha256"] == hashlib.sha256(Path(src).read_bytes()).hexdigest()
    for name in ("train.jsonl", "eval.jsonl", "rejects.jsonl", "report.md"):
        assert summary["outputs"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert summary["counts_by_code"] == {"invalid-json": 1}
    assert (
        summary["lines_read"] == summary["accepted"] + summary["rejected"] + summary["blank"] == 102
    )
    report = (out / "report.md").read_text()
    assert "Nothing lost: 102 lines read = 100 accepted + 1 rejected + 1 blank" in report
    assert f"`{src}:101`" in report
    rej = json.loads((out / "rejects.jsonl").read_text())
    assert rej["line"] == 101 and rej["code"] == "invalid-json" and rej["raw"] == "{bad"


def test_split_is_stable_when_rows_are_appended(tmp_path: Path) -> None:
    base = [row(i) for i in range(300)]
    a = tmp_path / "a"
    b = tmp_path / "b"
    validate_file(write(tmp_path, base, "a.jsonl"), schema(), str(a))
    validate_file(
        write(tmp_path, base + [row(i) for i in range(300, 600)], "b.jsonl"), schema(), str(b)
    )
    ev_a = set((a / "eval.jsonl").read_text().splitlines())
    ev_b = set((b / "eval.jsonl").read_text().splitlines())
    tr_a = set((a / "train.jsonl").read_text().splitlines())
    tr_b = set((b / "train.jsonl").read_text().splitlines())
    assert ev_a and ev_a <= ev_b and tr_a <= tr_b
    # And the same file shuffled splits the same rows the same way.
    c = tmp_path / "c"
    validate_file(write(tmp_path, list(reversed(base)), "c.jsonl"), schema(), str(c))
    assert set((c / "eval.jsonl").read_text().splitlines()) == ev_a


def test_prompt_overlap_between_train_and_eval_is_reported(tmp_path: Path) -> None:
    # Same prompt, different answers: rows differ, so both are kept; some land on both sides.
    lines = [
        json.dumps({"instruction": "Pick a number.", "input": "", "output": str(i)})
        for i in range(60)
    ]
    s = validate_file(write(tmp_path, lines), schema(eval_fraction=0.3), str(tmp_path / "o"))
    assert s.n_eval > 0 and s.n_train > 0
    assert s.overlap["count"] == 1
    ex = s.overlap["examples"][0]
    assert 1 <= ex["eval_line"] <= 60 and 1 <= ex["train_line"] <= 60


def _split_of(out: Path) -> dict[tuple[str, str, str], str]:
    """Each written row's content -> the split it landed in."""
    sides = {}
    for side in ("train", "eval"):
        for ln in (out / f"{side}.jsonl").read_text().splitlines():
            r = json.loads(ln)
            sides[(r["instruction"], r["input"], r["output"])] = side
    return sides


def test_split_follows_row_content_not_its_serialisation(tmp_path: Path) -> None:
    rows = [
        {"instruction": f"Spell {i} in words, café.", "input": "x" * (i % 3), "output": f"n{i}"}
        for i in range(200)
    ]
    compact = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in rows]
    # Reordered keys, spaces, \u escapes and an "input" given only when non-empty.
    other = [
        json.dumps(
            {
                "output": r["output"],
                **({"input": r["input"]} if r["input"] else {}),
                "instruction": r["instruction"],
            },
            indent=None,
            ensure_ascii=True,
        )
        for r in rows
    ]
    a, b = tmp_path / "a", tmp_path / "b"
    sa = validate_file(write(tmp_path, compact, "a.jsonl"), schema(eval_fraction=0.3), str(a))
    sb = validate_file(write(tmp_path, other, "b.jsonl"), schema(eval_fraction=0.3), str(b))
    assert sa.ok and sb.ok and 20 <= sa.n_eval <= 100
    assert _split_of(a) == _split_of(b)
    assert (a / "eval.jsonl").read_bytes() == (b / "eval.jsonl").read_bytes()


def test_fast_and_slow_paths_agree(tmp_path: Path) -> None:
    # The same rows, decoded a chunk at a time (fast) or line by line (a bad first line sends
    # the whole chunk to the slow path): same split, same duplicates, same written bytes.
    rows = [row(i, output=f"  answer {i % 150}\n") for i in range(300)]
    rows[250] = json.dumps({"output": "answer 10", "instruction": "Repeat the number 10."})
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    cfg = schema(eval_fraction=0.3, on_error="skip", duplicates="warn")
    sf = validate_file(write(tmp_path, rows, "f.jsonl"), cfg, str(fast))
    ss = validate_file(write(tmp_path, ["{bad", *rows], "s.jsonl"), cfg, str(slow))
    assert [(ln, c) for ln, c in found(sf)] == [(ln - 1, c) for ln, c in found(ss)][1:]
    assert found(sf) == [(251, "duplicate")]
    assert "same content as line 11" in sf.problems[0].message
    for name in ("train.jsonl", "eval.jsonl"):
        assert (fast / name).read_bytes() == (slow / name).read_bytes()
    assert (sf.n_train, sf.n_eval, sf.overlap["count"]) == (
        ss.n_train,
        ss.n_eval,
        ss.overlap["count"],
    )


def test_one_object_per_line_even_when_counts_would_match(tmp_path: Path) -> None:
    # Two objects on one line plus a blank line: as many objects as lines, still two problems.
    two = '{"instruction": "a", "output": "b"}{"instruction": "c", "output": "d"}'
    spread = ['{"instruction": "e",', '"output": "f"}']
    s = validate_file(write(tmp_path, [row(1), two, "", row(4), *spread, row(7)]), schema())
    assert found(s) == [(2, "invalid-json"), (5, "invalid-json"), (6, "invalid-json")]
    assert (s.accepted, s.blank, s.rejected, s.lines_read) == (3, 1, 3, 7)


def test_max_line_bytes_boundary_on_the_fast_path(tmp_path: Path) -> None:
    def line_of(size: int, i: int) -> str:
        head = f'{{"instruction": "n{i}", "output": "'
        return head + "y" * (size - len(head) - 2) + '"}'

    lines = [line_of(200, i) for i in range(50)] + [line_of(201, 50)] + [row(9)]
    assert {len(x) for x in lines[:50]} == {200} and len(lines[50]) == 201
    s = validate_file(write(tmp_path, lines), schema(max_line_bytes=200))
    assert found(s) == [(51, "line-too-large")]
    assert s.accepted == 51


def test_duplicates_on_the_fast_path_go_to_rejects_with_their_line(tmp_path: Path) -> None:
    lines = [row(i) for i in range(500)]
    lines += [lines[3], json.dumps({"instruction": " Repeat the number 7. ", "output": "7"})]
    out = tmp_path / "o"
    s = validate_file(write(tmp_path, lines), schema(on_error="skip"), str(out))
    assert found(s) == [(501, "duplicate"), (502, "duplicate")]
    assert s.accepted == 500 and s.rejected == 2 and s.n_train + s.n_eval == 500
    rej = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["code"], r["raw"]) for r in rej] == [
        (501, "duplicate", lines[3]),
        (502, "duplicate", lines[501]),
    ]


def test_canonical_row_bytes_are_the_same_for_both_paths() -> None:
    from trainer.validate import _ENCODE, _Row, _row_bytes

    for r in [("a", "", "b"), ('é \n\t"q"', "in", "😀 \\ x")]:
        assert _ENCODE(_Row(instruction=r[0], input=r[1], output=r[2])) == _row_bytes(r)


# --------------------------------------------------------------------------- property test


_line = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.fixed_dictionaries(
        {},
        optional={
            "instruction": st.one_of(st.text(max_size=10), st.integers(), st.none()),
            "input": st.one_of(st.text(max_size=10), st.booleans()),
            "output": st.one_of(st.text(max_size=10), st.lists(st.integers(), max_size=2)),
            "extra": st.integers(),
        },
    ).map(lambda d: msgspec.json.encode(d)),
).map(lambda b: b.replace(b"\n", b" "))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(_line, max_size=25), crlf=st.booleans())
def test_arbitrary_lines_never_crash_and_counts_add_up(
    tmp_path: Path, lines: list[bytes], crlf: bool
) -> None:
    path = tmp_path / "prop.jsonl"
    path.write_bytes(b"".join(ln + (b"\r\n" if crlf else b"\n") for ln in lines))
    s = validate_file(str(path), schema(max_line_bytes=64, on_error="skip", duplicates="warn"))
    assert s.lines_read == len(lines)
    assert s.balanced
    assert set(s.counts_by_code) <= set(CODES)
    errors = {p.line for p in s.problems if p.severity == "error"}
    assert len(errors) == s.error_rows == s.rejected
    assert all(1 <= p.line <= len(lines) for p in s.problems)


# Valid rows (the fast path takes the whole file) with repeats up to whitespace at the ends.
_text = st.sampled_from(["a", " a", "a\n", "b", "é", "a b", "a  b", "b "])
_obj = st.fixed_dictionaries(
    {"instruction": _text, "output": _text}, optional={"input": st.sampled_from(["", " ", "a"])}
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    objs=st.lists(_obj, min_size=1, max_size=30),
    crlf=st.booleans(),
    dups=st.sampled_from(["error", "warn"]),
)
def test_fast_path_matches_the_line_by_line_path(
    tmp_path: Path, objs: list[dict], crlf: bool, dups: str
) -> None:
    # Differential: the same rows decoded as a chunk, or line by line after a bad first line.
    eol = b"\r\n" if crlf else b"\n"
    lines = [json.dumps(o) for o in objs]
    cfg = schema(on_error="skip", max_error_fraction=1.0, duplicates=dups, eval_fraction=0.5)
    out_f, out_s = tmp_path / "f", tmp_path / "s"
    for d in (out_f, out_s):
        shutil.rmtree(d, ignore_errors=True)
    f = validate_file(write(tmp_path, lines, "f.jsonl", eol=eol), cfg, str(out_f))
    s = validate_file(write(tmp_path, ["[", *lines], "s.jsonl", eol=eol), cfg, str(out_s))

    def shifted(p, by: int) -> tuple[int, str, str, str]:
        ref = re.sub(r"line (\d+)", lambda m: f"line {int(m.group(1)) - by}", p.message)
        return (p.line - by, p.code, p.severity, ref)

    assert [shifted(p, 0) for p in f.problems] == [shifted(p, 1) for p in s.problems[1:]]
    assert (f.accepted, f.rejected + 1, f.n_train, f.n_eval) == (
        s.accepted,
        s.rejected,
        s.n_train,
        s.n_eval,
    )
    for name in ("train.jsonl", "eval.jsonl"):
        assert (out_f / name).read_bytes() == (out_s / name).read_bytes()


# --------------------------------------------------------------------------- token-level checks


def _long_row(n_words: int, prompt_words: int = 3) -> str:
    return json.dumps(
        {
            "instruction": " ".join(["word"] * prompt_words),
            "input": "",
            "output": " ".join(["story"] * n_words),
        }
    )


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("tok")
    lines = [row(1), _long_row(200), row(3), _long_row(10, prompt_words=200), row(5)]
    return write(d, lines)


@pytest.mark.usefixtures("tiny_model_dir")
@pytest.mark.parametrize("policy", ["drop", "truncate", "fail"])
def test_too_long_rows_under_each_policy(token_file: str, policy: str, tmp_path: Path) -> None:
    cfg = ValidateConfig(max_seq_len=64, long_rows=policy)
    s = validate_file(token_file, cfg, str(tmp_path / "o"))
    ts = s.token_stats
    assert ts is not None and ts["rows_measured"] == 5
    assert ts["over_max_seq_len"] == 2 and ts["response_cut_entirely"] == 1
    assert ts["prompt"]["max"] >= 64 and ts["response"]["max"] > 64
    codes = found(s)
    if policy == "drop":
        assert codes == [(2, "too-long"), (4, "too-long")]
        assert s.ok and s.dropped_long == 2 and s.accepted == 3 and s.rejected == 2
    elif policy == "truncate":
        assert codes == [(2, "too-long"), (4, "empty-after-format")]
        assert s.truncated == 1 and s.accepted == 4 and not s.ok  # the prompt-only row is an error
    else:
        assert codes == [(2, "too-long"), (4, "too-long")]
        assert not s.ok and any("long_rows=fail" in r for r in s.reasons)
    assert s.balanced


def test_batched_token_check_matches_encode_row(tiny_tokenizer) -> None:
    from trainer.formatting import FormatError, encode_row
    from trainer.validate import _TokenChecker

    cfg = ValidateConfig(max_seq_len=40, long_rows="truncate")
    checker = _TokenChecker.__new__(_TokenChecker)
    checker.cfg, checker.tokenizer = cfg, tiny_tokenizer
    rows = [
        ("Say hi.", "", "hi"),
        ("Translate", "  bonjour le monde  ", "hello world\n\nagain"),
        ("a " * 50, "", "b"),
        ("Count", "", "one two three " * 10),
        ("Emoji 😀", "tab\there", "ok\r\nfine"),
    ]
    for r, v in zip(rows, checker.check_many(rows), strict=True):
        d = {"instruction": r[0], "input": r[1], "output": r[2]}
        full = encode_row(tiny_tokenizer, d, max_seq_len=None)
        assert (v.prompt_len, v.response_len) == (
            full.prompt_len,
            len(full.input_ids) - full.prompt_len,
        )
        try:
            enc = encode_row(tiny_tokenizer, d, max_seq_len=40, long_rows="truncate")
            assert v.code is None and v.truncated == enc.truncated
        except FormatError as exc:
            assert v.code == exc.code


@pytest.mark.usefixtures("tiny_model_dir")
def test_sample_dataset_with_token_checks_is_fast_and_valid(tmp_path: Path) -> None:
    import time

    t0 = time.perf_counter()
    s = validate_file(str(REPO / "dataset" / "sample.jsonl"), ValidateConfig(), str(tmp_path / "o"))
    assert s.ok and s.accepted == 3000
    assert s.token_stats and s.token_stats["over_max_seq_len"] == 0
    assert time.perf_counter() - t0 < 60  # tokenizer load included; a few seconds when idle


# --------------------------------------------------------------------------- convert


def test_convert_then_validate_round_trip(tmp_path: Path) -> None:
    src = REPO / "dataset" / "sample_alpaca.json"
    out = tmp_path / "sample.jsonl"
    n = convert_json_to_jsonl(str(src), str(out))
    rows = json.loads(src.read_text())
    assert n == len(rows)
    back = [json.loads(x) for x in out.read_text().splitlines()]
    assert back == rows
    s = validate_file(str(out), schema())
    assert s.ok and s.accepted == n


def test_convert_errors_name_file_and_index(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a", "output": "b"}, 3]')
    with pytest.raises(
        ConvertError, match=r"bad\.json: \[index 1\]: expected an object, got a number"
    ):
        convert_json_to_jsonl(str(bad), str(tmp_path / "o.jsonl"))
    bad.write_text('[{"instruction": "a",\n "output": }]')
    with pytest.raises(ConvertError, match=r"bad\.json:2:\d+: invalid JSON"):
        convert_json_to_jsonl(str(bad), str(tmp_path / "o.jsonl"))
    bad.write_text('{"instruction": "a"}')
    with pytest.raises(ConvertError, match="expected a JSON array"):
        convert_json_to_jsonl(str(bad), str(tmp_path / "o.jsonl"))


@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "alpaca_zh_demo.json"])
def test_real_external_alpaca_files(tmp_path: Path, name: str) -> None:
    src = EXT / name
    if not src.exists():
        pytest.skip(f"external data not present at {src} (../shared/ext of the repo)")
    out = tmp_path / "data.jsonl"
    n = convert_json_to_jsonl(str(src), str(out))
    assert n >= 999
    s = validate_file(str(out), schema(on_error="skip"), str(tmp_path / "o"))
    assert s.balanced and s.lines_read == n
    # An independent oracle: the real files do repeat some rows (14 in the English demo).
    seen: set[tuple[str, ...]] = set()
    dups = 0
    for r in json.loads(src.read_text()):
        key = tuple(r.get(k, "").strip() for k in ("instruction", "input", "output"))
        dups += key in seen
        seen.add(key)
    assert s.counts_by_code.get("duplicate", 0) == dups
    assert s.accepted == n - dups and s.rejected == dups
    assert s.n_eval > 0 and s.ok


@pytest.mark.usefixtures("tiny_model_dir")
def test_real_external_file_token_stats(tmp_path: Path) -> None:
    src = EXT / "alpaca_en_demo.json"
    if not src.exists():
        pytest.skip(f"external data not present at {src}")
    out = tmp_path / "en.jsonl"
    convert_json_to_jsonl(str(src), str(out))
    s = validate_file(str(out), ValidateConfig(max_seq_len=256, on_error="skip"))
    ts = s.token_stats
    assert ts is not None
    assert ts["response"]["max"] > ts["response"]["p50"] > 0
    assert ts["over_max_seq_len"] > 0 and s.dropped_long == ts["over_max_seq_len"]


# --------------------------------------------------------------------------- sources


def test_file_uri_source(tmp_path: Path) -> None:
    src = write(tmp_path, [row(1), "{}"])
    s = validate_file("file://" + src, schema())
    assert found(s) == [(2, "missing-field"), (2, "missing-field")]
    assert str(s.problems[0]).startswith(f"file://{src}:2: ")


def test_gcs_source_on_the_emulator(gcs_bucket: str) -> None:
    from trainer import storage

    uri = f"gs://{gcs_bucket}/data/train.jsonl"
    storage.write_bytes(uri, ("\n".join([row(1), row(2), "[1]", row(4)]) + "\n").encode())
    s = validate_file(uri, schema(on_error="skip", max_error_fraction=0.5))
    assert found(s) == [(3, "not-an-object")]
    assert str(s.problems[0]).startswith(f"{uri}:3: not-an-object: ")
    assert s.accepted == 3 and s.ok


def test_gcs_duplicate_is_confirmed_by_a_ranged_reread(gcs_bucket: str) -> None:
    # A hash hit re-reads the earlier row from the source: on gs:// a second, seeking stream.
    from trainer import storage

    uri = f"gs://{gcs_bucket}/data/dups.jsonl"
    lines = [row(i) for i in range(50)] + [row(7)]
    storage.write_bytes(uri, ("\n".join(lines) + "\n").encode())
    s = validate_file(uri, schema(on_error="skip"))
    assert found(s) == [(51, "duplicate")]
    assert "same content as line 8" in s.problems[0].message
