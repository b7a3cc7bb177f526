"""Tokenise Alpaca JSONL through Hugging Face ``datasets`` into a content-keyed Arrow cache.

``load_dataset("json")`` turns the file into Arrow, ``.map`` (parallel for large files) runs
``formatting.encode_row`` on every row, and the result is saved under a key made of everything
that decides the tokens: the data's sha256, the tokenizer (its serialised vocabulary/merges,
special tokens and chat template), the formatting code, the system prompt, ``max_seq_len`` and
the long-row policy. Any change gives a new key, so stale tokens are never reused, even when
the data file is rewritten at the same path. The cached dataset is memory-mapped, so data
larger than RAM still trains.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE_LAYOUT_VERSION = "1"
"""Bumped when the cached columns change."""

PARALLEL_MIN_ROWS = 20_000
"""Below this many rows a single process is faster than starting workers."""


@dataclass
class TokenizedData:
    """The tokenised training rows and what happened to the others."""

    dataset: Any
    """``datasets.Dataset`` with ``input_ids``, ``labels``, ``length``, ``n_supervised``."""
    n_rows: int
    """Rows read from the file."""
    n_kept: int
    n_dropped: int
    dropped_by_code: dict[str, int] = field(default_factory=dict)
    n_truncated: int = 0
    n_tokens: int = 0
    n_supervised: int = 0
    key: str = ""
    cache_dir: str = ""
    cache_hit: bool = False

    def lengths(self) -> list[int]:
        """Token count of every kept example (in dataset order)."""
        return self.dataset.data.column("length").to_pylist()


def file_sha256(path: str) -> str:
    """Hex sha256 of a local file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hex digest of everything in a tokenizer that changes ids: vocabulary, merges,
    normaliser and pre-tokeniser (the serialised fast tokenizer), special tokens and the chat
    template."""
    from trainer.formatting import end_token_id

    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {
        "class": type(tokenizer).__name__,
        "chat_template": tokenizer.chat_template,
        "eos": tokenizer.eos_token,
        "pad": tokenizer.pad_token,
        "bos": tokenizer.bos_token,
        "end": end_token_id(tokenizer),
        "special": sorted(str(t) for t in tokenizer.all_special_tokens),
    }
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _formatting_fingerprint() -> str:
    """Hash of the code that turns rows into ids (formatting.py and this module)."""
    from trainer import formatting

    h = hashlib.sha256(Path(formatting.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def cache_key(
    data_sha256: str,
    tokenizer: Any,
    *,
    system_prompt: str,
    max_seq_len: int,
    long_rows: str,
) -> str:
    """The cache key of a tokenised file (see the module docstring for what it covers)."""
    parts = {
        "layout": CACHE_LAYOUT_VERSION,
        "data": data_sha256,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "formatting": _formatting_fingerprint(),
        "system_prompt": system_prompt,
        "max_seq_len": max_seq_len,
        "long_rows": long_rows,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def default_cache_dir() -> str:
    """``<cache_root>/tokenized`` (``$LLMFT_CACHE`` or ``~/.cache/llmft``)."""
    from trainer.tiny_model import cache_root

    return str(cache_root() / "tokenized")


def _encode_batch(
    batch: dict[str, list[Any]],
    tokenizer: Any,
    system_prompt: str,
    max_seq_len: int,
    long_rows: str,
) -> dict[str, list[Any]]:
    from trainer.formatting import FormatError, encode_row

    n = len(next(iter(batch.values())))
    out: dict[str, list[Any]] = {
        k: [] for k in ("input_ids", "labels", "length", "n_supervised", "truncated", "drop")
    }
    for i in range(n):
        row = {k: v[i] for k, v in batch.items()}
        try:
            if not isinstance(row.get("instruction"), str) or not isinstance(
                row.get("output"), str
            ):
                raise FormatError("bad-row", "instruction and output must be strings")
            enc = encode_row(
                tokenizer,
                row,
                system_prompt=system_prompt,
                max_seq_len=max_seq_len,
                long_rows="truncate" if long_rows == "truncate" else "drop",
            )
        except FormatError as exc:
            ids, labels, trunc, code = [], [], False, exc.code
        except (KeyError, TypeError, AttributeError):
            # Wrong types (validation reports them); never let one row stop the map.
            ids, labels, trunc, code = [], [], False, "bad-row"
        else:
            ids, labels, trunc, code = enc.input_ids, enc.labels, enc.truncated, ""
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["n_supervised"].append(sum(1 for x in labels if x != -100))
        out["truncated"].append(trunc)
        out["drop"].append(code)
    return out


def tokenize_file(
    path: str,
    tokenizer: Any,
    *,
    system_prompt: str = "",
    max_seq_len: int = 512,
    long_rows: str = "drop",
    cache_dir: str | None = None,
    num_proc: int | None = None,
) -> TokenizedData:
    """Tokenise a local Alpaca JSONL file (cached by content).

    Rows that ``encode_row`` refuses are dropped and counted by reason (validation already
    reported them to the user).

    Args:
        path: Local JSONL file.
        tokenizer: The model's tokenizer (with its chat template).
        system_prompt: Optional system message for every row.
        max_seq_len: Longest example in tokens.
        long_rows: ``drop`` or ``truncate`` (cut the response tail, never the prompt) or
            ``fail`` (raise naming the first too-long row).
        cache_dir: Cache root; default ``default_cache_dir()``.
        num_proc: Worker processes for ``map``; ``None`` picks by file size.

    Returns:
        The tokenised data and counts.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``long_rows="fail"`` and a row is too long.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    key = cache_key(
        file_sha256(path),
        tokenizer,
        system_prompt=system_prompt,
        max_seq_len=max_seq_len,
        long_rows=long_rows,
    )
    root = Path(cache_dir or default_cache_dir())
    final = root / key
    if (final / "meta.json").exists():
        return _load(final, key, hit=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        _build(path, tokenizer, tmp, system_prompt, max_seq_len, long_rows, num_proc)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "meta.json").exists():
                raise
            # Another process built the same key first; its content is identical.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(final, key, hit=False)


