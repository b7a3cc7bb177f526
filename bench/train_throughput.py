"""Training throughput: our trainer vs a plain transformers Trainer vs trl's SFTTrainer.

One command compares four ways to LoRA-train the same model on the same rows::

    .venv/bin/python bench/train_throughput.py [--data PATH] [--repeats R] [--json]
        [--device cpu|cuda] [--model tiny|qwen2.5-0.5b|smollm2-135m] [--max-seq-len N]
        [--token-budget N]

Models: ``tiny`` (the built-in 1.2 M random model), ``qwen2.5-0.5b`` (Qwen2.5-0.5B's shape,
random weights) and ``smollm2-135m`` (the built-in pretrained SmolLM2-135M-Instruct with its own
tokenizer: the real shape, vocabulary 49,152, 30 layers; ``--shape`` is the old name of the
flag).

Data: Alpaca rows (default ``../shared/ext/alpaca_en_demo.json``, converted to JSONL in a temp
dir; ``--sample`` for the bundled ``dataset/sample.jsonl``). Rows longer than ``--max-seq-len``
are dropped (the validator's default), 100 rows are held out for eval by a fixed seed, and the
rest, in a seeded order, are the training rows: the first rows reaching ``--token-budget``
supervised tokens (default 30,000, ~200 rows, so the default run fits ~10 minutes here; 3,000
on smollm2-135m, 18 rows, ~15 minutes for 2 repeats; 0 keeps
every row). Mind the data size: transformers' length grouping sorts within windows of
``min(rows // (4 * batch), 50)`` batches, so it groups little on a few hundred rows and not at
all below 128 rows (it pads ~31 % on 192 Alpaca rows, ~14 % on 573).

Budget: every variant trains ONE EPOCH over exactly the same rows, so each consumes exactly the
same supervised tokens (response + end token; checked per run from the batches fed to the
model). Step counts differ only for trl, whose packed rows hold several examples each.

Variants (all with the LoRA settings, learning rate, warm-up (``int(ratio * steps)``), linear
decay, weight decay, gradient clipping, batch size, gradient accumulation, gradient
checkpointing flag and seed of ``trainer.config.TrainConfig``'s defaults, AdamW; fp32 on CPU,
bf16 on CUDA):

- ``ours``: ``trainer.train.train`` with its default batching (the chosen mode is reported).
- ``baseline``: ``transformers.Trainer``, random batches padded to the longest row, the usual
  ``DataCollatorForLanguageModeling(mlm=False)``. As a typical user would, it trains on prompt AND
  response (labels are -100 only on padding); throughput still counts only response tokens as
  supervised so every variant has the same numerator.
- ``trl``: ``trl.SFTTrainer`` with ``packing=True`` (BFD, padding-free) and its other defaults,
  except the shared knobs above and bf16 off on CPU. It receives the rows pre-tokenised by our
  formatter (``input_ids`` + ``labels``), so its supervised tokens are exactly ours.
- ``grouped``: the ``baseline`` with one flag changed:
  ``train_sampling_strategy="group_by_length"`` (transformers 5's name for length grouping).

Measured per run, each variant in its own subprocess (so peak RSS is per variant):
supervised tokens/s and non-pad tokens/s over the training loop (first step to last; imports,
model loading and tokenising excluded and reported as ``wall_s``), padding fraction of the
batches fed to the model, peak RSS after training, and the eval loss on the held-out rows with one
definition for all: token-weighted cross-entropy over response + end tokens
(``trainer.evaluate.eval_loss`` when present, else this file's equivalent; ``--check-eval``
computes both). Training is deterministic on CPU for a seed, so the eval runs in the first
repeat only. Variants run interleaved (a, b, c, d, a, b, c, d, ...) with ``--threads`` CPU
threads each (default 1: on a shared 2-core machine two threads per process stall on each other),
and the medians are reported with the ratios of ours to each peer in supervised tokens/s.

MFU: on CUDA against the GPU's dense peak; on the CPU (``mfu_cpu``) against the fp32 matmul
throughput of this machine measured in the same command, with the same thread count, on the
model's own GEMM shapes (every base linear layer's forward ``[M, in] x [in, out]`` and
activation-gradient ``[M, out] x [out, in]`` product, weighted by the FLOPs each shape
contributes) at two M: batch x median row length (the peers' micro-batches) and our CPU piece
size (``trainer.batching.CPU_MICRO_BATCH_TOKENS``); the faster mix is the peak. It is measured
once before the first run and once after the last, and the higher is taken, so neither a
quiet moment nor the choice of M flatters a variant::

    FLOPs = 4 * N * T  +  12 * n_layers * d_attn * sum_i(L_i ** 2)  +  6 * N_lora * T
    MFU   = FLOPs / (loop seconds * peak FLOP/s)

N: base-model parameters (tied embeddings counted once, as the LM head matmul); T: non-pad
training tokens; L_i: length of example i (each example attends only within itself; the full
L x L square is counted, PaLM's convention); d_attn = heads * head_dim; N_lora: adapter
parameters. 4*N*T is forward (2N) plus activation gradients (2N) through frozen weights; adapter
weights also get weight gradients (6 * N_lora * T). The useful FLOPs are the same for every
variant (same rows); padding and masked-out blocks are not counted, and neither is the output
head skipped on unsupervised positions (it is counted for every token). Peak FLOP/s on CUDA
comes from ``--peak-tflops`` or a per-GPU default (dense bf16; fp16 on T4).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VARIANTS = ("ours", "baseline", "trl", "grouped")
DEFAULT_DATA = REPO.parent / "shared" / "ext" / "alpaca_en_demo.json"
SAMPLE_DATA = REPO / "dataset" / "sample.jsonl"
EVAL_SEED = 1234
"""Fixed seed choosing the held-out rows, so --seed never changes the eval set."""

QWEN25_05B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
"""The real Qwen2.5-0.5B dimensions (its config.json); weights are random."""

# Dense peak FLOP/s per GPU family, matched in order against torch.cuda.get_device_name().
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 125e12),
    ("V100", 125e12),
    ("T4", 65e12),
)

METRIC_KEYS = (
    "supervised_tokens_per_s",
    "tokens_per_s",
    "padding_fraction",
    "peak_rss_mb",
    "eval_loss",
    "mfu",
    "mfu_cpu",
)

MODELS = ("tiny", "qwen2.5-0.5b", "smollm2-135m")

GOALS = {
    "default": {"ours/baseline": 2.0, "ours/trl": 1.2, "ours/grouped": 1.0},
    # The pretrained model's goals (issue: real model end to end), plus CPU-MFU >= 55 %.
    "smollm2-135m": {"ours/baseline": 1.8, "ours/trl": 1.0, "ours/grouped": 1.0},
}
MFU_CPU_GOAL = 0.55


# ---------------------------------------------------------------------------------------------
# Pure arithmetic (unit tested in tests/bench/test_train_throughput_mfu.py)
# ---------------------------------------------------------------------------------------------


def lora_train_flops(
    *,
    n_params: int,
    n_lora_params: int,
    n_tokens: int,
    n_layers: int,
    attn_dim: int,
    sum_sq_seq_len: int,
) -> float:
    """FLOPs of one LoRA training pass over ``n_tokens`` tokens.

    ``4*N*T + 12*n_layers*d_attn*sum(L_i^2) + 6*N_lora*T``: forward plus activation gradients
    through the frozen base (2N + 2N per token), attention score and value matmuls forward and
    backward (3 x 2 matmuls x 2 FLOPs, full square), and forward + both gradients of the adapter.

    Args:
        n_params: Base-model parameters (tied embeddings counted once).
        n_lora_params: Trainable adapter parameters.
        n_tokens: Non-pad tokens trained on.
        n_layers: Transformer layers.
        attn_dim: Query heads times head dimension.
        sum_sq_seq_len: Sum over examples of the squared example length.

    Returns:
        The FLOP count.
    """
    dense = 4.0 * n_params * n_tokens
    attention = 12.0 * n_layers * attn_dim * sum_sq_seq_len
    adapter = 6.0 * n_lora_params * n_tokens
    return dense + attention + adapter


def mfu(flops: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak FLOP/s.

    Args:
        flops: Useful FLOPs done (see ``lora_train_flops``).
        seconds: Wall-clock seconds they took.
        peak_flops: The device's peak FLOP/s.

    Returns:
        A fraction (0.4 means 40 %).

    Raises:
        ValueError: ``seconds`` or ``peak_flops`` is not positive.
    """
    if seconds <= 0 or peak_flops <= 0:
        raise ValueError("seconds and peak_flops must be > 0")
    return flops / (seconds * peak_flops)


