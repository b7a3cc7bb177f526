"""Base-vs-tuned evaluation: eval loss, greedy generation metrics, the gate and the report.

One model object serves both sides: the base is the peft model with its adapter disabled
(``disable_adapter()``), so memory holds one copy of the base weights. Loss is the token-weighted
mean cross-entropy over supervised positions only (the same labels training uses, from
``trainer.formatting.encode_row``, and the same chunked definition, ``trainer.loss``); generation is greedy, batched with left padding, and stops
at the end-of-turn token. Definitions of the text metrics live in ``trainer.metrics``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import metrics as M
from trainer.config import EvalConfig
from trainer.formatting import IGNORE_INDEX, FormatError, encode_row, end_token_id, render_prompt

SIDES = ("base", "tuned")
REPORT_SAMPLES = 10
"""Rows shown in the report's side-by-side sample table."""
CELL_CHARS = 300
"""Longer table cells are cut (with an ellipsis) so the report stays readable."""


@dataclass
class EvalResult:
    """What ``evaluate`` measured and decided.

    Attributes:
        metrics: ``{"base": {...}, "tuned": {...}}`` with the same metric names on both sides.
        passed: The gate's verdict (True when the gate is disabled).
        gate: ``trainer.metrics.gate`` output (metric, base, tuned, improvement, required, passed).
        report_md: The Markdown report (also written as ``eval_report.md``).
        samples: The first rows with prompt, reference and both outputs.
    """

    metrics: dict[str, dict[str, float]]
    passed: bool
    gate: dict[str, Any]
    report_md: str
    samples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` content: ``{"base", "tuned", "gate"}`` (non-finite -> null)."""
        return _json_safe({**self.metrics, "gate": self.gate})


# --------------------------------------------------------------------------- data


def read_rows(uri: str) -> list[tuple[int, dict[str, Any]]]:
    """Read an Alpaca JSONL file as ``(line number, row)`` pairs, blank lines skipped.

    Args:
        uri: Local path, ``file://``, ``/gcs/`` or ``gs://`` URI of a JSONL file.

    Returns:
        The rows in file order with their 1-based line numbers.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not a JSON object with string ``instruction`` and ``output``
            (and optional string ``input``); the message names file, line and reason.
    """
    from trainer import storage

    if not storage.exists(uri):
        raise FileNotFoundError(f"eval data not found: {uri}")
    text = storage.read_text(uri)
    rows: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{uri}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{where}: missing or non-string '{key}'")
        if not isinstance(row.get("input", ""), str):
            raise ValueError(f"{where}: 'input' must be a string")
        rows.append((lineno, row))
    if not rows:
        raise ValueError(f"{uri}: no rows to evaluate")
    return rows


# --------------------------------------------------------------------------- loss


def _device(model: Any) -> Any:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Eval mode and no grad, restoring the caller's train/eval state afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _pad_id(tokenizer: Any) -> int:
    # Pads are masked by attention_mask and labels by position, so any id works as filler.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_token_id(tokenizer)


def loss_sums(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    max_seq_len: int,
    system_prompt: str = "",
) -> tuple[float, int]:
    """Summed cross-entropy and the number of supervised tokens it covers.

    Args:
        model: A causal LM (plain or peft).
        tokenizer: Its tokenizer (with a chat template).
        rows: Alpaca rows; responses longer than ``max_seq_len`` are cut at the tail
            (``long_rows="truncate"``), never the prompt.
        batch_size: Rows per forward pass.
        max_seq_len: Maximum tokens per row.
        system_prompt: Optional system message (must match training).

    Returns:
        ``(sum of token losses, number of supervised tokens)``.

    Raises:
        ValueError: A row has no supervised token (``row N: reason``, 1-based index in ``rows``).
    """
    import torch

    from trainer.loss import supervised_loss_sum

    encoded = []
    for i, row in enumerate(rows):
        try:
            enc = encode_row(
                tokenizer,
                row,
                system_prompt=system_prompt,
                max_seq_len=max_seq_len,
                long_rows="truncate",
            )
        except FormatError as exc:
            raise ValueError(f"row {i + 1}: {exc.code}: {exc}") from None
        encoded.append(enc)
    # Longest first: similar lengths share a batch (little padding), and an out-of-memory
    # error shows up on the first batch rather than at the end.
    encoded.sort(key=lambda e: len(e.input_ids), reverse=True)
    pad = _pad_id(tokenizer)
    device = _device(model)
    total, count = 0.0, 0
    with _eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, e in enumerate(batch):
                n = len(e.input_ids)
                ids[j, :n] = torch.tensor(e.input_ids)
                labels[j, :n] = torch.tensor(e.labels)
                mask[j, :n] = 1
            # The training loss's own definition: head on supervised positions only, in
            # chunks, fp32 (no batch x length x vocabulary logits; trainer.loss).
            loss, n = supervised_loss_sum(
                model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, labels
            )
            total += float(loss.item())
            count += int(n.item())
    return total, count


def eval_loss(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    max_seq_len: int,
    system_prompt: str = "",
) -> float:
    """Mean cross-entropy per supervised token over the whole set (not a mean of batch means).

    Prompt and pad positions are excluded; response tokens and the end-of-turn token count,
    exactly as in training. Runs in eval mode under ``torch.no_grad()`` and restores the
    model's previous mode.

    Args:
        model: A causal LM (plain or peft).
        tokenizer: Its tokenizer (with a chat template).
        rows: Alpaca rows.
        batch_size: Rows per forward pass.
        max_seq_len: Maximum tokens per row (longer responses are cut at the tail).
        system_prompt: Optional system message (must match training).

    Returns:
        The loss in nats per supervised token (NaN for an empty ``rows``).
    """
    total, count = loss_sums(
        model,
        tokenizer,
        rows,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        system_prompt=system_prompt,
    )
    return total / count if count else math.nan


# --------------------------------------------------------------------------- generation


@dataclass
class Generation:
    """One greedy completion."""

    text: str
    n_tokens: int
    """New tokens produced, the stop token included."""
    stopped: bool
    """Whether it ended with the end/eos token (rather than running out of budget)."""


def generate(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str = "",
) -> list[Generation]:
    """Greedy completions for ``rows``, batched with left padding, in the order of ``rows``.

    Decoding is forced greedy (``do_sample=False``, one beam, no repetition penalty) whatever
    the model's own ``generation_config`` says, and stops at the end-of-turn token or EOS.
    Only the new tokens are decoded, without special tokens, and stripped.

    Args:
        model: A causal LM (plain or peft).
        tokenizer: Its tokenizer (with a chat template).
        rows: Alpaca rows (``output`` is ignored).
        max_new_tokens: Budget per row.
        batch_size: Rows per ``generate`` call.
        system_prompt: Optional system message (must match training).

    Returns:
        One ``Generation`` per row.
    """
    import torch
    from transformers import GenerationConfig

    end = end_token_id(tokenizer)
    stops = sorted({end, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
    pad = _pad_id(tokenizer)
    gen_cfg = GenerationConfig(
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad,
    )
    prompts = [
        tokenizer(render_prompt(tokenizer, row, system_prompt), add_special_tokens=False)[
            "input_ids"
        ]
        for row in rows
    ]
    # Similar prompt lengths share a batch so little compute goes to left padding.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[Generation | None] = [None] * len(prompts)
    device = _device(model)
    with _eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                n = len(prompts[i])
                ids[j, width - n :] = torch.tensor(prompts[i])
                mask[j, width - n :] = 1
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg
            )
            for j, i in enumerate(idx):
                new = out[j, width:].tolist()
                stop_at = next((k for k, t in enumerate(new) if t in stops), None)
                kept = new if stop_at is None else new[:stop_at]
                results[i] = Generation(
                    text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    n_tokens=len(kept) + (0 if stop_at is None else 1),
                    stopped=stop_at is not None,
                )
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------- loading


def _load(model: str, adapter_dir: str, quantization: str = "none") -> tuple[Any, Any]:
    """The peft model (base + adapter) on the best device, and the base model's tokenizer.

    ``auto`` precision: bf16 (or fp16 on GPUs without bf16) on a GPU, fp32 on CPU. A base the
    adapter was trained on quantized is loaded quantized the same way, so base and tuned are
    both measured on the weights training saw.
    """
    from trainer.modeling import load_adapter, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    base = load_base_model(model, precision="auto", device="auto", quantization=quantization)
    peft_model = load_adapter(base, adapter_dir, trainable=False)
    peft_model.eval()
    return peft_model, tokenizer


@contextlib.contextmanager
def _local_dir(uri: str) -> Iterator[str]:
    """A local directory for ``uri``: itself when local, else a temporary download."""
    from trainer import storage

    local = storage.local_path(uri)
    if local is not None:
        if not os.path.isdir(local):
            raise FileNotFoundError(f"adapter directory not found: {uri}")
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="llmft-adapter-") as tmp:
        try:
            storage.download_dir(uri, tmp)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"adapter directory not found: {exc}") from None
        if not any(Path(tmp).iterdir()):
            raise FileNotFoundError(f"adapter directory not found or empty: {uri}")
        yield tmp


# --------------------------------------------------------------------------- report


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _visible(ch: str) -> str:
    # Byte-level tokenizers can decode to control characters (NUL, ESC): show them as escapes.
    if ch in "\n\r" or ch.isprintable():
        return ch
    if ch == "\t":
        return " "
    return f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"


def md_cell(text: str, limit: int = CELL_CHARS) -> str:
    """Escape text for one Markdown table cell (pipes, newlines, HTML, emphasis), cut to ``limit``."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = "".join(_visible(ch) for ch in text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "\\`*_[]|":
        text = text.replace(ch, "\\" + ch)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")
    return text if text.strip() else "&nbsp;"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


