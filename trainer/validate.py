r"""The data contract: check an Alpaca JSONL file line by line, split it, measure it, report.

Contract (one JSON object per physical line, lines separated by ``\n``; a ``\r`` before it and
a UTF-8 BOM at the start of the file are not part of a line):

- ``instruction``: non-empty string (whitespace-only counts as empty),
- ``input``: string, may be empty or absent (absent means ``""``),
- ``output``: non-empty string,
- no key given twice (``duplicate-key``: every JSON reader silently keeps one of the values).

Every line is checked on its own: its verdict never depends on the other lines. Problems carry
a stable code and a 1-based physical line number and print as ``FILE:LINE: CODE: message``.
``lines_read`` is the number of physical lines (a final newline ends the last line, it does not
start another) and ``lines_read == accepted + rejected + blank`` always holds. The file is
streamed in binary chunks, so memory stays bounded whatever its size; a line longer than
``max_line_bytes`` is refused without being held.

The fast path, and why it can never disagree with the line-by-line one
---------------------------------------------------------------------

A chunk (~96 KB of whole lines ``L1 .. Ln``) is decoded in ONE msgspec call as the text
``[[L1],\n[L2],\n ... [Ln]]`` (each newline replaced by ``],\n[``) typed as
``list[tuple[Row]]``, where ``Row`` is a struct of string fields that forbids unknown keys.
The chunk is accepted by the fast path only if that decode succeeds, yields exactly ``n``
elements and the colon count below holds; otherwise every line of the chunk goes to the slow
path, which decodes each line alone (``_classify``). The slow path is the definition; the fast
path only ever accepts a chunk whose every line the slow path would accept with the same row.

1. *Each line is exactly one object.* JSON forbids raw control characters inside strings, so
   each inserted ``\n`` lies outside every string; so do the ``]`` and ``,`` just before it (a
   string containing them would have to end before the ``\n``, and neither is a quote) and
   the ``[`` after it (a string starts only with a quote). Hence every string, number and
   literal lies within one line and every inserted byte is a structural token. A ``Row`` holds
   only strings, so every ``[`` token of the text opens the outer array or one of its elements:
   ``len(result) = 1 + (inserted [) - 1 + k = n + k``, where ``k`` counts the ``[`` tokens
   written inside the lines. ``len(result) == n`` therefore means ``k = 0`` (and, brackets
   balancing, no ``]`` inside a line either): element ``i`` is exactly ``[ Li ]``, and
   ``tuple[Row]`` makes it exactly one object. So two objects on a line, a blank line, an
   object split over lines (inside a string: a raw newline; between tokens: unbalanced
   brackets) all fail the chunk, alone or together: no count can be compensated by another.
   The line count itself costs no pass: it is the length the replacement added, divided by 3.
2. *No row repeats a key.* In the raw chunk, each key/value pair has one structural colon;
   every other colon byte is inside a string (keys are instruction/input/output, so inside a
   value). The decoded values hold ``C`` colons; a raw colon inside a string decodes to one, and
   the only other way to write one is the escape ``\u003a``. If the chunk has no ``\u003``
   (or no colon in its values), the number of pairs is exactly ``raw colons - C``. The typed
   decode proves how many distinct keys each row has (``Row3``: the three keys; ``Row2``:
   instruction and output; the mixed ``Row``: ``2 + [input given]``, bounded below by the rows
   whose input is non-empty). So ``pairs == 3n`` (``2n``; ``2n + non-empty inputs``) proves
   that no row has a pair beyond its distinct keys (and since ``raw colons >= pairs >=``
   the expected count, ``raw colons ==`` expected is already the proof, with no pass over the
   values). Rows of a chunk with a repeat, an escaped
   colon or an ambiguous count go to the slow path, which finds the repeats with
   ``json.loads(object_pairs_hook=...)`` (the message names the key and every value). Only the
   row's own keys count; a repeat inside a nested object of an unknown key is not checked.

The per-row work of an accepted chunk is C-level ``map`` calls; the proof costs two byte
passes (colons, and ``\u003`` when the chunk has a backslash) and one over the decoded values.

Workers
-------

A check that writes nothing (no ``out_dir``, ``schema_only``) of a local file of at least
16 MiB runs in several processes (``workers``: one per available CPU, up to 8, at least
8 MiB each; ``workers=1`` keeps one): the file is cut into ranges at line starts, a forked
child runs the stateless fast path (:func:`_scan`) over each range after the first and spools
each chunk's verdict (its line count, the rows' duplicate hashes, which split sides it
touches, or "slow path") to a temporary file, while this process checks the first range. The
verdicts are then merged in file order here: a chunk whose hashes meet a known row, and every
chunk the fast path refused, is checked again by this process from the file, so duplicates,
problems, line numbers and messages are exactly the one-process result (a fork keeps the
parent's ``str`` hash key, and the child proves it). A worker that cannot start (fork or
temporary file refused) or fails has its range checked here; an error or Ctrl-C here kills
and reaps every worker. A process that runs other threads (Python's, or native ones seen in
``/proc/self/task``) never forks. Writing splits or token checks stays in one process: every
row is needed here.

Duplicates
----------

Two rows are duplicates when their three fields are equal once each is stripped of leading and
trailing whitespace (``str.strip()``: any Unicode whitespace, NBSP included; an absent input
is ``""``). Whitespace INSIDE a field is compared exactly: ``"a  b"`` and ``"a b"`` differ.
Collapsing inner runs (``" ".join(s.split())`` per field, or any bytes-level equivalent with
the stdlib: ``translate``/``replace`` passes over the chunk) costs more than the whole stdlib
``json.loads`` pass it is measured against (bench/validate_throughput.py), i.e. it would
break the speed goal. Rows are indexed by Python's keyed 64-bit hash of the stripped fields;
a hit is confirmed by re-reading the earlier row from the source and comparing contents, so
a hash collision never rejects a row (until the first repeat the index is a set, cheaper to
fill than a dict).

Split
-----

The train/eval side of a row is decided by ``crc32`` of the row's canonical JSON (the bytes
written to ``train.jsonl``/``eval.jsonl``: keys in contract order, input included, msgspec's
escaping), so it depends on the row's content only: appending, reordering or re-serialising
rows (key order, spacing, escapes, CRLF) never moves a row. The split and the train/eval
prompt overlap are computed when they are used: with ``out_dir`` or with the token checks. A
schema-only check without ``out_dir`` skips them (``ValidationSummary.split_computed`` is
False) but still hashes rows until it has seen one of each side, so that an empty train split
(invalid data: code ``no-train``) or an empty eval split (warning ``empty-eval``) is reported
either way at the cost of a few rows.

Outputs
-------

``out_dir`` receives ``train.jsonl``, ``eval.jsonl``, ``rejects.jsonl``, ``report.md`` and
``summary.json``, each written under a temporary name in ``out_dir`` and renamed at the end
(``summary.json`` last), so nothing partial is ever left under a final name (a full disk
raises ``OSError(ENOSPC)`` naming the output). ``rejects.jsonl`` stores each rejected line,
whatever stage rejected it (schema, duplicate, token checks), as ``{"line", "code",
"message", "problems", "raw"}``; ``raw`` is the line exactly as read (without its ``\n`` or
``\r\n``), or ``null`` plus ``raw_base64`` (the exact bytes) when it is not valid UTF-8, or
``null`` plus ``raw_bytes`` (its size) when it was over ``max_line_bytes`` (refused unread).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import errno
import itertools
import operator
import os
import sys
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import repeat
from pathlib import Path
from typing import IO, Any, NamedTuple

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
    "duplicate-key": "the row gives the same key more than once (JSON readers keep only one)",
    "duplicate": "same content as an earlier row once each field is stripped",
    "too-long": "more tokens than max_seq_len (handled by the long_rows policy)",
    "empty-after-format": "no response token would remain after formatting/truncation",
    "no-rows": "the file has no valid row",
    "no-train": "no accepted row falls in the train split (data invalid)",
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
    train_empty: bool = False  # accepted rows, none in train: invalid (code no-train)
    eval_empty: bool = False  # eval_fraction > 0 but no row in eval: a warning (empty-eval)
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
    """A row whose ``input`` may be absent; its encoding is the canonical row (input included)."""

    instruction: str
    input: str = ""
    output: str


class _Canon(msgspec.Struct, gc=False):
    """The canonical row built from its fields (positional): encodes exactly like :class:`_Row`."""

    instruction: str
    input: str
    output: str


class _Row3(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A row with all three keys (the Alpaca form): encodes exactly like :class:`_Row`."""

    instruction: str
    input: str
    output: str