def _build(
    path: str,
    tokenizer: Any,
    out: Path,
    system_prompt: str,
    max_seq_len: int,
    long_rows: str,
    num_proc: int | None,
) -> None:
    import datasets
    import pyarrow.compute as pc

    work = out / "work"
    datasets.disable_progress_bars()
    raw = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(work / "hf")
    )
    n_rows = len(raw)
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8) if n_rows >= PARALLEL_MIN_ROWS else None
    mapped = raw.map(
        _encode_batch,
        batched=True,
        batch_size=1000,
        num_proc=num_proc,
        remove_columns=raw.column_names,
        fn_kwargs={
            "tokenizer": tokenizer,
            "system_prompt": system_prompt,
            "max_seq_len": max_seq_len,
            "long_rows": long_rows,
        },
        cache_file_name=str(work / "mapped.arrow"),
        load_from_cache_file=False,
    )
    drop = mapped.data.column("drop")
    counts = {str(v["values"]): int(v["counts"]) for v in pc.value_counts(drop).to_pylist()}
    counts.pop("", None)
    if long_rows == "fail" and counts.get("too-long"):
        first = drop.to_pylist().index("too-long")
        raise ValueError(f"{path}: row {first + 1}: longer than max_seq_len {max_seq_len} tokens")
    kept = mapped.filter(
        lambda d: [c == "" for c in d],
        input_columns=["drop"],
        batched=True,
        batch_size=10_000,
        cache_file_name=str(work / "kept.arrow"),
        load_from_cache_file=False,
    ).remove_columns(["drop"])
    kept.save_to_disk(str(out / "data"))
    meta = {
        "source": str(path),
        "n_rows": n_rows,
        "n_kept": len(kept),
        "dropped_by_code": counts,
        "n_truncated": int(pc.sum(kept.data.column("truncated")).as_py() or 0),
        "n_tokens": int(pc.sum(kept.data.column("length")).as_py() or 0),
        "n_supervised": int(pc.sum(kept.data.column("n_supervised")).as_py() or 0),
        "system_prompt": system_prompt,
        "max_seq_len": max_seq_len,
        "long_rows": long_rows,
    }
    del raw, mapped, kept
    shutil.rmtree(work, ignore_errors=True)
    # Written last: its presence marks a complete cache entry.
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def _load(final: Path, key: str, *, hit: bool) -> TokenizedData:
    import datasets

    meta = json.loads((final / "meta.json").read_text())
    ds = datasets.load_from_disk(str(final / "data"))
    return TokenizedData(
        dataset=ds,
        n_rows=meta["n_rows"],
        n_kept=meta["n_kept"],
        n_dropped=meta["n_rows"] - meta["n_kept"],
        dropped_by_code=meta["dropped_by_code"],
        n_truncated=meta["n_truncated"],
        n_tokens=meta["n_tokens"],
        n_supervised=meta["n_supervised"],
        key=key,
        cache_dir=str(final),
        cache_hit=hit,
    )