METRIC_ORDER = (
    "eval_loss",
    "perplexity",
    "exact_match",
    "rouge_l",
    "bleu",
    "n_rows",
    "n_loss_tokens",
    "n_generated",
    "generated_tokens",
    "stopped_fraction",
    "loss_seconds",
    "generate_seconds",
    "generated_tokens_per_s",
    "wall_seconds",
)


def render_report(
    metrics: dict[str, dict[str, float]],
    gate: dict[str, Any],
    samples: Sequence[dict[str, str]],
    info: dict[str, Any],
) -> str:
    """The Markdown report: run details, metrics side by side with deltas, gate, samples.

    Args:
        metrics: ``{"base": {...}, "tuned": {...}}``.
        gate: ``trainer.metrics.gate`` output.
        samples: Rows with ``prompt``, ``reference``, ``base``, ``tuned``.
        info: Run details shown as a list (model, adapter, data, settings).

    Returns:
        The report text.
    """
    lines = ["# Evaluation: base vs tuned", ""]
    lines += [f"- **{k}**: `{v}`" for k, v in info.items()]
    verdict = "PASSED" if gate["passed"] else "FAILED"
    lines += ["", f"## Gate: {verdict}", "", gate["reason"], ""]
    lines += ["## Metrics", ""]
    lines += ["| metric | base | tuned | delta (tuned - base) |", "|---|---:|---:|---:|"]
    names = [n for n in METRIC_ORDER if n in metrics["base"]]
    names += [n for n in metrics["base"] if n not in names]
    for name in names:
        b, t = metrics["base"][name], metrics["tuned"][name]
        delta = t - b if isinstance(b, int | float) and isinstance(t, int | float) else ""
        mark = ""
        if name in M.GATE_METRICS and isinstance(delta, float | int) and delta != 0:
            better = (delta < 0) if name in M.LOWER_IS_BETTER else (delta > 0)
            mark = " (better)" if better else " (worse)"
        lines.append(f"| {name} | {_fmt(b)} | {_fmt(t)} | {_fmt(delta)}{mark} |")
    lines += [
        "",
        "Loss and perplexity are token-weighted over supervised (response + end) tokens. "
        + M.METRICS_NOTE,
        "",
        f"## Samples (first {len(samples)} rows)",
        "",
        "| # | prompt | reference | base output | tuned output |",
        "|---:|---|---|---|---|",
    ]
    for i, s in enumerate(samples, start=1):
        cells = [md_cell(s[k]) for k in ("prompt", "reference", "base", "tuned")]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_outputs(output: str, result: EvalResult) -> None:
    from trainer import storage

    files = {
        "metrics.json": json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n",
        "eval_report.md": result.report_md,
    }
    local = storage.local_path(output)
    if local is not None:
        Path(local).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (Path(local) / name).write_text(text, encoding="utf-8")
        return
    with tempfile.TemporaryDirectory(prefix="llmft-eval-") as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        storage.upload_dir(tmp, output)


