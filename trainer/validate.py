"""The data contract: check an Alpaca JSONL file line by line, split it, measure it, report.

Contract (one JSON object per line):

- ``instruction``: non-empty string (whitespace-only counts as empty),
- ``input``: string, may be empty or absent (absent means ``""``),
- ``output``: non-empty string.

Every line is checked. Problems carry a stable code and a 1-based line number and print as
``FILE:LINE: CODE: message``. The file is streamed in binary chunks, so memory stays bounded
whatever its size; a line longer than ``max_line_bytes`` is refused without being held.

Speed (see bench/validate_throughput.py): each ~100 KB chunk of whole lines is decoded in ONE
msgspec call as a JSON array (``[`` + the lines joined by ``,`` + ``]``) of a typed ``_Row``
struct that forbids unknown keys. Replacing every newline by a comma makes the decoder enforce
"exactly one object per line": a blank line, two objects on a line or an object spread over two
lines is a syntax error, so a successful decode has one row per line and the row index is the
line number. Per-row work is C-level ``map`` calls. A chunk that fails in any way goes to the
slow path, which classifies each of its lines exactly.

Duplicates are found on a normalised form of each row: each field stripped of leading and
trailing whitespace (the same normalisation that decides "empty"). Rows are indexed by Python's
keyed 64-bit hash of the stripped fields; a hit is confirmed by re-reading the earlier row from
the source and comparing contents, so a hash collision never rejects a row (until the first
repeat the index is a set, cheaper to fill than a dict). Internal whitespace
runs are not collapsed: collapsing them (``" ".join(s.split())`` per field, or any chunk-level
equivalent with bytes/str primitives) costs about as much as a whole stdlib ``json.loads`` pass
over the file, i.e. it would more than halve the validator's speed.

The train/eval side of a row is decided by ``crc32`` of the row's canonical JSON (the bytes
written to ``train.jsonl``/``eval.jsonl``: keys in contract order, msgspec's escaping), so it
depends on the row's content only: appending, reordering or re-serialising rows (key order,
spacing, escapes, CRLF) never moves a row. The split and the train/eval prompt overlap are
computed when they are used: with ``out_dir`` or with the token checks. A schema-only check
without ``out_dir`` skips them (``ValidationSummary.split_computed`` is False); that pass is
the fast path ``llmft validate --schema-only`` takes.

``rejects.jsonl`` stores each rejected line as ``{"line", "code", "message", "problems",
"raw"}``; ``raw`` is the line as text, or ``null`` plus ``raw_base64`` (the exact bytes) when the
line is not valid UTF-8, or ``null`` plus ``raw_bytes`` (its size) when it was too large to hold.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import hashlib
import itertools
import operator
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from trainer.config import ValidateConfig

FIELDS = ("instruction", "input", "output")
"""The keys of a row, in output order."""

CODES: dict[str, str] = {
    "invalid-json": "not valid JSON (or trailing characters after the object)",
    "not-an-object": "the line is valid JSON but not an object",
    "missing-field": "a required key (instruction, output) is absent",
    "empty-field": "instruction or output is empty or whitespace only",
    "wrong-type": "a field is not a string (number, null, object, array, boolean)",
    "unknown-field": "a key other than instruction/input/output (ignored; warning by default)",
    "invalid-utf8": "bytes that are not valid UTF-8 (or an unpaired surrogate escape)",
    "line-too-large": "the line is longer than max_line_bytes and was refused unread",
    "duplicate": "same content as an earlier row once each field is stripped",
    "too-long": "more tokens than max_seq_len (handled by the long_rows policy)",
    "empty-after-format": "no response token would remain after formatting/truncation",
    "no-rows": "the file has no valid row",
    "empty-eval": "the eval split is empty",
    "overlap": "a prompt appears in both train and eval",
}
"""Every problem code and what it means (also printed in report.md)."""

# 96 KiB: a chunk's buffers stay under glibc's mmap threshold (128 KiB), so they reuse heap
# memory; bigger chunks get fresh mmap'd pages each time (~25 % more CPU in page faults at
# 512 KiB, ~2x slower decoding at 8 MiB), smaller ones add per-chunk Python overhead.
_CHUNK = 96 * 1024
_BOM = b"\xef\xbb\xbf"
_KEEP_PROBLEMS = 1000  # problems kept in memory for the summary; counts are always exact
_EXAMPLES_PER_CODE = 5


class NeedsConversion(ValueError):
    """The source is an Alpaca JSON array, not JSONL: run ``llmft convert`` first."""


class ConvertError(ValueError):
    """The JSON array given to :func:`convert_json_to_jsonl` cannot be converted."""


@dataclass
class Problem:
    """One finding about one line."""

    source: str
    line: int
    code: str
    message: str
    severity: str = "error"  # "error" rejects the row, "warning" keeps it (or drops by policy)

    def __str__(self) -> str:
        suffix = " (warning)" if self.severity == "warning" else ""
        return f"{self.source}:{self.line}: {self.code}: {self.message}{suffix}"


@dataclass
class ValidationSummary:
    """What validation found. ``lines_read == accepted + rejected + blank`` always holds."""

    source: str
    ok: bool = False
    lines_read: int = 0
    accepted: int = 0
    rejected: int = 0
    blank: int = 0
    error_rows: int = 0
    dropped_long: int = 0
    truncated: int = 0
    response_cut: int = 0
    warnings: int = 0
    n_train: int = 0
    n_eval: int = 0
    split_computed: bool = False  # False: schema-only check without out_dir (n_train/n_eval unset)
    input_bytes: int = 0
    input_sha256: str = ""
    counts_by_code: dict[str, int] = field(default_factory=dict)
    examples_by_code: dict[str, list[int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    token_stats: dict[str, Any] | None = None
    overlap: dict[str, Any] = field(default_factory=lambda: {"count": 0, "examples": []})
    outputs: dict[str, str] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def error_fraction(self) -> float:
        """Rows rejected for an error, over non-blank lines."""
        rows = self.lines_read - self.blank
        return self.error_rows / rows if rows else 0.0

    @property
    def balanced(self) -> bool:
        """The "nothing lost" equation."""
        return self.lines_read == self.accepted + self.rejected + self.blank

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (problems as ``FILE:LINE: CODE: message`` strings)."""
        d = asdict(self)
        d["problems"] = [str(p) for p in self.problems]
        d["error_fraction"] = self.error_fraction
        d["balanced"] = self.balanced
        return d