class _Row2(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A row with exactly instruction and output (no ``input`` key)."""

    instruction: str
    output: str


# Each line of a chunk is decoded as a one-element array ``[row]`` (see _wrap): a typed
# ``tuple[_RowX]`` refuses a blank line (``[]``) and two values on one line (``[a, b]``).
_DECODERS: dict[int, Callable[[Any], list[Any]]] = {
    3: msgspec.json.Decoder(list[tuple[_Row3]]).decode,  # every row has the 3 keys
    2: msgspec.json.Decoder(list[tuple[_Row2]]).decode,  # no row has an input key
    1: msgspec.json.Decoder(list[tuple[_Row]]).decode,  # mixed: input given or not
}
_DECODE_ANY = msgspec.json.Decoder().decode
_ENCODER = msgspec.json.Encoder()
_ENCODE = _ENCODER.encode
_FIRST = operator.itemgetter(0)
_GET_I = operator.attrgetter("instruction")
_GET_N = operator.attrgetter("input")
_GET_O = operator.attrgetter("output")
_FAST_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)
_LENGTH_WARNING = "sequence-length-is-longer-than-the-specified-maximum"  # transformers' key
_SHOWN_VALUE = 60  # characters of a value quoted in a duplicate-key message


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
    if not _no_repeated_key(raw, obj):
        found += _repeated_keys(raw)
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


def _no_repeated_key(raw: bytes, obj: Any) -> bool:
    """Cheap proof that no object in the line ``raw`` (decoded to ``obj``) repeats a key.

    Every structural colon of ``raw`` separates one key from its value; the other colons
    are inside strings. Re-encoding ``obj`` writes one pair per distinct key and every
    string colon raw, so the two colon counts are equal exactly when no key is repeated,
    unless a colon was written as the escape ``\\u003a`` (then this says False: unproven).
    """
    return raw.count(b":") == _ENCODE(obj).count(b":") and raw.find(b"\\u003") < 0


def _repeated_keys(raw: bytes) -> list[tuple[str, str, str]]:
    """``duplicate-key`` problems for the row's own keys given more than once."""
    import json

    try:
        pairs = json.loads(raw, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):  # msgspec read it; json cannot (huge int, depth)
        return []
    values: dict[str, list[Any]] = {}
    for key, value in pairs if isinstance(pairs, _Pairs) else ():
        values.setdefault(key, []).append(value)
    found = []
    for key, vals in values.items():
        if len(vals) < 2:
            continue
        shown = [_shown(v) for v in vals]
        times = "twice" if len(vals) == 2 else f"{len(vals)} times"
        found.append(
            (
                "duplicate-key",
                f"key {key!r} given {times}: {' then '.join(shown)} (a JSON reader keeps "
                "only one of them)",
                "error",
            )
        )
    return found


class _Pairs(list):  # type: ignore[type-arg]
    """An object's (key, value) pairs in file order, repeats kept (``object_pairs_hook``)."""


def _shown(value: Any) -> str:
    import json

    if isinstance(value, _Pairs):
        value = dict(value)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SHOWN_VALUE else text[: _SHOWN_VALUE - 1] + "…"


# --------------------------------------------------------------------------- reading


def _local_path(src: str) -> str | None:
    """The path of a local source (plain or ``file://``); ``None`` for ``gs://``."""
    if src.startswith("gs://"):
        return None
    return src[len("file://") :] if src.startswith("file://") else src


def _open_source(src: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    path = _local_path(src)
    if path is None:
        from trainer import storage

        return storage.open_read(src)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory, not a JSONL file", path)
    return open(path, "rb")


def _source_size(src: str) -> int | None:
    path = _local_path(src)
    if path is None:
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _looks_like_array(head: bytes, src: str) -> bool:
    stripped = head.lstrip(_BOM).lstrip()
    name = src.lower().rstrip("/")
    return stripped.startswith(b"[") and name.endswith(".json")


def _batches(
    fh: IO[bytes],
    max_line_bytes: int,
    digest: Any,
    progress: Callable[[int], None] | None,
    *,
    file_start: bool = True,
    base: int = 0,
) -> Iterator[tuple[bytearray, int, int] | int]:
    """Yield, in file order, chunks of whole lines and the sizes of too-large lines.

    A chunk is ``(buf, cut, offset)``: its lines are ``buf[2:cut]`` joined by ``\\n`` (no
    final newline; ``buf[:2]`` is ``[[``, room for :func:`_wrap`), read from byte ``offset``
    of the file. ``buf[cut:]`` is the next chunk's start; ``buf`` is only valid until the next
    chunk is requested. ``fh`` is read from byte ``base`` of the file; a BOM is dropped only
    at the file's start (``file_start``).

    A partial line that grows past ``max_line_bytes + 1`` (the 1: a CR of a CRLF) is dropped
    and the rest of it skipped chunk by chunk, so memory stays below ``max_line_bytes +
    chunk`` whatever the line length; its size (line terminator excluded) is yielded.
    """
    chunk = max(64 * 1024, min(_CHUNK, max_line_bytes))
    # One reused read buffer: a fresh 96 KiB bytes object per read costs page faults (glibc
    # gives the freed block back to the OS and faults it in again), ~3x the read itself.
    rbuf = bytearray(chunk)
    rview = memoryview(rbuf)
    readinto = getattr(fh, "readinto", None)
    buf = bytearray(b"[[")  # "[[" + the partial line carried over from the previous chunk
    skipping = False
    skipped = 0
    last = 0  # the last byte skipped (a CR before the newline is not part of the line)
    first = file_start
    read_total = 0
    while True:
        if readinto is not None:
            got = readinto(rview)
            if not got:
                break
            data: Any = rview[:got]
        else:
            data = fh.read(chunk)
            if not data:
                break
        digest.update(data)
        read_total += len(data)
        if progress is not None:
            progress(read_total)
        if first:
            first = False
            if bytes(data[: len(_BOM)]) == _BOM:
                data = data[len(_BOM) :]
        if skipping:
            cut = bytes(data).find(b"\n")  # a copy, only while skipping a huge line
            if cut < 0:
                skipped += len(data)
                if len(data):
                    last = data[-1]
                continue
            skipped += cut
            if cut:
                last = data[cut - 1]
            yield skipped - (last == 0x0D)
            skipping = False
            data = data[cut + 1 :]
        new = len(buf)
        buf += data
        cut = buf.rfind(b"\n", new)  # the carried part has no newline
        if cut >= 0:
            yield buf, cut, base + read_total - (len(buf) - 2)
            del buf[2 : cut + 1]
        if len(buf) - 2 > max_line_bytes + 1:
            skipping, skipped, last = True, len(buf) - 2, buf[-1]
            del buf[2:]
    if skipping:
        yield skipped - (last == 0x0D)
    elif len(buf) > 2:  # the last line has no newline
        cut = len(buf)
        yield buf, cut, base + read_total - (cut - 2)


def _wrap(buf: bytearray, cut: int) -> tuple[bytearray, int, int]:
    """The chunk ``buf[2:cut]`` as ONE JSON text with each line in its own array.

    Returns ``(doc, end, n)``: ``doc[:end]`` is ``[[`` line 1 ``],\\n[`` line 2 ... ``]]``
    (one copy, ``bytearray.replace``; ``doc[end:]`` is ``buf[cut + 2:]``, the start of the
    next chunk) and ``n`` the number of lines, known from the length the replacement added
    (no pass). ``buf[cut]``, the chunk's last newline (deleted with the chunk), becomes the
    first closing ``]``.
    """
    if cut == len(buf):
        buf.append(0x5D)  # the file's last line, without newline: buf is not used again
    else:
        buf[cut] = 0x5D
    doc = buf.replace(b"\n", b"],\n[")
    k = (len(doc) - len(buf)) // 3  # newlines replaced
    end = cut + 3 * k + 1
    if end < len(doc):
        doc[end] = 0x5D
    else:
        doc.append(0x5D)
    return doc, end + 1, k + 1


def _colons(data: bytes | bytearray) -> int:
    """How many ``:`` bytes: one C pass (deleting them is ~2x faster than ``count``)."""
    return len(data) - len(data.replace(b":", b""))


def _body(buf: bytearray, cut: int) -> bytes:
    """The raw lines of a chunk from :func:`_batches`."""
    with memoryview(buf) as view:
        return view[2:cut].tobytes()


def _lines_within(buf: bytearray, cut: int, limit: int) -> bool:
    """Whether every line of a chunk (``buf[2:cut]``) is at most ``limit`` bytes."""
    start = 2
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
        # Rows are measured whole, longer than the model's context on purpose: without this
        # the tokenizer warns "Token indices sequence length is longer than the specified
        # maximum sequence length" on stderr. The flag is transformers' own "already warned"
        # mark for that one message; model_max_length stays as the model says.
        warned = getattr(self.tokenizer, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned[_LENGTH_WARNING] = True

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


def _create(path: Path) -> IO[bytes]:
    """Open a new output file (a seam: tests make it a full disk)."""
    return open(path, "wb")


def _disk_error(exc: OSError, path: Path) -> OSError:
    """The same error, naming the output it was writing (a write error names no file)."""
    err = OSError(exc.errno, exc.strerror or str(exc), str(path))
    return err


class _HashingWriter:
    """A local output written through sha256 under a temporary name (see :class:`_Outputs`)."""

    def __init__(self, path: Path, tmp: Path) -> None:
        self.path = path
        self.tmp = tmp
        try:
            self.fh = _create(tmp)
        except OSError as exc:
            raise _disk_error(exc, path) from None
        import hashlib  # ~3 ms of start-up that a schema-only check does not need

        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        if data:
            self.sha.update(data)
            try:
                self.fh.write(data)
            except OSError as exc:
                raise _disk_error(exc, self.path) from None

    def close(self) -> str:
        try:
            self.fh.close()  # a full disk may only show here, when the buffer is flushed
        except OSError as exc:
            raise _disk_error(exc, self.path) from None
        return self.sha.hexdigest()


class _Outputs:
    """The files of ``out_dir``, written atomically as a set.

    Each file is written under a temporary name in ``out_dir`` (``.NAME.PID.tmp``) and renamed
    to its name only when everything was written: ``summary.json`` of an earlier run is
    removed first and the new one renamed last, so a directory with ``summary.json`` always
    holds one complete run and an interrupted run (full disk, crash) leaves no partial
    file under a final name. :meth:`abort` deletes the temporary files.
    """

    NAMES = ("train.jsonl", "eval.jsonl", "rejects.jsonl", "report.md", "summary.json")

    def __init__(self, out_dir: str) -> None:
        from trainer import storage

        local = storage.local_path(out_dir) if hasattr(storage, "local_path") else out_dir
        if local is None:
            raise ValueError(f"out_dir must be a local directory, got {out_dir}")
        self.dir = Path(local)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp = {n: self.dir / f".{n}.{os.getpid()}.tmp" for n in self.NAMES}
        self.writers: list[_HashingWriter] = []
        self.train = self._open("train.jsonl")
        self.eval = self._open("eval.jsonl")
        self.rejects = self._open("rejects.jsonl")

    def _open(self, name: str) -> _HashingWriter:
        w = _HashingWriter(self.dir / name, self.tmp[name])
        self.writers.append(w)
        return w

    def close(self) -> dict[str, str]:
        return {
            "train.jsonl": self.train.close(),
            "eval.jsonl": self.eval.close(),
            "rejects.jsonl": self.rejects.close(),
        }

    def write_file(self, name: str, data: bytes) -> str:
        """Write a whole (small) output under its temporary name; its sha256."""
        w = self._open(name)
        w.write(data)
        return w.close()

    def commit(self) -> None:
        """Give every file its final name (``summary.json`` last)."""
        (self.dir / "summary.json").unlink(missing_ok=True)
        for name in self.NAMES:
            os.replace(self.tmp[name], self.dir / name)

    def abort(self) -> None:
        for w in self.writers:
            with contextlib.suppress(OSError):
                w.fh.close()
        for tmp in self.tmp.values():
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


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


class _Scanned(NamedTuple):
    """A chunk that the fast path proved to be ``n`` valid rows, one per line."""

    kind: int  # the typed decoder that worked (a key of _DECODERS)
    n: int
    rows: list[Any]  # the decoded structs
    ri: list[str]  # instruction, input (None for kind 2: no row has one), output: as given
    rn: list[str] | None
    ro: list[str]
    ins: list[str]  # the same, stripped (inputs "" when absent)
    inps: list[str]
    outs: list[str]


def _scan(buf: bytearray, cut: int, cfg: ValidateConfig, first_kind: int) -> _Scanned | None:
    """Decode a chunk of whole lines (``buf[2:cut]``) at C speed, or ``None``.

    ``None`` when any line needs a closer look, or when the checks below cannot PROVE that each
    line is exactly one valid row (the module docstring's proofs): the slow path then
    classifies every line of the chunk on its own. Stateless, so a worker process can run it
    (:func:`_scan_range`); ``first_kind`` is only the decoder tried first.
    """
    if cut - 2 > cfg.max_line_bytes and not _lines_within(buf, cut, cfg.max_line_bytes):
        return None
    doc, end, n = _wrap(buf, cut)
    view = memoryview(doc)[:end]
    wrapped = None
    for kind in (first_kind, *(k for k in (3, 1, 2) if k != first_kind)):
        try:
            wrapped = _DECODERS[kind](view)
            break
        except msgspec.ValidationError as exc:
            if "`input`" not in str(exc):  # another decoder would fail the same way
                return None
        except _FAST_ERRORS:
            return None
    view.release()
    # One element per line (proof 1 in the module docstring).
    if wrapped is None or len(wrapped) != n:
        return None
    rows = list(map(_FIRST, wrapped))
    del wrapped
    ri = list(map(_GET_I, rows))
    ro = list(map(_GET_O, rows))
    rn = list(map(_GET_N, rows)) if kind != 2 else None
    # No row repeats a key (proof 2 in the module docstring). doc[end:] is buf[cut+2:].
    colons = _colons(doc) - buf.count(b":", cut + 2)
    del doc
    if kind == 3:
        expected = 3 * n
    elif kind == 2:
        expected = 2 * n
    else:
        expected = 3 * n - rn.count("")  # type: ignore[union-attr]
    # colons == pairs + colon bytes in strings, and pairs >= expected: equality already
    # proves pairs == expected. Otherwise the values' colons are subtracted.
    if colons != expected:
        in_strings = "".join(ri + ro + rn if rn is not None else ri + ro).count(":")
        if colons - in_strings != expected:
            return None
        if buf.find(b"\\", 2, cut) >= 0 and buf.find(b"\\u003", 2, cut) >= 0:
            return None  # a colon may be written \\u003a: the count proves nothing
    ins = list(map(str.strip, ri))
    outs = list(map(str.strip, ro))
    if not (all(ins) and all(outs)):
        return None
    inps = list(map(str.strip, rn)) if rn is not None else [""] * n
    return _Scanned(kind, n, rows, ri, rn, ro, ins, inps, outs)


class _Validator:
    def __init__(
        self,
        src: str,
        cfg: ValidateConfig,
        out_dir: str | None,
        on_problem: Callable[[Problem], None] | None,
        workers: int = 1,
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
        self.pending: list[tuple[int, tuple[str, str, str], int, Any, bytes | None]] = []
        self.outputs = _Outputs(out_dir) if out_dir is not None else None
        # The split costs ~30 % of the schema-only pass; it is only needed to write the files
        # or next to the (much slower) token checks. Without it, ``probe`` still finds out
        # whether each side gets a row (an empty train split makes the data invalid).
        self.do_split = self.outputs is not None or self.tokens is not None
        self.seen_train = False
        self.seen_eval = False
        self.probing = not self.do_split
        self.kind = 3  # the typed decoder that worked last (see fast_batch)
        self.workers = workers  # processes allowed (0: one per CPU), see _worker_count

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

    def fast_batch(self, start: int, buf: bytearray, cut: int) -> int | None:
        """Check a chunk of whole lines (``buf[2:cut]``) with :func:`_scan`; its line count.

        ``None`` (nothing recorded) when the fast path cannot prove the chunk valid: the slow
        path then classifies every line of the chunk on its own. Duplicates are handled here.
        """
        cfg = self.cfg
        scan = _scan(buf, cut, cfg, self.kind)
        if scan is None:
            return None
        kind, n, rows, ri, _, ro, ins, inps, outs = scan
        self.kind = kind
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
        if kind == 2 and (self.do_split or self.probing):
            # The canonical row has an input: the rows are re-made with input "".
            rows = list(map(_Canon, ri, repeat(""), ro))
        if not self.do_split:
            s.accepted += n - len(dropped)
            if self.probing:
                for i, row in enumerate(rows):
                    if i not in dropped:
                        self.probe(_ENCODE(row))
                        if not self.probing:
                            break
            return n
        prompts = list(map(hash, zip(ins, inps, strict=True)))
        if self.tokens is None and not dropped:
            self._place_many(numbers, rows, prompts)
            return n
        raws = _body(buf, cut).split(b"\n") if self.tokens is not None else None
        for i, (row, ph) in enumerate(zip(rows, prompts, strict=True)):
            if i not in dropped:
                raw = raws[i].removesuffix(b"\r") if raws is not None else None
                self.keep(start + i, (row.instruction, row.input, row.output), ph, row, raw)
        return n

    def merge_scanned(self, start: int, n: int, keys: bytes, sides: int) -> bool:
        """Record a chunk a worker proved valid (:func:`_scan_range`), if it repeats no row.

        ``keys`` are the rows' duplicate hashes (``array('q')`` bytes; empty with
        ``duplicates=allow``), ``sides`` the probe's bits (1: a train row, 2: an eval row).
        ``False`` (nothing recorded) when a key is already known or repeats in the chunk: the
        caller then re-checks the chunk here (:meth:`fast_batch`), which reports the repeats.
        """
        if self.cfg.duplicates != "allow":
            hashes = array("q")
            hashes.frombytes(keys)
            new = hashes.tolist()
            known = self.seen_set
            if known is not None:
                before = len(known)
                known.update(new)
                if len(known) - before != n:
                    self._dict_mode()  # built from set_chunks: this chunk's keys are not in it
                    return False
                self.set_chunks.append((start, new))
            else:
                if len(set(new)) != n or not self.seen.keys().isdisjoint(new):
                    return False
                self.seen.update(zip(new, range(start, start + n), strict=True))
        s = self.summary
        s.lines_read += n
        s.accepted += n
        if self.probing:
            self.seen_train = self.seen_train or bool(sides & 1)
            self.seen_eval = self.seen_eval or bool(sides & 2)
            self.probing = not (self.seen_train and (self.seen_eval or not self.threshold))
        return True

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

    def probe(self, data: bytes) -> None:
        """Without a split, still find out whether train and eval each get a row (cheap:
        it stops at the first row of each side)."""
        if zlib.crc32(data) < self.threshold:
            self.seen_eval = True
        else:
            self.seen_train = True
        self.probing = not (self.seen_train and (self.seen_eval or not self.threshold))

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
            self.keep(line, row, hash(norm[:2]), None, raw)
        return len(lines)

    def too_large(self, line: int, size: int, *, counted: bool = False) -> None:
        if not counted:
            self.summary.lines_read += 1
        msg = f"line is {size} bytes, over max_line_bytes {self.cfg.max_line_bytes}; refused unread"
        self.problem(line, "line-too-large", msg)
        self.reject(line, [("line-too-large", msg, "error")], None, size)

    # ---- a row that passed the schema checks

    def keep(
        self,
        line: int,
        row: tuple[str, str, str],
        prompt_hash: int,
        struct: Any,
        raw: bytes | None,
    ) -> None:
        """A row that passed the schema checks: token-checked in batches, then placed.

        ``raw`` is the line as read (for ``rejects.jsonl`` if a token check rejects it).
        """
        if self.tokens is None:
            self.place(line, row, prompt_hash, struct)
        else:
            self.pending.append((line, row, prompt_hash, struct, raw))

    def flush(self) -> None:
        """Token-check the pending rows (one batched tokenizer call) and place them."""
        if not self.pending or self.tokens is None:
            return
        pending, self.pending = self.pending, []
        verdicts = self.tokens.check_many([p[1] for p in pending])
        s = self.summary
        for (line, row, ph, struct, raw), v in zip(pending, verdicts, strict=True):
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
                    self.reject(line, [("too-long", msg, "warning")], raw)
                else:
                    msg = v.message + " (long_rows=fail)"
                    self.problem(line, "too-long", msg)
                    self.reject(line, [("too-long", msg, "error")], raw)
                continue
            if v.code is not None:
                self.problem(line, v.code, v.message)
                self.reject(line, [(v.code, v.message, "error")], raw)
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
            if self.probing:
                self.probe(_ENCODE(struct) if struct is not None else _row_bytes(row))
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
        has_train = s.n_train > 0 if self.do_split else self.seen_train
        has_eval = s.n_eval > 0 if self.do_split else self.seen_eval
        s.train_empty = bool(s.accepted) and not has_train
        s.eval_empty = bool(s.accepted) and cfg.eval_fraction > 0 and not has_eval
        reasons = []
        if s.accepted == 0:
            reasons.append("no valid row")
            self.counts["no-rows"] += 1
        if s.train_empty:
            reasons.append(
                f"no training row: all {s.accepted} accepted row(s) fall in eval "
                f"(eval_fraction {cfg.eval_fraction})"
            )
            self.counts["no-train"] += 1
        if cfg.on_error == "fail" and s.error_rows:
            reasons.append(f"{s.error_rows} row(s) rejected (on_error=fail)")
        if cfg.on_error == "skip" and s.error_fraction > cfg.max_error_fraction:
            reasons.append(
                f"{s.error_fraction:.1%} of rows rejected, over max_error_fraction {cfg.max_error_fraction:.1%}"
            )
        if cfg.long_rows == "fail" and self.too_long:
            reasons.append(f"{self.too_long} row(s) over max_seq_len (long_rows=fail)")
        if s.eval_empty:
            self.counts["empty-eval"] += 1
            s.warnings += 1
        s.reasons = reasons
        s.ok = not reasons
        s.counts_by_code = dict(sorted(self.counts.items()))
        if not s.balanced:  # a bug, never a data problem: refuse to claim anything
            raise AssertionError(f"lines_read {s.lines_read} != accepted+rejected+blank")
        if self.outputs is not None:
            from trainer.report import render_report

            s.outputs = self.outputs.close()
            report = render_report(s).encode("utf-8")
            s.outputs["report.md"] = self.outputs.write_file("report.md", report)
            self.outputs.write_file(
                "summary.json", msgspec.json.format(_ENCODE(s.to_dict()), indent=2) + b"\n"
            )
            self.outputs.commit()


# --------------------------------------------------------------------------- workers

_MIN_RANGE_BYTES = 8 * 2**20  # a worker's share: below it, a fork costs more than it saves
_HASH_PROBE = "llmft duplicate index"  # str hashes are keyed per process; a fork keeps the key


def _worker_count(v: _Validator, size: int | None) -> int:
    """How many processes check the source: 1 unless it is a large local file, checked only.

    Writing the splits or token-checking needs every row in this process (and tokenizing
    costs far more than decoding), so workers only serve the check without outputs.
    """
    if (
        v.workers == 1
        or size is None
        or v.do_split
        or _local_path(v.src) is None
        or not hasattr(os, "fork")
        or _threads_running()
    ):
        return 1
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 1
    return max(1, min(v.workers or min(cpus, 8), size // _MIN_RANGE_BYTES))


def _boundaries(fh: IO[bytes], size: int, k: int) -> list[int]:
    """Up to ``k`` ranges of whole lines: ``[0, b1, ..., size]``, each ``bi`` a line start."""
    cuts = [0]
    try:
        for i in range(1, k):
            pos = max(size * i // k, cuts[-1] + 1)
            fh.seek(pos - 1)  # a newline just before pos makes pos itself a line start
            at = pos - 1
            while True:
                block = fh.read(64 * 1024)
                if not block:  # no line starts after pos: the last range runs to the end
                    return [*cuts, size]
                nl = block.find(b"\n")
                if nl >= 0:
                    break
                at += len(block)
            start = at + nl + 1
            if start >= size:
                break
            cuts.append(start)
        return [*cuts, size]
    finally:
        fh.seek(0)  # the first range is read from the start, whatever happened here


def _threads_running() -> bool:
    """Whether this process runs other threads (forking it could deadlock the child on a
    lock one of them holds): Python's and, on Linux, native ones (OpenMP, gRPC pools)."""
    threads = sys.modules.get("threading")
    if threads is not None and threads.active_count() > 1:
        return True
    try:
        return len(os.listdir("/proc/self/task")) > 1
    except OSError:
        return False


class _Window:
    """``readinto`` over the next ``size`` bytes of ``fh`` (``None``: up to the end)."""

    def __init__(self, fh: IO[bytes], size: int | None) -> None:
        self.fh = fh
        self.left = size

    def readinto(self, view: memoryview) -> int:
        if self.left is None:
            return self.fh.readinto(view)  # type: ignore[attr-defined]
        if self.left <= 0:
            return 0
        got = self.fh.readinto(view[: self.left])  # type: ignore[attr-defined]
        self.left -= got
        return got


def _sides(scan: _Scanned, threshold: int) -> int:
    """The probe's answer for a chunk: bit 1 if a row falls in train, bit 2 if one in eval."""
    rows = scan.rows if scan.kind != 2 else map(_Canon, scan.ri, repeat(""), scan.ro)
    found = 0
    for row in rows:
        found |= 2 if zlib.crc32(_ENCODE(row)) < threshold else 1
        if found == 3 or (found == 1 and not threshold):
            break
    return found


def _scan_range(
    path: str, start: int, end: int | None, cfg: ValidateConfig, threshold: int, out: IO[bytes]
) -> None:
    """A worker's job: the fast path over ``path[start:end]``, each chunk's verdict to ``out``.

    Writes (pickled, in file order) the hash probe, then per chunk ``(offset, size, n, keys,
    sides)`` (``n == 0``: the slow path must classify it) or an ``int`` (the size of a line over
    max_line_bytes), then ``("end", bytes_read)``. Nothing here decides a line's fate alone:
    the parent merges the verdicts in order (:meth:`_Validator.merge_scanned`).
    """
    import pickle

    dump = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump
    dump(hash(_HASH_PROBE))
    allow = cfg.duplicates == "allow"
    digest = _CountingDigest(sha=False)
    kind = 3
    with open(path, "rb") as fh:
        fh.seek(start)
        window: Any = _Window(fh, None if end is None else end - start)
        for item in _batches(
            window, cfg.max_line_bytes, digest, None, file_start=False, base=start
        ):
            if isinstance(item, int):
                dump(item)
                continue
            buf, cut, offset = item
            scan = _scan(buf, cut, cfg, kind)
            if scan is None:
                dump((offset, cut - 2, 0, b"", 0))
                continue
            kind = scan.kind
            rows = zip(scan.ins, scan.inps, scan.outs, strict=True)
            keys = b"" if allow else array("q", map(hash, rows)).tobytes()
            dump((offset, cut - 2, scan.n, keys, _sides(scan, threshold)))
    dump(("end", digest._llmft_size))


def _fork_worker(
    path: str, start: int, end: int | None, cfg: ValidateConfig, threshold: int
) -> tuple[int, IO[bytes] | None]:
    """Start :func:`_scan_range` in a forked child: its pid and the spool it writes, or
    ``(0, None)`` when no child could be started (this process then checks the range)."""
    import signal
    import tempfile

    try:
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _check; not a pipe
    except OSError:
        return 0, None
    try:
        pid = os.fork()
    except OSError:  # EAGAIN, ENOMEM: no worker, not an error
        spool.close()
        return 0, None
    if pid == 0:  # the child: never returns, never runs the parent's cleanup or atexit
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
            _scan_range(path, start, end, cfg, threshold, spool)
            spool.flush()
            code = 0
        finally:
            os._exit(code)
    return pid, spool


def _worker_items(status: int, spool: IO[bytes] | None) -> list[Any] | None:
    """A finished worker's verdicts, or ``None`` when it failed (the range is redone)."""
    import pickle

    if status != 0 or spool is None:
        return None
    spool.seek(0)
    unpickler = pickle.Unpickler(spool)
    try:
        if unpickler.load() != hash(_HASH_PROBE):
            return None
        items = []
        while True:
            item = unpickler.load()
            items.append(item)
            if isinstance(item, tuple) and item[0] == "end":
                return items
    except (EOFError, pickle.UnpicklingError):
        return None


def _row_bytes(row: tuple[str, str, str]) -> bytes:
    """The canonical JSON of a row: what the splits hold and what the split hash reads."""
    return _ENCODE({"instruction": row[0], "input": row[1], "output": row[2]})


class _CountingDigest:
    """Counts bytes and, when asked, hashes them (sha256 costs ~10 % of the schema-only path)."""

    def __init__(self, sha: bool) -> None:
        self._sha = None
        if sha:
            import hashlib

            self._sha = hashlib.sha256()
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
    workers: int = 0,
) -> ValidationSummary:
    """Check every line of an Alpaca JSONL file, split it and (optionally) write the results.

    Args:
        src: Local path, ``file://`` URI or ``gs://bucket/object`` of the JSONL file.
        cfg: Checks, policies and the split (see :class:`trainer.config.ValidateConfig`).
        out_dir: Local directory that receives ``train.jsonl``, ``eval.jsonl``,
            ``rejects.jsonl``, ``report.md`` and ``summary.json``; ``None`` only checks.
        on_problem: Called with each :class:`Problem` as it is found (streaming output).
        on_progress: Called with ``(bytes_read, total_bytes or None)`` after each chunk.
        workers: Processes that check a large local file when nothing is written (no
            ``out_dir``, ``schema_only``): 0 = one per available CPU (up to 8), 1 = this
            process only. The summary and the problems are the same whatever the number.

    Returns:
        The summary; ``summary.ok`` says whether the data is valid under ``cfg``.

    Raises:
        NeedsConversion: ``src`` is an Alpaca JSON array (``.json``) rather than JSONL.
        FileNotFoundError: ``src`` does not exist.
    """
    total = _source_size(src)
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: one per available CPU), got {workers}")
    progress = None if on_progress is None else (lambda done: on_progress(done, total))
    return _run(_Validator(src, cfg, out_dir, on_problem, workers), progress)


def _run(v: _Validator, progress: Callable[[int], None] | None) -> ValidationSummary:
    try:
        return _check(v, progress)
    except BaseException:
        if v.outputs is not None:
            v.outputs.abort()
        raise


def _check(v: _Validator, progress: Callable[[int], None] | None) -> ValidationSummary:
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
        size = _source_size(v.src)
        k = _worker_count(v, size)
        # (start, size or None: to the end) of each range; this process checks the first.
        bounds = _boundaries(fh, size, k) if k > 1 and size else [0, size or 0]
        ranges = [(a, b - a) for a, b in itertools.pairwise(bounds)]
        ranges[-1] = (ranges[-1][0], None)  # the last one is read to the end, as ever
        path = _local_path(v.src)
        workers: list[tuple[int, IO[bytes] | None]] = []  # pid 0: nothing left to reap
        try:
            for start, length in ranges[1:]:
                end = None if length is None else start + length
                workers.append(_fork_worker(path, start, end, v.cfg, v.threshold))  # type: ignore[arg-type]
            first: Any = fh if len(ranges) == 1 else _Window(fh, ranges[0][1])
            line = _check_chunks(v, _batches(first, v.cfg.max_line_bytes, digest, progress), 0)
            for i, (pid, spool) in enumerate(workers):
                items = None
                if pid:
                    try:
                        status = os.waitpid(pid, 0)[1]
                    except ChildProcessError:  # reaped by someone else: its status is lost
                        status = -1
                    workers[i] = (0, spool)  # only now: a Ctrl-C while waiting still kills it
                    items = _worker_items(status, spool)
                if items is None:  # the worker failed: this process checks its range
                    start, length = ranges[i + 1]
                    fh.seek(start)
                    chunks = _batches(
                        _Window(fh, length),  # type: ignore[arg-type]
                        v.cfg.max_line_bytes,
                        digest,
                        None,
                        file_start=False,
                        base=start,
                    )
                    line = _check_chunks(v, chunks, line)
                else:
                    line = _check_chunks(v, items, line, digest)
                if progress is not None:
                    progress(digest._llmft_size)
        finally:
            for pid, spool in workers:
                if pid:  # not waited for: an error or Ctrl-C in this process
                    import signal

                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                if spool is not None:
                    spool.close()
    s.input_bytes = digest._llmft_size
    s.input_sha256 = digest.hexdigest()
    v.finish()
    return s


def _check_chunks(v: _Validator, items: Any, line: int, digest: Any = None) -> int:
    """Check the chunks of one range in order (from :func:`_batches`, or a worker's verdicts
    when ``digest`` is given); returns the number of lines done so far."""
    for item in items:
        if isinstance(item, int):  # a line over max_line_bytes: its size
            line += 1
            v.too_large(line, item)
            continue
        if digest is None:
            buf, cut, offset = item
            size = cut - 2
        elif item[0] == "end":
            digest._llmft_size += item[1]
            continue
        else:
            offset, size, n, keys, sides = item
            buf = None
        v.chunk_lines.append(line + 1)
        v.chunk_spans.append((offset, size))
        if buf is None:
            if n and v.merge_scanned(line + 1, n, keys, sides):
                line += n
                continue
            assert v.reread is not None
            buf = bytearray(b"[[") + v.reread(offset, size)
            cut = len(buf)
            n = v.fast_batch(line + 1, buf, cut) if n else None
        else:
            n = v.fast_batch(line + 1, buf, cut)
        if n is None:
            n = v.slow_batch(line + 1, _body(buf, cut))
        del item, buf
        line += n
        v.flush()
    return line


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