def linear_gemm_shapes(
    linears: list[tuple[int, int]], m_tokens: int
) -> dict[tuple[int, int, int], int]:
    """The matmuls a LoRA step runs through frozen linear layers, with their multiplicities.

    A frozen ``Linear(in, out)`` over ``m`` tokens costs a forward ``[m, in] x [in, out]`` and an
    activation gradient ``[m, out] x [out, in]`` (no weight gradient): the ``4 * N * T`` term.

    Args:
        linears: ``(in_features, out_features)`` of every base linear layer (LM head included).
        m_tokens: Tokens per micro-batch.

    Returns:
        ``{(m, k, n): count}`` for ``[m, k] x [k, n]`` products.
    """
    shapes: dict[tuple[int, int, int], int] = {}
    for fan_in, fan_out in linears:
        for key in ((m_tokens, fan_in, fan_out), (m_tokens, fan_out, fan_in)):
            shapes[key] = shapes.get(key, 0) + 1
    return shapes


def weighted_gemm_flops(timings: list[tuple[int, int, int, int, float]]) -> float:
    """FLOP/s of a GEMM mix: total FLOPs over total time, each shape weighted by its count.

    Args:
        timings: ``(m, k, n, count, seconds_per_call)`` per shape.

    Returns:
        ``sum(count * 2mkn) / sum(count * seconds)``: what the mix runs at, as a model would.

    Raises:
        ValueError: no timings, or a non-positive time.
    """
    if not timings or any(t[4] <= 0 for t in timings):
        raise ValueError("timings must be non-empty with positive times")
    flops = sum(count * 2.0 * m * k * n for m, k, n, count, _ in timings)
    seconds = sum(count * sec for *_, count, sec in timings)
    return flops / seconds


def default_peak_flops(gpu_name: str) -> float | None:
    """Dense bf16 peak FLOP/s (fp16 for T4) for a GPU name, or None when unknown."""
    upper = gpu_name.upper()
    for key, value in PEAK_FLOPS:
        if key in upper:
            return value
    return None


