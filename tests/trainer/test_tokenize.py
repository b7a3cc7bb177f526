"""Tokenising through datasets: labels as encode_row makes them, drops counted, cache keyed."""

from __future__ import annotations

import json
import shutil

import pytest

from trainer.formatting import encode_row
from trainer.tokenize import cache_key, file_sha256, tokenize_file, tokenizer_fingerprint

ROWS = [
    {"instruction": "Count the words in the input.", "input": "a b c", "output": "3"},
    {"instruction": "Give the antonym of early.", "input": "", "output": "late"},
    {"instruction": "Say nothing.", "input": "", "output": "   "},  # no supervised token
    {"instruction": "Repeat the words.", "input": "kiwi " * 30, "output": "kiwi " * 30},  # long
    {"instruction": "Give the word that comes last.", "output": "snow"},  # no input key
]
MAX_LEN = 64


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def data(tmp_path):
    return _write(tmp_path / "train.jsonl", ROWS)


def test_columns_match_encode_row_and_drops_are_counted(data, tmp_path, tiny_tokenizer):
    out = tokenize_file(data, tiny_tokenizer, max_seq_len=MAX_LEN, cache_dir=str(tmp_path / "c"))
    assert (out.n_rows, out.n_kept, out.n_dropped) == (5, 3, 2)
    assert out.dropped_by_code == {"empty-after-format": 1, "too-long": 1}
    assert set(out.dataset.column_names) >= {"input_ids", "labels", "length", "n_supervised"}
    kept = [ROWS[0], ROWS[1], ROWS[4]]
    for got, row in zip(out.dataset, kept, strict=True):
        want = encode_row(tiny_tokenizer, row, max_seq_len=MAX_LEN)
        assert got["input_ids"] == want.input_ids
        assert got["labels"] == want.labels
        assert got["length"] == len(want.input_ids)
        assert got["n_supervised"] == want.n_supervised
    assert out.lengths() == [len(r["input_ids"]) for r in out.dataset]
    assert out.n_supervised == sum(out.dataset["n_supervised"])


def test_truncate_keeps_the_long_row_and_fail_names_it(data, tmp_path, tiny_tokenizer):
    cache = str(tmp_path / "c")
    out = tokenize_file(
        data, tiny_tokenizer, max_seq_len=MAX_LEN, long_rows="truncate", cache_dir=cache
    )
    assert out.n_kept == 4 and out.n_truncated == 1
    assert max(out.lengths()) == MAX_LEN
    with pytest.raises(ValueError, match="row 4"):
        tokenize_file(data, tiny_tokenizer, max_seq_len=MAX_LEN, long_rows="fail", cache_dir=cache)


def test_second_call_hits_the_cache(data, tmp_path, tiny_tokenizer):
    cache = str(tmp_path / "c")
    first = tokenize_file(data, tiny_tokenizer, max_seq_len=MAX_LEN, cache_dir=cache)
    again = tokenize_file(data, tiny_tokenizer, max_seq_len=MAX_LEN, cache_dir=cache)
    assert not first.cache_hit and again.cache_hit
    assert again.key == first.key and again.cache_dir == first.cache_dir
    assert again.dataset["input_ids"] == first.dataset["input_ids"]
    assert again.dropped_by_code == first.dropped_by_code


def test_any_change_that_alters_tokens_misses_the_cache(data, tmp_path, tiny_tokenizer):
    cache = str(tmp_path / "c")
    base = tokenize_file(data, tiny_tokenizer, max_seq_len=MAX_LEN, cache_dir=cache)

    # Same path, rewritten content: must not reuse the old tokens.
    _write(tmp_path / "train.jsonl", [{**ROWS[0], "output": "4"}, *ROWS[1:]])
    changed = tokenize_file(data, tiny_tokenizer, max_seq_len=MAX_LEN, cache_dir=cache)
    assert not changed.cache_hit and changed.key != base.key
    four = tiny_tokenizer("4", add_special_tokens=False)["input_ids"][0]
    assert four in changed.dataset[0]["labels"]

    variants = [
        {"system_prompt": "Be brief."},
        {"max_seq_len": MAX_LEN + 1},
        {"long_rows": "truncate"},
    ]
    keys = {changed.key}
    for kw in variants:
        out = tokenize_file(data, tiny_tokenizer, **{"max_seq_len": MAX_LEN, **kw}, cache_dir=cache)
        assert not out.cache_hit, kw
        keys.add(out.key)
    assert len(keys) == 4


def test_tokenizer_and_template_are_part_of_the_key(tmp_path, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoTokenizer

    sha = "0" * 64
    key = cache_key(sha, tiny_tokenizer, system_prompt="", max_seq_len=64, long_rows="drop")
    other = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer_fingerprint(other) == tokenizer_fingerprint(tiny_tokenizer)
    other.chat_template = tiny_tokenizer.chat_template.replace("\\n", " \\n")
    assert cache_key(sha, other, system_prompt="", max_seq_len=64, long_rows="drop") != key
    # A changed vocabulary (added token) changes the key too.
    d = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, d)
    more = AutoTokenizer.from_pretrained(str(d))
    more.add_tokens(["<|brand_new|>"])
    assert cache_key(sha, more, system_prompt="", max_seq_len=64, long_rows="drop") != key


def test_missing_file_is_a_clear_error(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        tokenize_file(str(tmp_path / "nope.jsonl"), tiny_tokenizer)


def test_file_sha256_streams(tmp_path):
    import hashlib

    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 1_000_000)
    assert file_sha256(str(p)) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


def test_parallel_map_gives_the_same_tokens(tmp_path, tiny_tokenizer):
    rows = [{**ROWS[i % 2], "input": f"w{i}"} for i in range(400)]
    data = _write(tmp_path / "big.jsonl", rows)
    one = tokenize_file(data, tiny_tokenizer, cache_dir=str(tmp_path / "a"), num_proc=1)
    two = tokenize_file(data, tiny_tokenizer, cache_dir=str(tmp_path / "b"), num_proc=2)
    assert one.dataset["input_ids"] == two.dataset["input_ids"]
    assert one.dataset["labels"] == two.dataset["labels"]