class _Row(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    instruction: str
    input: str = ""
    output: str


_DECODE_ROWS = msgspec.json.Decoder(list[_Row]).decode
_DECODE_ANY = msgspec.json.Decoder().decode
_ENCODER = msgspec.json.Encoder()
_ENCODE = _ENCODER.encode
_GET_I = operator.attrgetter("instruction")
_GET_N = operator.attrgetter("input")
_GET_O = operator.attrgetter("output")
_FAST_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _json_error(exc: Exception) -> str:
    msg = str(exc)
    if "trailing characters" in msg:
        return msg.replace(
            "JSON is malformed: trailing characters", "trailing characters after the object"
        )
    if "truncated" in msg.lower():
        return "JSON is truncated (unterminated object or string)"
    return msg


def _classify(
    raw: bytes, cfg: ValidateConfig
) -> tuple[tuple[str, str, str] | None, list[tuple[str, str, str]]]:
    """Check one non-blank line exactly; return the row (or None) and its (code, message, severity)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        return None, [
            ("invalid-utf8", f"invalid UTF-8 byte 0x{bad} at byte {exc.start + 1}", "error")
        ]
    try:
        obj = _DECODE_ANY(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        if "surrogate" in str(exc):  # \ud800 without its pair: JSON that is not Unicode text
            return None, [("invalid-utf8", f"unpaired UTF-16 surrogate escape: {exc}", "error")]
        return None, [("invalid-json", _json_error(exc), "error")]
    if not isinstance(obj, dict):
        return None, [("not-an-object", f"expected a JSON object, got {_json_kind(obj)}", "error")]
    found: list[tuple[str, str, str]] = []
    unknown_sev = "error" if cfg.unknown_fields == "error" else "warning"
    for key in obj:
        if key not in FIELDS:
            found.append(("unknown-field", f"unknown key {key!r} is ignored", unknown_sev))
    for key in FIELDS:
        if key not in obj:
            if key != "input":
                found.append(("missing-field", f"missing key {key!r}", "error"))
            continue
        value = obj[key]
        if not isinstance(value, str):
            found.append(
                ("wrong-type", f"{key!r} must be a string, got {_json_kind(value)}", "error")
            )
        elif key != "input" and not value.strip():
            what = "empty" if not value else "whitespace only"
            found.append(("empty-field", f"{key!r} is {what}", "error"))
    if any(sev == "error" for _, _, sev in found):
        return None, found
    return (obj["instruction"], obj.get("input", ""), obj["output"]), found


# --------------------------------------------------------------------------- reading


def _open_source(src: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    if src.startswith("gs://"):
        from trainer import storage

        return storage.open_read(src)
    path = src[len("file://") :] if src.startswith("file://") else src
    return open(path, "rb")


def _source_size(src: str) -> int | None:
    if src.startswith("gs://"):
        return None
    path = src[len("file://") :] if src.startswith("file://") else src
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _looks_like_array(head: bytes, src: str) -> bool:
    stripped = head.lstrip(_BOM).lstrip()
    name = src.lower().rstrip("/")
    return stripped.startswith(b"[") and name.endswith(".json")


def _batches(
    fh: IO[bytes], max_line_bytes: int, digest: Any, progress: Callable[[int], None] | None
) -> Iterator[tuple[memoryview, bytearray, int, int] | int]:
    """Yield, in file order, chunks of whole lines and the sizes of too-large lines.

    A chunk is ``(array, buf, cut, offset)``: its lines are ``buf[1:cut]``, read from byte
    ``offset`` of the file, (joined by ``\\n``, no final
    newline; the caller counts them) and ``array`` is the same bytes as one JSON array text,
    ``[`` + the lines with each newline replaced by ``,`` + ``]``, ready for the typed decoder.
    ``buf`` is only valid until the next chunk is requested. Building the array costs one copy
    (``bytearray.replace``): ``buf`` keeps the ``[`` and the carried partial line in front of
    the data, and the chunk's last newline is overwritten by the closing ``]``.

    A partial line that grows past ``max_line_bytes`` is dropped and the rest of it skipped
    chunk by chunk, so memory stays below ``max_line_bytes + chunk`` whatever the line length.
    """
    chunk = max(64 * 1024, min(_CHUNK, max_line_bytes))
    read = fh.read
    buf = bytearray(b"[")  # "[" + the partial line carried over from the previous chunk
    skipping = False
    skipped = 0
    first = True
    read_total = 0
    while True:
        data = read(chunk)
        if not data:
            break
        digest.update(data)
        read_total += len(data)
        if progress is not None:
            progress(read_total)
        if first:
            first = False
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        if skipping:
            cut = data.find(b"\n")
            if cut < 0:
                skipped += len(data)
                continue
            skipped += cut
            yield skipped
            skipping = False
            data = data[cut + 1 :]
        new = len(buf)
        buf += data
        cut = buf.rfind(b"\n", new)  # the carried part has no newline
        if cut >= 0:
            buf[cut] = 0x5D  # "]"
            offset = read_total - (len(buf) - 1)
            yield memoryview(buf.replace(b"\n", b","))[: cut + 1], buf, cut, offset
            del buf[1 : cut + 1]
        if len(buf) - 1 > max_line_bytes:
            skipping, skipped = True, len(buf) - 1
            del buf[1:]
    if skipping:
        yield skipped
    elif len(buf) > 1:  # the last line has no newline
        cut = len(buf)
        offset = read_total - (cut - 1)
        buf += b"]"
        yield memoryview(buf.replace(b"\n", b",")), buf, cut, offset


def _body(buf: bytearray, cut: int) -> bytes:
    """The raw lines of a chunk from :func:`_batches`."""
    with memoryview(buf) as view:
        return view[1:cut].tobytes()


def _lines_within(buf: bytearray, cut: int, limit: int) -> bool:
    """Whether every line of a chunk (``buf[1:cut]``) is at most ``limit`` bytes."""
    start = 1
    while cut - start > limit:
        # The last newline within limit+1 bytes of a line start ends every line before it.
        nl = buf.rfind(b"\n", start, start + limit + 1)
        if nl < 0:
            return False
        start = nl + 1
    return True


# --------------------------------------------------------------------------- token checks


@dataclass
class _TokenVerdict:
    prompt_len: int
    response_len: int
    code: str | None = None
    message: str = ""
    truncated: bool = False
    cut_entirely: bool = False


class _TokenChecker:
    """Measures rows with the model's tokenizer and chat template (``encode_row``)."""

    def __init__(self, cfg: ValidateConfig) -> None:
        from transformers import AutoTokenizer

        from trainer.models import resolve_model

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model))

    def check_many(self, rows: list[tuple[str, str, str]]) -> list[_TokenVerdict]:
        """Verdicts for many rows: what ``encode_row`` gives, with one batched tokenizer call."""
        from trainer.formatting import FormatError, build_messages, end_token_id, render_prompt

        tok = self.tokenizer
        sp = self.cfg.system_prompt
        dicts = [{"instruction": r[0], "input": r[1], "output": r[2]} for r in rows]
        prompts = [render_prompt(tok, d, sp) for d in dicts]
        fulls = [
            tok.apply_chat_template(
                build_messages(d, sp), tokenize=False, add_generation_prompt=False
            )
            for d in dicts
        ]
        if not all(f.startswith(p) for p, f in zip(prompts, fulls, strict=True)):
            return [self.check(r) for r in rows]  # encode_row names the template problem
        p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
        tails = [f[len(p) :] for p, f in zip(prompts, fulls, strict=True)]
        r_ids = tok(tails, add_special_tokens=False)["input_ids"]
        end = end_token_id(tok)
        out = []
        for row, p, r in zip(rows, p_ids, r_ids, strict=True):
            # As encode_row: what follows the end token is never predicted; add it if absent.
            r = r[: len(r) - r[::-1].index(end)] if end in r else [*r, end]
            if len(r) <= 1:
                err = FormatError("empty-after-format", "response is empty after formatting")
                out.append(_TokenVerdict(len(p), len(r), err.code, str(err)))
            elif len(p) + len(r) <= self.cfg.max_seq_len:
                out.append(_TokenVerdict(len(p), len(r)))
            else:
                out.append(self._long(row, len(p), len(r)))
        return out

    def check(self, row: tuple[str, str, str]) -> _TokenVerdict:
        """The verdict for one row, straight from ``encode_row``."""
        from trainer.formatting import FormatError, encode_row

        d = {"instruction": row[0], "input": row[1], "output": row[2]}
        try:
            full = encode_row(
                self.tokenizer, d, system_prompt=self.cfg.system_prompt, max_seq_len=None
            )
        except FormatError as exc:
            return _TokenVerdict(0, 0, exc.code, str(exc))
        p_len = full.prompt_len
        r_len = len(full.input_ids) - p_len
        if p_len + r_len <= self.cfg.max_seq_len:
            return _TokenVerdict(p_len, r_len)
        return self._long(row, p_len, r_len)

    def _long(self, row: tuple[str, str, str], p_len: int, r_len: int) -> _TokenVerdict:
        from trainer.formatting import FormatError, encode_row

        cfg = self.cfg
        v = _TokenVerdict(p_len, r_len, cut_entirely=p_len >= cfg.max_seq_len)
        d = {"instruction": row[0], "input": row[1], "output": row[2]}
        # The same call the trainer makes, so the verdict is the trainer's.
        try:
            enc = encode_row(
                self.tokenizer,
                d,
                system_prompt=cfg.system_prompt,
                max_seq_len=cfg.max_seq_len,
                long_rows=cfg.long_rows,
            )
        except FormatError as exc:
            v.code, v.message = exc.code, str(exc)
            return v
        v.truncated = enc.truncated
        v.message = (
            f"{p_len + r_len} tokens > max_seq_len {cfg.max_seq_len}: response truncated to "
            f"{len(enc.input_ids) - enc.prompt_len} tokens"
        )
        return v


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0}
    s = sorted(values)

    def rank(q: float) -> int:
        return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]

    return {
        "p50": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "max": s[-1],
        "mean": round(sum(s) / len(s)),
    }