def median_or_none(values: list[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


# ---------------------------------------------------------------------------------------------
# Data and model preparation (parent process)
# ---------------------------------------------------------------------------------------------


def _load_rows(src: Path, workdir: Path) -> list[dict[str, Any]]:
    """Read Alpaca rows from a JSON array (converted to JSONL first) or a JSONL file."""
    if src.suffix == ".json":
        dst = workdir / "converted.jsonl"
        try:
            from trainer.validate import convert_json_to_jsonl
        except ImportError:
            convert_json_to_jsonl = None
        if convert_json_to_jsonl is not None:
            convert_json_to_jsonl(str(src), str(dst))
        else:
            rows = json.loads(src.read_text(encoding="utf-8"))
            with dst.open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        src = dst
    rows = []
    with src.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare_data(
    src: Path,
    tokenizer: Any,
    workdir: Path,
    *,
    max_seq_len: int,
    n_eval: int,
    token_budget: int,
    seed: int,
    system_prompt: str = "",
) -> dict[str, Any]:
    """Split the data into a fixed held-out eval set and the training rows.

    Rows that do not fit ``max_seq_len`` (or have nothing to supervise) are dropped first, as
    the validator's default ``long_rows=drop`` does. The training rows are the rest in a seeded
    order, cut after the row that reaches ``token_budget`` supervised tokens (0: all of them).
    Every variant trains one epoch over exactly these rows.

    Returns:
        Paths of ``train.jsonl`` / ``eval.jsonl`` and the training rows' token statistics.
    """
    from trainer.formatting import FormatError, encode_row

    rows = _load_rows(src, workdir)
    kept, lengths, supervised = [], [], []
    for row in rows:
        try:
            enc = encode_row(tokenizer, row, system_prompt=system_prompt, max_seq_len=max_seq_len)
        except (FormatError, KeyError, AttributeError):
            continue
        kept.append(row)
        lengths.append(len(enc.input_ids))
        supervised.append(enc.n_supervised)
    if len(kept) <= n_eval:
        raise SystemExit(
            f"error: {src}: only {len(kept)} rows fit max_seq_len {max_seq_len}; need > {n_eval}"
        )
    order = list(range(len(kept)))
    random.Random(EVAL_SEED).shuffle(order)
    eval_idx, rest = order[:n_eval], order[n_eval:]
    random.Random(seed).shuffle(rest)
    train_idx, total = [], 0
    for i in rest:
        if token_budget and total >= token_budget:
            break
        train_idx.append(i)
        total += supervised[i]
    train_path, eval_path = workdir / "train.jsonl", workdir / "eval.jsonl"
    _write_jsonl(train_path, [kept[i] for i in train_idx])
    _write_jsonl(eval_path, [kept[i] for i in eval_idx])
    tokens = sum(lengths[i] for i in train_idx)
    return {
        "train": str(train_path),
        "eval": str(eval_path),
        "rows_read": len(rows),
        "rows_fitting": len(kept),
        "n_train": len(train_idx),
        "n_eval": len(eval_idx),
        "supervised_tokens": total,
        "tokens": tokens,
        "sum_sq_seq_len": sum(lengths[i] ** 2 for i in train_idx),
        "median_len": statistics.median(lengths[i] for i in train_idx),
        "max_len": max(lengths[i] for i in train_idx),
    }


def prepare_model(shape: str, workdir: Path, seed: int, device: str = "cpu") -> str:
    """Return a model directory: a built-in model, or Qwen2.5-0.5B's architecture, random weights.

    ``smollm2-135m`` is the built-in pretrained model (converted into the cache once). The Qwen
    shape keeps its real vocabulary size (151,936) and takes token ids from the tiny tokenizer
    (copied next to the weights), so nothing is downloaded.
    """
    from trainer.tiny_model import tiny_model_dir

    if shape == "smollm2-135m":
        from trainer.models import resolve_model

        return resolve_model(shape)
    tiny = tiny_model_dir()
    if shape == "tiny":
        return tiny
    import shutil

    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = workdir / "qwen2.5-0.5b-random"
    tok = AutoTokenizer.from_pretrained(tiny)
    cfg = Qwen2Config(
        **QWEN25_05B,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    # Initialise on the device (seconds on a GPU, not minutes on a CPU); bf16 on CUDA, where
    # every variant loads the frozen base in bf16 anyway (half the file to write and read).
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, do_sample=False
    )
    model.save_pretrained(str(out))
    for f in Path(tiny).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            shutil.copy(f, out / f.name)
    return str(out)


def model_counts(model_dir: str, lora: dict[str, Any]) -> dict[str, int]:
    """Parameter counts and shapes for the MFU formula (built on the meta device, no weights)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    linears = [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ]
    peft_model = get_peft_model(model, _lora_config(lora))
    n_lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "n_params": n_params,
        "n_lora_params": n_lora,
        "n_layers": cfg.num_hidden_layers,
        "attn_dim": cfg.num_attention_heads * head_dim,
        "linears": linears,
    }


def run_gemm(spec: dict[str, Any]) -> dict[str, Any]:
    """Time fp32 ``torch.mm`` on each of the model's GEMM shapes (in this worker's threads)."""
    import torch

    timings = []
    gen = torch.Generator().manual_seed(0)
    for (m, k, n), count in [(tuple(key), c) for key, c in spec["gemm_shapes"]]:
        a = torch.randn(m, k, generator=gen)
        b = torch.randn(k, n, generator=gen)
        for _ in range(2):  # warm-up: first calls pay for allocation and packing
            torch.mm(a, b)
        calls, t0 = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= spec["gemm_seconds"] and calls >= 3:
                break
        timings.append((m, k, n, count, elapsed / calls))
    by_m: dict[int, list[tuple[int, int, int, int, float]]] = {}
    for t in timings:
        by_m.setdefault(t[0], []).append(t)
    mixes = {m: weighted_gemm_flops(ts) for m, ts in by_m.items()}
    return {
        # The best mix is the machine's peak: the variants run at either micro-batch size.
        "gemm_flops": max(mixes.values()),
        "mix_gflops": {str(m): f / 1e9 for m, f in mixes.items()},
        "shapes": [
            {"m": m, "k": k, "n": n, "count": c, "gflops": 2 * m * k * n / s / 1e9}
            for m, k, n, c, s in timings
        ],
    }


# ---------------------------------------------------------------------------------------------
# Workers (one subprocess per run)
# ---------------------------------------------------------------------------------------------


def _lora_config(lora: dict[str, Any]) -> Any:
    from peft import LoraConfig

    targets = lora["target_modules"]
    target = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    return LoraConfig(
        r=lora["lora_r"],
        lora_alpha=lora["lora_alpha"],
        lora_dropout=lora["lora_dropout"],
        target_modules=target,
        task_type="CAUSAL_LM",
    )


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _peak_rss_mb() -> float:
    """Peak resident set of this process and its finished children (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def bench_eval_loss(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    batch_size: int,
    max_seq_len: int,
    system_prompt: str = "",
) -> float:
    """Token-weighted cross-entropy over response + end tokens (prompt and pad excluded).

    Used only when ``trainer.evaluate.eval_loss`` is missing, and as a cross-check of it.
    Rows are length-sorted and right-padded with an attention mask; the cache is off.
    """
    import torch

    from trainer.formatting import IGNORE_INDEX, encode_row

    encoded = [
        encode_row(tokenizer, r, system_prompt=system_prompt, max_seq_len=max_seq_len) for r in rows
    ]
    encoded.sort(key=lambda e: len(e.input_ids))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            width = max(len(e.input_ids) for e in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, e in enumerate(chunk):
                n = len(e.input_ids)
                ids[i, :n] = torch.tensor(e.input_ids)
                labels[i, :n] = torch.tensor(e.labels)
                mask[i, :n] = 1
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).logits.float()
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(device)
            total += torch.nn.functional.cross_entropy(
                shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"
            ).item()
            count += int((shift_labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


def _eval(model: Any, tokenizer: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Eval loss by the shared definition, with the trainer's function when it exists."""
    t0 = time.perf_counter()
    rows = _read_jsonl(spec["eval"])
    kwargs = {
        "batch_size": spec["eval_batch_size"],
        "max_seq_len": spec["max_seq_len"],
        "system_prompt": spec["system_prompt"],
    }
    try:
        from trainer.evaluate import eval_loss
    except ImportError:
        eval_loss = None
    if eval_loss is None:
        res = {"eval_loss": bench_eval_loss(model, tokenizer, rows, **kwargs)}
        res["eval_loss_source"] = "bench"
    else:
        res = {"eval_loss": float(eval_loss(model, tokenizer, rows, **kwargs))}
        res["eval_loss_source"] = "trainer.evaluate"
        if spec.get("check_eval"):
            res["eval_loss_bench"] = bench_eval_loss(model, tokenizer, rows, **kwargs)
    res["eval_s"] = time.perf_counter() - t0
    return res


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Variant (a): ``trainer.train.train`` with its default batching; eval from its adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import TrainConfig
    from trainer.train import train

    cfg = TrainConfig(
        **{**spec["train_config"], "model": spec["model_dir"], "max_steps": 0, "epochs": 1.0}
    )
    out = Path(spec["run_dir"]) / "ours-output"
    quiet: list[str] = []
    t0 = time.perf_counter()
    # No eval_data: the eval below uses the same function and model dtype for every variant.
    metrics = train(cfg, spec["train"], None, str(out), log=quiet.append)
    call_s = time.perf_counter() - t0
    peak = _peak_rss_mb()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    loop_s = metrics["train_time_s"]
    seen = metrics["supervised_tokens"]
    res: dict[str, Any] = {
        "supervised_tokens_per_s": seen / loop_s,
        "tokens_per_s": metrics["tokens"] / loop_s,
        "padding_fraction": metrics["padding_fraction"],
        "peak_rss_mb": peak,
        "peak_gpu_mb": gpu_peak,
        "loop_s": loop_s,
        "train_call_s": call_s,
        "steps": metrics["steps"],
        "batching": metrics.get("batching"),
        "attn_implementation": metrics.get("attn_implementation"),
        "precision": metrics.get("precision"),
        "supervised_tokens_seen": seen,
        "tokens_seen": metrics["tokens"],
        "loss_tokens_seen": seen,
        "reported_supervised_tokens_per_s": metrics.get("supervised_tokens_per_s"),
    }
    if spec["do_eval"]:
        tok = AutoTokenizer.from_pretrained(
            str(out) if (out / "tokenizer_config.json").exists() else spec["model_dir"]
        )
        base = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=_base_dtype(spec))
        model = PeftModel.from_pretrained(base, str(out)).to(spec["device"])
        res.update(_eval(model, tok, spec))
    return res


class _Counting:
    """Wraps a collator and counts the tokens and padding the model is fed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0
        self.slots = 0
        self.supervised = 0
        self.loss_tokens = 0
        self.batches = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        # ``n_sup`` (response + end tokens of a row) rides along for rows whose labels are
        # not ours (the plain Trainer also trains on the prompt); the model never sees it.
        n_sup = [f.pop("n_sup") for f in features if "n_sup" in f]
        batch = self.inner(features)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        self.slots += ids.numel()
        # Padding-free batches (trl packing) carry no 2D mask: every slot is a real token.
        self.tokens += int(mask.sum()) if mask is not None and mask.dim() == 2 else ids.numel()
        loss_tokens = int((batch["labels"] != -100).sum()) if "labels" in batch else 0
        self.loss_tokens += loss_tokens
        self.supervised += sum(n_sup) if n_sup else loss_tokens
        self.batches += 1
        return batch


def _timing_callback(device: str) -> Any:
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        start = end = None

        def _sync(self) -> None:
            if device == "cuda":
                import torch

                torch.cuda.synchronize()

        def on_train_begin(self, args, state, control, **kwargs):
            self._sync()
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self._sync()
            self.end = time.perf_counter()

    return Timing()


def _common_args(spec: dict[str, Any]) -> dict[str, Any]:
    tc = spec["train_config"]
    cuda = spec["device"] == "cuda"
    return {
        "output_dir": str(Path(spec["run_dir"]) / "hf-output"),
        "per_device_train_batch_size": tc["batch_size"],
        "gradient_accumulation_steps": tc["grad_accum"],
        "learning_rate": tc["learning_rate"],
        "weight_decay": tc["weight_decay"],
        "warmup_steps": tc["warmup_ratio"],  # a float < 1 is a ratio in transformers 5
        "lr_scheduler_type": "linear",
        "optim": "adamw_torch",
        "num_train_epochs": 1,
        "max_steps": -1,
        "seed": tc["seed"],
        "data_seed": tc["seed"],
        "gradient_checkpointing": tc["gradient_checkpointing"],
        "bf16": cuda,
        "use_cpu": not cuda,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "max_grad_norm": tc["max_grad_norm"],
        "label_names": ["labels"],
    }


def _match_warmup(trainer: Any, spec: dict[str, Any]) -> None:
    """Warm-up steps as ours counts them, ``int(ratio * total steps)``.

    The Trainer rounds a ratio up, which on a run of a few steps would make its first step's
    learning rate 0 where ours has none.
    """
    tc = spec["train_config"]
    total = math.ceil(len(trainer.train_dataset) / (tc["batch_size"] * tc["grad_accum"]))
    trainer.args.warmup_steps = int(tc["warmup_ratio"] * total)


def _finish(
    trainer: Any, counter: _Counting, timing: Any, model: Any, tok: Any, spec: dict[str, Any]
) -> dict[str, Any]:
    import torch

    loop_s = timing.end - timing.start
    peak = _peak_rss_mb()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    res = {
        "supervised_tokens_per_s": counter.supervised / loop_s,
        "tokens_per_s": counter.tokens / loop_s,
        "padding_fraction": 1.0 - counter.tokens / counter.slots if counter.slots else None,
        "peak_rss_mb": peak,
        "peak_gpu_mb": gpu_peak,
        "loop_s": loop_s,
        "steps": trainer.state.global_step,
        "supervised_tokens_seen": counter.supervised,
        "tokens_seen": counter.tokens,
        "loss_tokens_seen": counter.loss_tokens,
    }
    if spec["do_eval"]:
        res.update(_eval(model, tok, spec))
    return res


def _encoded(tok: Any, spec: dict[str, Any]) -> list[Any]:
    from trainer.formatting import encode_row

    return [
        encode_row(tok, r, system_prompt=spec["system_prompt"], max_seq_len=spec["max_seq_len"])
        for r in _read_jsonl(spec["train"])
    ]


def _base_dtype(spec: dict[str, Any]) -> Any:
    """Frozen base weights: bf16 on CUDA (as ours loads them; adapters stay fp32), else fp32."""
    import torch

    return torch.bfloat16 if spec["device"] == "cuda" else torch.float32


def _load_base(spec: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=_base_dtype(spec))
    if spec["train_config"]["gradient_checkpointing"]:
        model.enable_input_require_grads()
    return model


def run_hf(spec: dict[str, Any], grouped: bool) -> dict[str, Any]:
    """Variants (b) and (d): a plain ``transformers.Trainer`` with the usual LM collator."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(spec["train_config"]["seed"])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    enc = _encoded(tok, spec)
    ds = Dataset.from_dict(
        {"input_ids": [e.input_ids for e in enc], "n_sup": [e.n_supervised for e in enc]}
    )
    model = get_peft_model(_load_base(spec), _lora_config(spec["train_config"]))
    args = TrainingArguments(
        **_common_args(spec),
        train_sampling_strategy="group_by_length" if grouped else "random",
        remove_unused_columns=False,  # keeps n_sup for the counting collator, which drops it
    )
    counter = _Counting(DataCollatorForLanguageModeling(tok, mlm=False))
    timing = _timing_callback(spec["device"])
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=counter,
        processing_class=tok,
        callbacks=[timing],
    )
    _match_warmup(trainer, spec)
    trainer.train()
    return _finish(trainer, counter, timing, model, tok, spec)


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """Variant (c): ``trl.SFTTrainer`` with packing, on rows pre-tokenised by our formatter."""
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(spec["train_config"]["seed"])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    enc = _encoded(tok, spec)
    ds = Dataset.from_dict(
        {"input_ids": [e.input_ids for e in enc], "labels": [e.labels for e in enc]}
    )
    args = SFTConfig(**_common_args(spec), packing=True, max_length=spec["max_seq_len"])
    timing = _timing_callback(spec["device"])
    trainer = SFTTrainer(
        model=_load_base(spec),
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=_lora_config(spec["train_config"]),
        callbacks=[timing],
    )
    counter = _Counting(trainer.data_collator)
    trainer.data_collator = counter
    _match_warmup(trainer, spec)
    trainer.train()
    return _finish(trainer, counter, timing, trainer.model, tok, spec)


def worker(variant: str, spec_path: str, result_path: str) -> None:
    """Run one variant once and write its measurements as JSON to ``result_path``."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])

    import_s = time.perf_counter() - t0
    if variant == "gemm":
        res = run_gemm(spec)
    elif variant == "ours":
        res = run_ours(spec)
    elif variant == "trl":
        res = run_trl(spec)
    else:
        res = run_hf(spec, grouped=variant == "grouped")
    res["wall_s"] = time.perf_counter() - t0
    res["import_s"] = import_s
    Path(result_path).write_text(json.dumps(res))


# ---------------------------------------------------------------------------------------------
# Orchestration (parent process)
# ---------------------------------------------------------------------------------------------


def _run_once(variant: str, spec: dict[str, Any], run_dir: Path, timeout: float) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "run_dir": str(run_dir)}
    spec_path, result_path = run_dir / "spec.json", run_dir / "result.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, __file__, "--worker", variant, str(spec_path), str(result_path)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    if spec["device"] == "cpu":
        # Ours picks its device itself ("auto"); hide any GPU so every variant runs on the CPU.
        env["CUDA_VISIBLE_DEVICES"] = ""
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec["threads"])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
    return json.loads(result_path.read_text())


def _fmt(value: Any, pattern: str = "{:,.0f}") -> str:
    return "-" if value is None else pattern.format(value)


def summarise(
    runs: dict[str, list[dict[str, Any]]],
    mfu_inputs: dict[str, Any] | None,
    peak_flops: float | None,
    cpu_peak_flops: float | None = None,
) -> dict[str, Any]:
    """Medians per variant, with MFU (GPU peak) or CPU-MFU (measured GEMM peak) when given."""
    out: dict[str, Any] = {}
    for variant, results in runs.items():
        ok = [r for r in results if "error" not in r]
        med: dict[str, Any] = {k: median_or_none([r.get(k) for r in ok]) for k in METRIC_KEYS}
        for extra in (
            "loop_s",
            "wall_s",
            "steps",
            "supervised_tokens_seen",
            "tokens_seen",
            "loss_tokens_seen",
            "peak_gpu_mb",
            "eval_loss_bench",
        ):
            med[extra] = median_or_none([r.get(extra) for r in ok])
        med["runs_ok"] = len(ok)
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            med["errors"] = errors
        if variant == "ours" and ok:
            med["batching"] = ok[0].get("batching")
        # Same rows for every variant: useful FLOPs are the same, only the time differs.
        if mfu_inputs and peak_flops and med["loop_s"]:
            med["mfu"] = mfu(lora_train_flops(**mfu_inputs), med["loop_s"], peak_flops)
        if mfu_inputs and cpu_peak_flops and med["loop_s"]:
            med["mfu_cpu"] = mfu(lora_train_flops(**mfu_inputs), med["loop_s"], cpu_peak_flops)
        out[variant] = med
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse flags, prepare data and model, run the variants interleaved, print the results."""
    from trainer.config import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Alpaca .json or .jsonl")
    parser.add_argument("--sample", action="store_true", help=f"use {SAMPLE_DATA.name} as data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--model",
        "--shape",
        dest="shape",
        choices=MODELS,
        default="tiny",
        help="tiny (built-in, random), qwen2.5-0.5b (real shape, random weights) or "
        "smollm2-135m (built-in, pretrained)",
    )
    parser.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    parser.add_argument(
        "--token-budget",
        type=int,
        default=None,
        help="train on the first rows (seeded order) reaching this many supervised tokens; "
        "0 = every row that is not held out (the whole Alpaca demo: ~20 min here on the tiny "
        "model); default 30,000, or 3,000 for smollm2-135m (~15 min for 2 repeats here)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per run (same for every variant; 1 is steadiest on a shared machine; "
        "0 = torch's default)",
    )
    parser.add_argument("--n-eval", type=int, default=100, help="held-out eval rows")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak (MFU)")
    parser.add_argument(
        "--check-eval",
        action="store_true",
        help="also compute the eval loss with this file's own implementation (cross-check)",
    )
    parser.add_argument(
        "--gemm-seconds",
        type=float,
        default=0.5,
        help="CPU-MFU: seconds of timing per GEMM shape (twice per command)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    args = parser.parse_args(argv)
    if args.token_budget is None:
        args.token_budget = 3_000 if args.shape == "smollm2-135m" else 30_000

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    data = SAMPLE_DATA if args.sample else args.data
    if not data.exists():
        parser.error(f"--data {data}: file not found")

    peak_flops = None
    gpu_name = None
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(
                "error: --device cuda but no CUDA device is visible (torch.cuda.is_available() "
                "is False); run with --device cpu",
                file=sys.stderr,
            )
            return 2
        gpu_name = torch.cuda.get_device_name(0)
        peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else default_peak_flops(gpu_name)
        if peak_flops is None:
            print(f"warning: unknown GPU {gpu_name!r}: pass --peak-tflops for MFU", file=sys.stderr)

    from transformers import AutoTokenizer

    train_config = {
        **{k: getattr(defaults, k) for k in vars(defaults)},
        "batch_size": args.batch_size,
        "max_seq_len": args.max_seq_len,
        "seed": args.seed,
    }
    workdir_ctx = tempfile.TemporaryDirectory(prefix="llmft-bench-")
    workdir = args.workdir or Path(workdir_ctx.name)
    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_ctx:
        model_dir = prepare_model(args.shape, workdir, args.seed, args.device)
        tok = AutoTokenizer.from_pretrained(model_dir)
        info = prepare_data(
            data,
            tok,
            workdir,
            max_seq_len=args.max_seq_len,
            n_eval=args.n_eval,
            token_budget=args.token_budget,
            seed=args.seed,
            system_prompt=defaults.system_prompt,
        )
        counts = model_counts(model_dir, train_config)
        linears = counts.pop("linears")
        mfu_inputs = {
            **counts,
            "n_tokens": info["tokens"],
            "sum_sq_seq_len": info["sum_sq_seq_len"],
        }
        # The micro-batches the variants multiply: batch x median row length tokens (the
        # peers), and our trainer's CPU piece size; the faster mix is the peak.
        from trainer.batching import CPU_MICRO_BATCH_TOKENS

        m_sizes = sorted(
            {max(1, round(args.batch_size * info["median_len"])), CPU_MICRO_BATCH_TOKENS}
        )
        shapes: dict[tuple[int, int, int], int] = {}
        for m_size in m_sizes:
            shapes.update(linear_gemm_shapes(linears, m_size))
        gemm_spec = {
            "device": "cpu",
            "threads": args.threads,
            "gemm_seconds": args.gemm_seconds,
            "gemm_shapes": sorted(shapes.items()),
        }
        gemm_runs: list[dict[str, Any]] = []

        def measure_gemm(tag: str) -> None:
            if args.device != "cpu":
                return
            res = _run_once("gemm", gemm_spec, workdir / f"gemm-{tag}", args.timeout)
            if "error" in res:
                print(f"  GEMM peak ({tag}) FAILED {res['error']}")
                return
            gemm_runs.append(res)
            mixes = ", ".join(f"M={m}: {g:.1f}" for m, g in res["mix_gflops"].items())
            print(
                f"  GEMM peak ({tag}): {res['gemm_flops'] / 1e9:.1f} GFLOP/s fp32, the best of "
                f"the model's {len(res['shapes']) // len(m_sizes)} GEMM shapes at ({mixes}) "
                f"GFLOP/s, {args.threads or 'default'} thread(s)",
                flush=True,
            )

        spec = {
            "model_dir": model_dir,
            "train": info["train"],
            "eval": info["eval"],
            "device": args.device,
            "max_seq_len": args.max_seq_len,
            "system_prompt": defaults.system_prompt,
            "eval_batch_size": 16 if args.shape == "tiny" else 8,
            "supervised_tokens": info["supervised_tokens"],
            "threads": args.threads,
            "check_eval": args.check_eval,
            "train_config": train_config,
        }
        print(
            f"data {data.name}: {info['rows_read']} rows, {info['rows_fitting']} fit "
            f"{args.max_seq_len} tokens; held-out eval {info['n_eval']} rows; every variant "
            f"trains one epoch over the same {info['n_train']} rows = "
            f"{info['supervised_tokens']:,} supervised / {info['tokens']:,} tokens "
            f"(row length median {info['median_len']:.0f}, max {info['max_len']})"
        )
        print(
            f"model {args.shape} on {args.device}{f' ({gpu_name})' if gpu_name else ''}; "
            f"batch {args.batch_size} x accum {defaults.grad_accum}, lr {defaults.learning_rate}, "
            f"LoRA r={defaults.lora_r} alpha={defaults.lora_alpha} "
            f"dropout={defaults.lora_dropout} {defaults.target_modules}, seed {args.seed}; "
            f"{args.repeats} interleaved repeats"
        )
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        measure_gemm("before")
        for rep in range(args.repeats):
            for variant in variants:
                # Training is deterministic for a seed on CPU: the eval runs once per variant.
                run_spec = {**spec, "do_eval": rep == 0 or args.device != "cpu"}
                res = _run_once(variant, run_spec, workdir / f"r{rep}-{variant}", args.timeout)
                runs[variant].append(res)
                if "error" in res:
                    print(f"  [{rep + 1}/{args.repeats}] {variant:8s} FAILED {res['error']}")
                else:
                    if res.get("supervised_tokens_seen") != info["supervised_tokens"]:
                        # A different workload would make the ratios meaningless.
                        print(
                            f"  warning: {variant} trained {res.get('supervised_tokens_seen')} "
                            f"supervised tokens, expected {info['supervised_tokens']}"
                        )
                    print(
                        f"  [{rep + 1}/{args.repeats}] {variant:8s} "
                        f"{_fmt(res['supervised_tokens_per_s'])} sup tok/s  "
                        f"{_fmt(res['tokens_per_s'])} tok/s  loop {_fmt(res['loop_s'], '{:.1f}')} s  "
                        f"{res['steps']} steps  {_fmt(res['supervised_tokens_seen'])} sup tokens  "
                        f"eval {_fmt(res.get('eval_loss'), '{:.4f}')}",
                        flush=True,
                    )
        measure_gemm("after")
        cpu_peak = max((g["gemm_flops"] for g in gemm_runs), default=None)
        summary = summarise(runs, mfu_inputs, peak_flops, cpu_peak)

    print()
    header = (
        f"{'variant':9s} {'sup tok/s':>10s} {'tok/s':>9s} {'pad %':>6s} {'RSS MB':>7s} "
        f"{'eval loss':>9s} {'steps':>5s} {'sup tok':>8s} {'loop s':>7s} {'wall s':>7s}"
    )
    mfu_key = "mfu" if peak_flops else ("mfu_cpu" if cpu_peak else None)
    if mfu_key:
        header += f" {'MFU %' if mfu_key == 'mfu' else 'CPU-MFU %':>9s}"
    print(header)
    for variant, m in summary.items():
        pad = None if m["padding_fraction"] is None else 100 * m["padding_fraction"]
        line = (
            f"{variant:9s} {_fmt(m['supervised_tokens_per_s']):>10s} {_fmt(m['tokens_per_s']):>9s} "
            f"{_fmt(pad, '{:.1f}'):>6s} {_fmt(m['peak_rss_mb']):>7s} "
            f"{_fmt(m['eval_loss'], '{:.4f}'):>9s} {_fmt(m['steps']):>5s} "
            f"{_fmt(m['supervised_tokens_seen']):>8s} "
            f"{_fmt(m['loop_s'], '{:.1f}'):>7s} {_fmt(m['wall_s'], '{:.1f}'):>7s}"
        )
        if mfu_key:
            value = m.get(mfu_key)
            line += f" {_fmt(None if value is None else 100 * value, '{:.1f}'):>9s}"
        print(line)
    if "ours" in summary:
        print(f"ours batching: {summary['ours'].get('batching')}")
    if mfu_key:
        print(
            "MFU = (4*N*T + 12*n_layers*d_attn*sum(L_i^2) + 6*N_lora*T) / (loop_s * peak); "
            f"N={mfu_inputs['n_params']:,} N_lora={mfu_inputs['n_lora_params']:,} "
            f"T={mfu_inputs['n_tokens']:,} n_layers={mfu_inputs['n_layers']} "
            f"d_attn={mfu_inputs['attn_dim']} sum(L^2)={mfu_inputs['sum_sq_seq_len']:,} "
            f"peak={_fmt(peak_flops or cpu_peak, '{:.3g}')} FLOP/s"
            + (" (fp32 GEMMs measured in this command)" if mfu_key == "mfu_cpu" else "")
        )

    sup = {v: summary[v]["supervised_tokens_per_s"] for v in summary}
    ratios = {
        f"ours/{peer}": ratio(sup.get("ours"), sup.get(peer))
        for peer in ("baseline", "trl", "grouped")
        if peer in summary and "ours" in summary
    }
    goals = GOALS.get(args.shape, GOALS["default"])
    print()
    for name, value in ratios.items():
        verdict = "-" if value is None else ("met" if value >= goals[name] else "MISSED")
        print(f"{name:14s} {_fmt(value, '{:.2f}x'):>7s}  (goal >= {goals[name]:.1f}x: {verdict})")
    if args.shape == "smollm2-135m" and "ours" in summary:
        value = summary["ours"].get("mfu_cpu")
        verdict = "-" if value is None else ("met" if value >= MFU_CPU_GOAL else "MISSED")
        shown = "-" if value is None else f"{100 * value:.1f} %"
        print(f"{'ours CPU-MFU':14s} {shown:>7s}  (goal >= {100 * MFU_CPU_GOAL:.0f} %: {verdict})")
    if "ours" in summary and summary["ours"]["eval_loss"] is not None:
        others = {v: m["eval_loss"] for v, m in summary.items() if v != "ours" and m["eval_loss"]}
        # 1 % slack: the variants differ in batch composition, so equal quality is not
        # bit-equal loss.
        worse = [v for v, loss in others.items() if summary["ours"]["eval_loss"] > 1.01 * loss]
        print(
            "eval loss: ours "
            + (
                f"more than 1 % worse than {', '.join(worse)}"
                if worse
                else "no worse than any peer (1 % slack)"
            )
        )
    print("note: medians of interleaved runs on a shared machine; timings drift +-20-30 %.")
    if args.json:
        payload = {v: {k: summary[v].get(k) for k in METRIC_KEYS} for v in summary}
        payload["ratios"] = ratios
        payload["details"] = {
            "data": info | {"source": str(data)},
            "device": args.device,
            "shape": args.shape,
            "repeats": args.repeats,
            "gemm_peak_flops": cpu_peak,
            "gemm_runs": gemm_runs,
            "summary": summary,
        }
        print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4])
        sys.exit(0)
    sys.exit(main())