# --------------------------------------------------------------------------- evaluate


def _prompt_text(row: dict[str, Any]) -> str:
    extra = (row.get("input") or "").strip()
    return row["instruction"].strip() + (f"\n\n{extra}" if extra else "")


def evaluate(
    cfg: EvalConfig,
    model: str,
    adapter_dir: str,
    data: str,
    output: str,
    *,
    system_prompt: str = "",
    max_seq_len: int = 512,
    quantization: str = "none",
    log: Callable[[str], Any] = print,
) -> EvalResult:
    """Evaluate base and tuned (base + LoRA adapter) on the same rows and apply the gate.

    Eval loss and perplexity cover every row; generation metrics cover the first
    ``cfg.max_eval_samples`` rows in file order (0 = all).

    Args:
        cfg: Evaluation settings (decoding budget, batch size, sample count, gate).
        model: Base model: ``llmft-tiny``, a local or ``gs://`` directory, or a hub id.
        adapter_dir: Directory (local or ``gs://``) holding ``adapter_config.json`` and
            ``adapter_model.safetensors`` trained on ``model``.
        data: Eval JSONL (``eval.jsonl`` from ``validate``), local or ``gs://``.
        output: Directory (local or ``gs://``) that receives ``metrics.json`` and
            ``eval_report.md``.
        system_prompt: The system prompt used in training (empty for none).
        max_seq_len: Maximum tokens per row for the loss (longer responses are cut at the tail).
        quantization: How training loaded the base (``none``, ``4bit``, ``8bit``): base and
            tuned are evaluated on the base loaded the same way.
        log: Receives progress lines.

    Returns:
        The metrics of both sides, the gate and the report.

    Raises:
        FileNotFoundError: Data, model or adapter not found.
        ValueError: Bad eval rows (file, line and reason in the message).
    """
    t_start = time.perf_counter()
    numbered = read_rows(data)
    rows = [row for _, row in numbered]
    gen_rows = rows[: cfg.max_eval_samples] if cfg.max_eval_samples else rows
    log(f"evaluate: {len(rows)} rows for loss, {len(gen_rows)} for generation from {data}")

    with _local_dir(adapter_dir) as adapter_local:
        # Checked here so the message names the URI the user gave, not a temporary copy.
        if not (Path(adapter_local) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a LoRA adapter)")
        peft_model, tokenizer = _load(model, adapter_local, quantization)

    results: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[Generation]] = {}
    for side in SIDES:
        t_side = time.perf_counter()
        ctx = peft_model.disable_adapter() if side == "base" else contextlib.nullcontext()
        with ctx:
            try:
                total, count = loss_sums(
                    peft_model,
                    tokenizer,
                    rows,
                    batch_size=cfg.eval_batch_size,
                    max_seq_len=max_seq_len,
                    system_prompt=system_prompt,
                )
            except ValueError as exc:
                # "row N: ..." -> the file and line the user can open.
                msg = str(exc)
                if msg.startswith("row "):
                    n, _, reason = msg[4:].partition(": ")
                    msg = f"{data}:{numbered[int(n) - 1][0]}: {reason}"
                raise ValueError(msg) from None
            t_loss = time.perf_counter()
            gens = generate(
                peft_model,
                tokenizer,
                gen_rows,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.eval_batch_size,
                system_prompt=system_prompt,
            )
            t_gen = time.perf_counter()
        loss = total / count if count else math.nan
        gen_tokens = sum(g.n_tokens for g in gens)
        scores = M.generation_metrics([g.text for g in gens], [r["output"] for r in gen_rows])
        results[side] = {
            "eval_loss": loss,
            "perplexity": M.perplexity(loss),
            **scores,
            "n_rows": len(rows),
            "n_loss_tokens": count,
            "n_generated": len(gens),
            "generated_tokens": gen_tokens,
            "stopped_fraction": sum(g.stopped for g in gens) / len(gens) if gens else 0.0,
            "loss_seconds": t_loss - t_side,
            "generate_seconds": t_gen - t_loss,
            "generated_tokens_per_s": gen_tokens / (t_gen - t_loss) if t_gen > t_loss else 0.0,
            "wall_seconds": t_gen - t_side,
        }
        outputs[side] = gens
        log(
            f"evaluate: {side}: eval_loss {loss:.4f}, exact_match {scores['exact_match']:.3f}, "
            f"rouge_l {scores['rouge_l']:.3f}, bleu {scores['bleu']:.3f} "
            f"({t_gen - t_side:.1f}s)"
        )

    g = M.gate(
        cfg.gate_metric,
        results["base"][cfg.gate_metric],
        results["tuned"][cfg.gate_metric],
        cfg.gate_min_improvement,
    )
    samples = [
        {
            "prompt": _prompt_text(row),
            "reference": row["output"],
            "base": outputs["base"][i].text,
            "tuned": outputs["tuned"][i].text,
        }
        for i, row in enumerate(gen_rows[:REPORT_SAMPLES])
    ]
    info = {
        "model": model,
        "adapter": adapter_dir,
        "data": data,
        "max_new_tokens": cfg.max_new_tokens,
        "eval_batch_size": cfg.eval_batch_size,
        "max_eval_samples": cfg.max_eval_samples,
        "max_seq_len": max_seq_len,
        "system_prompt": system_prompt or "(none)",
        "total seconds": f"{time.perf_counter() - t_start:.1f}",
    }
    report = render_report(results, g, samples, info)
    result = EvalResult(
        metrics=results, passed=bool(g["passed"]), gate=g, report_md=report, samples=samples
    )
    _write_outputs(output, result)
    verdict = "passed" if g["passed"] else "FAILED"
    log(f"evaluate: gate {verdict}: {g['reason']}")
    log(f"evaluate: wrote metrics.json and eval_report.md to {output}")
    return result