# --------------------------------------------------------------------------- outputs


class _HashingWriter:
    """A local file written through sha256."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        if data:
            self.sha.update(data)
            self.fh.write(data)

    def close(self) -> str:
        self.fh.close()
        return self.sha.hexdigest()


class _Outputs:
    def __init__(self, out_dir: str) -> None:
        from trainer import storage

        local = storage.local_path(out_dir) if hasattr(storage, "local_path") else out_dir
        if local is None:
            raise ValueError(f"out_dir must be a local directory, got {out_dir}")
        self.dir = Path(local)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.train = _HashingWriter(self.dir / "train.jsonl")
        self.eval = _HashingWriter(self.dir / "eval.jsonl")
        self.rejects = _HashingWriter(self.dir / "rejects.jsonl")

    def close(self) -> dict[str, str]:
        return {
            "train.jsonl": self.train.close(),
            "eval.jsonl": self.eval.close(),
            "rejects.jsonl": self.rejects.close(),
        }


def _reject_record(
    line: int, problems: list[tuple[str, str, str]], raw: bytes | None, size: int
) -> bytes:
    code, message, _ = next((p for p in problems if p[2] == "error"), problems[0])
    rec: dict[str, Any] = {
        "line": line,
        "code": code,
        "message": message,
        "problems": [{"code": c, "message": m, "severity": s} for c, m, s in problems],
    }
    if raw is None:
        rec["raw"] = None
        rec["raw_bytes"] = size
    else:
        try:
            rec["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            rec["raw"] = None
            rec["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return _ENCODE(rec) + b"\n"


# --------------------------------------------------------------------------- the validator


class _Validator:
    def __init__(
        self,
        src: str,
        cfg: ValidateConfig,
        out_dir: str | None,
        on_problem: Callable[[Problem], None] | None,
    ) -> None:
        self.src = src
        self.cfg = cfg
        self.on_problem = on_problem
        self.summary = ValidationSummary(source=src, config=asdict(cfg))
        self.counts: Counter[str] = Counter()
        # Hash of each normalised row. Until the first repeat a set is enough (and ~2x cheaper
        # to fill than a dict): the keys of each chunk are kept so that the first repeat can
        # build ``seen`` (hash -> first line), used from then on.
        self.seen_set: set[int] | None = set()
        self.set_chunks: list[tuple[int, list[int]]] = []
        self.seen: dict[int, int] = {}
        # A hash hit is confirmed by re-reading the earlier row (see duplicate_of): where each
        # chunk starts (line) and lies in the file (offset, size), a few re-read chunks cached.
        self.chunk_lines: list[int] = []
        self.chunk_spans: list[tuple[int, int]] = []
        self.reread: Callable[[int, int], bytes] | None = None
        self.reread_cache: dict[int, list[bytes]] = {}
        self.collided: dict[tuple[str, str, str], int] = {}  # rows whose hash was taken
        self.train_prompts: dict[int, int] = {}  # hash of normalised prompt -> first train line
        self.eval_prompts: dict[int, int] = {}
        # eval iff crc32(canonical row JSON) < threshold: stable, position independent.
        self.threshold = int(cfg.eval_fraction * 2**32)
        self.tokens = None if cfg.schema_only else _TokenChecker(cfg)
        self.prompt_lens: list[int] = []
        self.response_lens: list[int] = []
        self.too_long = 0
        self.pending: list[tuple[int, tuple[str, str, str], int, Any]] = []
        self.outputs = _Outputs(out_dir) if out_dir is not None else None
        # The split costs ~30 % of the schema-only pass; it is only needed to write the files
        # or next to the (much slower) token checks.
        self.do_split = self.outputs is not None or self.tokens is not None

    # ---- bookkeeping

    def problem(self, line: int, code: str, message: str, severity: str = "error") -> None:
        s = self.summary
        self.counts[code] += 1
        if severity == "warning":
            s.warnings += 1
        ex = s.examples_by_code.setdefault(code, [])
        if len(ex) < _EXAMPLES_PER_CODE:
            ex.append(line)
        p = Problem(self.src, line, code, message, severity)
        if len(s.problems) < _KEEP_PROBLEMS:
            s.problems.append(p)
        if self.on_problem is not None:
            self.on_problem(p)

    def reject(
        self, line: int, problems: list[tuple[str, str, str]], raw: bytes | None, size: int = 0
    ) -> None:
        s = self.summary
        s.rejected += 1
        if any(sev == "error" for _, _, sev in problems):
            s.error_rows += 1
        if self.outputs is not None:
            self.outputs.rejects.write(_reject_record(line, problems, raw, size))

    def _dict_mode(self) -> dict[int, int]:
        """Switch the duplicate index from the set to the dict (hash -> first line)."""
        if self.seen_set is not None:
            for first, keys in self.set_chunks:  # all distinct: a repeat ends the set mode
                self.seen.update(zip(keys, range(first, first + len(keys)), strict=True))
            self.seen_set = None
            self.set_chunks = []
        return self.seen

    def duplicate_of(self, line: int, norm: tuple[str, str, str], first: int) -> int | None:
        """The earlier line this row repeats, given that its hash matched ``first``'s.

        Hash hits are rare (real duplicates, or a 64-bit collision): the earlier row is re-read
        from the source and compared by content, so a collision never rejects a row. Returns
        ``None`` when the contents differ and no earlier colliding row has this content.
        """
        if self.reread is None or self._norm_at(first) == norm:
            return first
        seen = self.collided.setdefault(norm, line)
        return None if seen == line else seen

    def _norm_at(self, line: int) -> tuple[str, str, str]:
        k = bisect.bisect_right(self.chunk_lines, line) - 1
        lines = self.reread_cache.get(k)
        if lines is None:
            assert self.reread is not None
            lines = self.reread(*self.chunk_spans[k]).split(b"\n")
            if len(self.reread_cache) >= 4:  # duplicates often come in runs: keep a few
                del self.reread_cache[next(iter(self.reread_cache))]
            self.reread_cache[k] = lines
        obj = _DECODE_ANY(lines[line - self.chunk_lines[k]].removesuffix(b"\r"))
        return (obj["instruction"].strip(), obj.get("input", "").strip(), obj["output"].strip())

    # ---- fast path

    def fast_batch(self, start: int, array: memoryview, buf: bytearray, cut: int) -> int | None:
        """Check a chunk of whole lines at C speed and return its line count.

        ``None`` (nothing recorded) when any line needs a closer look: a line msgspec's typed
        decoder refuses, an empty field, an over-long line. The slow path then finds and names
        it exactly. Duplicates are handled here (they need no re-parse).
        """
        cfg = self.cfg
        if cut - 1 > cfg.max_line_bytes and not _lines_within(buf, cut, cfg.max_line_bytes):
            return None
        try:
            # Newline -> comma: a blank line, a second object on a line or an object across
            # lines is then a syntax error, so row i is exactly line start + i.
            rows = _DECODE_ROWS(array)
        except _FAST_ERRORS:
            return None
        if not rows:  # a blank body ("[ ]" decodes to no row): one blank line
            return None
        ins = list(map(str.strip, map(_GET_I, rows)))
        outs = list(map(str.strip, map(_GET_O, rows)))
        if not (all(ins) and all(outs)):
            return None
        inps = list(map(str.strip, map(_GET_N, rows)))
        n = len(rows)
        numbers = range(start, start + n)
        s = self.summary
        s.lines_read += n
        dropped: set[int] = set()
        if cfg.duplicates != "allow":
            keys = list(map(hash, zip(ins, inps, outs, strict=True)))
            known = self.seen_set
            if known is not None:
                before = len(known)
                known.update(keys)
                if len(known) - before == n:  # all new
                    self.set_chunks.append((start, keys))
                else:  # a repeat: the dict from now on (built without this chunk's keys)
                    known = None
            if known is None:
                seen = self._dict_mode()
                before = len(seen)
                # setdefault keeps the first line of each content and returns it.
                firsts = list(map(seen.setdefault, keys, numbers))
                if len(seen) - before != n:  # a row was there already: a duplicate
                    norms = (ins, inps, outs)
                    dropped = self._fast_duplicates(start, buf, cut, firsts, norms)
        if not self.do_split and self.tokens is None:
            s.accepted += n - len(dropped)
            return n
        prompts = list(map(hash, zip(ins, inps, strict=True)))
        if self.tokens is None and not dropped:
            self._place_many(numbers, rows, prompts)
            return n
        for i, (row, ph) in enumerate(zip(rows, prompts, strict=True)):
            if i not in dropped:
                self.keep(start + i, (row.instruction, row.input, row.output), ph, row)
        return n

    def _fast_duplicates(
        self,
        start: int,
        buf: bytearray,
        cut: int,
        firsts: list[int],
        norms: tuple[list[str], list[str], list[str]],
    ) -> set[int]:
        """Report the rows of a decoded chunk that repeat an earlier row; indexes to drop."""
        sev = "error" if self.cfg.duplicates == "error" else "warning"
        keep_raw = self.outputs is not None and sev == "error"
        raw_lines = _body(buf, cut).split(b"\n") if keep_raw else None
        dropped = set()
        for i, first in enumerate(firsts):
            line = start + i
            if first == line:
                continue
            first = self.duplicate_of(line, (norms[0][i], norms[1][i], norms[2][i]), first)
            if first is None:
                continue
            msg = f"same content as line {first} (after stripping whitespace)"
            self.problem(line, "duplicate", msg, sev)
            if sev == "error":
                raw = raw_lines[i].removesuffix(b"\r") if raw_lines is not None else None
                self.reject(line, [("duplicate", msg, sev)], raw)
                dropped.add(i)
        return dropped

    def _place_many(self, numbers: range, rows: list[Any], prompts: list[int]) -> None:
        """``place`` for a whole chunk of accepted rows (no token checks): C-level maps."""
        s = self.summary
        n = len(rows)
        blob = _ENCODER.encode_lines(rows)  # the canonical rows, as written to the splits
        lines = blob.split(b"\n")
        lines.pop()
        is_eval = list(map(self.threshold.__gt__, map(zlib.crc32, lines)))
        n_eval = sum(is_eval)
        s.accepted += n
        s.n_eval += n_eval
        s.n_train += n - n_eval
        if not n_eval:
            list(map(self.train_prompts.setdefault, prompts, numbers))
            if self.outputs is not None:
                self.outputs.train.write(blob)
            return
        is_train = list(map(operator.not_, is_eval))
        for flags, seen, out in (
            (is_train, self.train_prompts, self.outputs and self.outputs.train),
            (is_eval, self.eval_prompts, self.outputs and self.outputs.eval),
        ):
            list(
                map(
                    seen.setdefault,
                    itertools.compress(prompts, flags),
                    itertools.compress(numbers, flags),
                )
            )
            if out:
                part = b"\n".join(itertools.compress(lines, flags))
                if part:  # a canonical row is never empty: no part means no row
                    out.write(part + b"\n")

    # ---- slow path

    def slow_batch(self, start: int, body: bytes) -> int:
        """Classify each line of a chunk exactly; return the number of lines."""
        cfg = self.cfg
        max_bytes = cfg.max_line_bytes
        lines = body.split(b"\n")
        for line, raw in enumerate(lines, start):
            self.summary.lines_read += 1
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > max_bytes:
                self.too_large(line, len(raw), counted=True)
                continue
            if not raw.strip(b" \t\r"):
                self.summary.blank += 1
                continue
            row, found = _classify(raw, cfg)
            for code, message, sev in found:
                self.problem(line, code, message, sev)
            if row is None:
                self.reject(line, found, raw)
                continue
            norm = (row[0].strip(), row[1].strip(), row[2].strip())
            if cfg.duplicates != "allow":
                first = self._dict_mode().setdefault(hash(norm), line)
                if first != line:
                    first = self.duplicate_of(line, norm, first)
                if first is not None and first != line:
                    sev = "error" if cfg.duplicates == "error" else "warning"
                    msg = f"same content as line {first} (after stripping whitespace)"
                    self.problem(line, "duplicate", msg, sev)
                    if sev == "error":
                        self.reject(line, [*found, ("duplicate", msg, sev)], raw)
                        continue
            self.keep(line, row, hash(norm[:2]), None)
        return len(lines)

    def too_large(self, line: int, size: int, *, counted: bool = False) -> None:
        if not counted:
            self.summary.lines_read += 1
        msg = f"line is {size} bytes, over max_line_bytes {self.cfg.max_line_bytes}; refused unread"
        self.problem(line, "line-too-large", msg)
        self.reject(line, [("line-too-large", msg, "error")], None, size)

    # ---- a row that passed the schema checks

    def keep(self, line: int, row: tuple[str, str, str], prompt_hash: int, struct: Any) -> None:
        """A row that passed the schema checks: token-checked in batches, then placed."""
        if self.tokens is None:
            self.place(line, row, prompt_hash, struct)
        else:
            self.pending.append((line, row, prompt_hash, struct))

    def flush(self) -> None:
        """Token-check the pending rows (one batched tokenizer call) and place them."""
        if not self.pending or self.tokens is None:
            return
        pending, self.pending = self.pending, []
        verdicts = self.tokens.check_many([p[1] for p in pending])
        s = self.summary
        for (line, row, ph, struct), v in zip(pending, verdicts, strict=True):
            self.prompt_lens.append(v.prompt_len)
            self.response_lens.append(v.response_len)
            if v.prompt_len + v.response_len > self.cfg.max_seq_len:
                self.too_long += 1
            if v.cut_entirely:
                s.response_cut += 1
            if v.code == "too-long":
                if self.cfg.long_rows == "drop":
                    msg = v.message + "; dropped (long_rows=drop)"
                    self.problem(line, "too-long", msg, "warning")
                    s.dropped_long += 1
                    self.reject(line, [("too-long", msg, "warning")], _row_bytes(row))
                else:
                    msg = v.message + " (long_rows=fail)"
                    self.problem(line, "too-long", msg)
                    self.reject(line, [("too-long", msg, "error")], _row_bytes(row))
                continue
            if v.code is not None:
                self.problem(line, v.code, v.message)
                self.reject(line, [(v.code, v.message, "error")], _row_bytes(row))
                continue
            if v.truncated:
                s.truncated += 1
                self.problem(line, "too-long", v.message + " (long_rows=truncate)", "warning")
            self.place(line, row, ph, struct)

    def place(self, line: int, row: tuple[str, str, str], prompt_hash: int, struct: Any) -> None:
        """Count an accepted row, assign its split and write it."""
        s = self.summary
        s.accepted += 1
        if not self.do_split:
            return
        data = _ENCODE(struct) if struct is not None else _row_bytes(row)
        is_eval = zlib.crc32(data) < self.threshold
        if is_eval:
            s.n_eval += 1
            self.eval_prompts.setdefault(prompt_hash, line)
        else:
            s.n_train += 1
            self.train_prompts.setdefault(prompt_hash, line)
        if self.outputs is not None:
            (self.outputs.eval if is_eval else self.outputs.train).write(data + b"\n")

    def finish(self) -> None:
        s = self.summary
        cfg = self.cfg
        s.split_computed = self.do_split
        overlap = [
            (ln, self.train_prompts[h])
            for h, ln in self.eval_prompts.items()
            if h in self.train_prompts
        ]
        overlap.sort()
        s.overlap = {
            "count": len(overlap),
            "examples": [{"eval_line": e, "train_line": t} for e, t in overlap[:10]],
        }
        if overlap:
            self.counts["overlap"] += len(overlap)
            s.warnings += 1
        if self.tokens is not None:
            n = len(self.prompt_lens)
            s.token_stats = {
                "rows_measured": n,
                "prompt": _percentiles(self.prompt_lens),
                "response": _percentiles(self.response_lens),
                "max_seq_len": cfg.max_seq_len,
                "over_max_seq_len": self.too_long,
                "over_max_seq_len_pct": round(100.0 * self.too_long / n, 2) if n else 0.0,
                "response_cut_entirely": s.response_cut,
                "long_rows": cfg.long_rows,
                "dropped": s.dropped_long,
                "truncated": s.truncated,
                "model": cfg.model,
            }
        reasons = []
        if s.accepted == 0:
            reasons.append("no valid row")
            self.counts["no-rows"] += 1
        if cfg.on_error == "fail" and s.error_rows:
            reasons.append(f"{s.error_rows} row(s) rejected (on_error=fail)")
        if cfg.on_error == "skip" and s.error_fraction > cfg.max_error_fraction:
            reasons.append(
                f"{s.error_fraction:.1%} of rows rejected, over max_error_fraction {cfg.max_error_fraction:.1%}"
            )
        if cfg.long_rows == "fail" and self.too_long:
            reasons.append(f"{self.too_long} row(s) over max_seq_len (long_rows=fail)")
        if self.do_split and s.accepted and cfg.eval_fraction > 0 and s.n_eval == 0:
            self.counts["empty-eval"] += 1
            s.warnings += 1
        s.reasons = reasons
        s.ok = not reasons
        s.counts_by_code = dict(sorted(self.counts.items()))
        if not s.balanced:  # a bug, never a data problem: refuse to claim anything
            raise AssertionError(f"lines_read {s.lines_read} != accepted+rejected+blank")
        if self.outputs is not None:
            s.outputs = self.outputs.close()
            from trainer.report import render_report

            report = render_report(s).encode("utf-8")
            (self.outputs.dir / "report.md").write_bytes(report)
            s.outputs["report.md"] = hashlib.sha256(report).hexdigest()
            (self.outputs.dir / "summary.json").write_bytes(
                msgspec.json.format(_ENCODE(s.to_dict()), indent=2) + b"\n"
            )


def _row_bytes(row: tuple[str, str, str]) -> bytes:
    """The canonical JSON of a row: what the splits hold and what the split hash reads."""
    return _ENCODE({"instruction": row[0], "input": row[1], "output": row[2]})


class _CountingDigest:
    """Counts bytes and, when asked, hashes them (sha256 costs ~10 % of the schema-only path)."""

    def __init__(self, sha: bool) -> None:
        self._sha = hashlib.sha256() if sha else None
        self._llmft_size = 0

    def update(self, data: bytes) -> None:
        if self._sha is not None:
            self._sha.update(data)
        self._llmft_size += len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest() if self._sha is not None else ""


def validate_file(
    src: str,
    cfg: ValidateConfig,
    out_dir: str | None = None,
    *,
    on_problem: Callable[[Problem], None] | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> ValidationSummary:
    """Check every line of an Alpaca JSONL file, split it and (optionally) write the results.

    Args:
        src: Local path, ``file://`` URI or ``gs://bucket/object`` of the JSONL file.
        cfg: Checks, policies and the split (see :class:`trainer.config.ValidateConfig`).
        out_dir: Local directory that receives ``train.jsonl``, ``eval.jsonl``,
            ``rejects.jsonl``, ``report.md`` and ``summary.json``; ``None`` only checks.
        on_problem: Called with each :class:`Problem` as it is found (streaming output).
        on_progress: Called with ``(bytes_read, total_bytes or None)`` after each chunk.

    Returns:
        The summary; ``summary.ok`` says whether the data is valid under ``cfg``.

    Raises:
        NeedsConversion: ``src`` is an Alpaca JSON array (``.json``) rather than JSONL.
        FileNotFoundError: ``src`` does not exist.
    """
    total = _source_size(src)
    progress = None if on_progress is None else (lambda done: on_progress(done, total))
    return _run(_Validator(src, cfg, out_dir, on_problem), progress)


def _run(v: _Validator, progress: Callable[[int], None] | None) -> ValidationSummary:
    s = v.summary
    digest = _CountingDigest(sha=v.outputs is not None)
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(_open_source(v.src))
        again: list[IO[bytes]] = []
        src = v.src  # not v itself: v holds this function, a cycle would keep v alive

        def reread(offset: int, size: int) -> bytes:
            # A second handle, opened on the first hash hit only (gs:// streams seek too).
            if not again:
                again.append(stack.enter_context(_open_source(src)))
            again[0].seek(offset)
            return again[0].read(size)

        v.reread = reread
        head = _peek(fh)
        if _looks_like_array(head, v.src):
            raise NeedsConversion(
                f"{v.src} is a JSON array (Alpaca .json format), not JSONL; "
                f"convert it first: llmft convert {v.src} -o OUT.jsonl"
            )
        line = 0  # lines done so far
        for item in _batches(fh, v.cfg.max_line_bytes, digest, progress):
            if isinstance(item, int):  # a line over max_line_bytes: its size
                line += 1
                v.too_large(line, item)
                continue
            array, buf, cut, offset = item
            v.chunk_lines.append(line + 1)
            v.chunk_spans.append((offset, cut - 1))
            n = v.fast_batch(line + 1, array, buf, cut)
            if n is None:
                n = v.slow_batch(line + 1, _body(buf, cut))
            del array, item
            line += n
            v.flush()
    s.input_bytes = digest._llmft_size
    s.input_sha256 = digest.hexdigest()
    v.finish()
    return s


def _peek(fh: Any) -> bytes:
    if hasattr(fh, "peek"):
        return fh.peek(64)[:64]
    return b""


# --------------------------------------------------------------------------- convert


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    col = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, col


def convert_json_to_jsonl(src: str, dst: str) -> int:
    """Convert an Alpaca JSON array file into JSONL (one object per line, keys kept as they are).

    The whole array is read into memory (a JSON array cannot be streamed line by line); the
    rows are not checked here: run ``validate`` on the result (line N is array index N-1).

    Args:
        src: Local path, ``file://`` or ``gs://`` URI of the ``.json`` array.
        dst: Local path, ``file://`` or ``gs://`` URI of the ``.jsonl`` to write.

    Returns:
        The number of rows written.

    Raises:
        ConvertError: invalid JSON (with line and column), not an array, or an element that is
            not an object (with its index).
    """
    with _open_source(src) as fh:
        data = fh.read()
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        items = _DECODE_ANY(data)
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        raise ConvertError(f"{src}:{line}:{col}: invalid UTF-8") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        msg = str(exc)
        where = ""
        if "(byte " in msg:
            with contextlib.suppress(ValueError):
                off = int(msg.rsplit("(byte ", 1)[1].rstrip(")"))
                line, col = _line_col(data, off)
                where = f"{line}:{col}: "
        raise ConvertError(f"{src}:{where}invalid JSON: {msg}") from None
    if not isinstance(items, list):
        raise ConvertError(f"{src}: expected a JSON array of objects, got {_json_kind(items)}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConvertError(f"{src}: [index {i}]: expected an object, got {_json_kind(item)}")
    payload = _ENCODER.encode_lines(items)
    if dst.startswith("gs://"):
        from trainer import storage

        storage.write_bytes(dst, payload)
    else:
        path = Path(dst[len("file://") :] if dst.startswith("file://") else dst)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(payload)
        tmp.replace(path)
    return len(items)
