"""The real-language task set: deterministic, in sync with its file, strict answers, and held-out
rows that are genuinely new (entities, templates and wordings no training row uses)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import metrics as M
from trainer import task_data as td
from trainer.config import ValidateConfig
from trainer.validate import validate_file

REPO = Path(__file__).resolve().parents[2]
ORDERS = REPO / "dataset" / "orders.jsonl"
REPLY = re.compile(r"Hi (\w+), your (\d+) (.+) will be delivered to (\w+) on (\w+ \d+)\.")


def _committed() -> list[dict[str, str]]:
    return [json.loads(line) for line in ORDERS.read_text(encoding="utf-8").splitlines()]


def test_generator_is_deterministic_and_distinct() -> None:
    a = td.generate_rows(200, 20, seed=3)
    assert a == td.generate_rows(200, 20, seed=3)
    assert a != td.generate_rows(200, 20, seed=4)
    assert len({(r["instruction"], r["input"]) for r in a}) == len(a) == 220


def test_committed_file_matches_generator(tmp_path) -> None:
    rows = _committed()
    assert rows == td.generate_rows(td.DEFAULT_TRAIN, td.DEFAULT_EVAL, seed=0)
    # dataset/generate.py writes the same bytes.
    subprocess.run(
        [sys.executable, str(REPO / "dataset" / "generate.py"), "--out-dir", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    assert (tmp_path / "orders.jsonl").read_bytes() == ORDERS.read_bytes()


def test_answers_are_strict() -> None:
    rows = _committed()
    n_json = 0
    for row in rows:
        out = row["output"]
        if out.startswith("{"):
            n_json += 1
            record = json.loads(out)
            assert tuple(record) == td.KEYS  # one fixed shape, keys in order
            assert out == json.dumps(record)  # one fixed spacing
            assert isinstance(record["quantity"], int) and 1 <= record["quantity"] <= 12
            month, day = record["date"].split()
            assert month in td.MONTHS and 1 <= int(day) <= 28
            assert record["name"] in row["input"] and record["city"] in row["input"]
        else:
            m = REPLY.fullmatch(out)
            assert m, out
            assert m[1] in row["input"] and m[4] in row["input"]
    assert 0.55 < n_json / len(rows) < 0.8  # both tasks present
    # Messages vary: spelled-out quantities and several date styles appear.
    inputs = " ".join(r["input"] for r in rows)
    assert " seven " in inputs and re.search(r"\bthe \d+(st|nd|rd|th) of [A-Z]", inputs)
    assert re.search(r"\b\d+ (January|May|June|July)\b", inputs)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.3])
def test_validate_holds_out_exactly_the_new_rows(tmp_path, fraction: float) -> None:
    summary = validate_file(
        str(ORDERS), ValidateConfig(eval_fraction=fraction, schema_only=True), str(tmp_path)
    )
    assert summary.ok and summary.n_eval == td.DEFAULT_EVAL
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert len(train) == td.DEFAULT_TRAIN
    held = td.held_out_vocabulary()
    words = [*held["first_names"], *held["last_names"], *held["cities"], *held["items"]]
    train_text = "\n".join(r["instruction"] + "\n" + r["input"] for r in train)
    for w in words:  # no held-out entity is ever seen in training
        assert not re.search(rf"\b{re.escape(w)}", train_text), w
    train_instructions = {r["instruction"] for r in train}
    for row in evals:
        assert row["instruction"] in held["instructions"]
        assert row["instruction"] not in train_instructions
        assert any(n in row["input"] for n in held["first_names"])
        assert any(c in row["input"] for c in held["cities"])


def test_exact_match_and_rouge_l_differ_on_near_misses() -> None:
    rows = [r for r in _committed() if td.split_of(r) == "eval"][:20]
    refs = [r["output"] for r in rows]
    # One wrong field or word per answer: no exact match, most of the ROUGE-L.
    preds = [re.sub(r"\d+", lambda m: str(int(m[0]) + 1), ref, count=1) for ref in refs]
    scores = M.generation_metrics(preds, refs)
    assert scores["exact_match"] == 0.0 and scores["rouge_l"] > 0.8
    assert M.generation_metrics(refs, refs)["exact_match"] == 1.0
