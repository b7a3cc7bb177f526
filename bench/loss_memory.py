"""Peak memory of the loss, before (full-vocabulary logits) vs after (chunked), on the CPU.

One command::

    flock /tmp/llmft-heavy.lock .venv/bin/python bench/loss_memory.py [--repeats 1]
        [--train-batch 16] [--eval-batch 32] [--max-seq-len 512] [--micro-batch-tokens -1]
        [--gradient-checkpointing] [--json]

Training runs the whole micro-batch at once by default (``micro_batch_tokens -1``, what a GPU
does); ``--micro-batch-tokens 0`` measures the CPU default, which runs it in pieces of 1,024
padded tokens.

Model: a Qwen2.5-0.5B-shaped random model (vocabulary 151,936, hidden 896, intermediate 4,864,
14 heads, 2 KV heads, tied embeddings) cut to 2 layers, ~0.66 GB of fp32 weights
(``bench/plan_accuracy.build_qwen_shaped``), on rows of ~``max_seq_len`` tokens whose
responses are most of the row (the worst case for the loss).

Four measurements, each in its own subprocess, peak RSS (``VmHWM``) minus the RSS just before
the model loads (Python, torch, the tokenised data: the same in every variant):

- ``train before``: ``trainer.train.train`` (one optimizer step of ``--train-batch`` rows) with
  ``LLMFT_LOSS_CHUNK_TOKENS=0``: the output head over every supervised position at once, the
  trainer's previous loss;
- ``train after``: the same with the default chunk (``trainer.loss.LOSS_CHUNK_TOKENS``);
- ``eval before``: the previous ``trainer.evaluate.loss_sums`` (copied below as
  ``legacy_loss_sums``: ``model(...).logits`` of every position, B x L x V, then an fp32 copy);
- ``eval after``: today's ``trainer.evaluate.loss_sums`` (the chunked training definition).

It prints each peak, the weights' size, ``peak - weights`` against the goal (within 1.5 GB
of the weights), and the ratio after/before.

The "before" variants run at ``--before-scale`` (default 0.5) times the batch: at the full
batch the old train step needs more than this 24 GB machine has (killed by the kernel's
out-of-memory killer at 24 GB RSS). Peak memory of the old code grows with the batch, so the
printed ratio (after at the full batch / before at half of it) understates the gain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

GOAL_BYTES = 1.5e9


def _field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(name)


def legacy_loss_sums(model: Any, tokenizer: Any, rows: list[dict], *, batch_size: int,
                     max_seq_len: int) -> tuple[float, int]:  # fmt: skip
    """The evaluation loss as it was: full B x L x V logits, then an fp32 copy of them."""
    import torch
    import torch.nn.functional as F

    from trainer.formatting import IGNORE_INDEX, encode_row

    encoded = [
        encode_row(tokenizer, r, max_seq_len=max_seq_len, long_rows="truncate") for r in rows
    ]
    encoded.sort(key=lambda e: len(e.input_ids), reverse=True)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, e in enumerate(batch):
                n = len(e.input_ids)
                ids[j, :n] = torch.tensor(e.input_ids)
                labels[j, :n] = torch.tensor(e.labels)
                mask[j, :n] = 1
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            shift = logits[:, :-1, :].float()
            target = labels[:, 1:]
            total += F.cross_entropy(
                shift.reshape(-1, shift.size(-1)),
                target.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ).item()
            count += int((target != IGNORE_INDEX).sum())
    return total, count


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from trainer import modeling

    marks: dict[str, Any] = {}
    original = modeling.load_base_model

    def load(*a: Any, **kw: Any) -> Any:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
        marks["rss_before_load"] = _field("VmRSS")
        return original(*a, **kw)

    modeling.load_base_model = load
    if spec["what"] == "train":
        from trainer.config import TrainConfig
        from trainer.train import train

        cfg = TrainConfig(
            model=spec["model"],
            batch_size=spec["batch"],
            max_seq_len=spec["max_seq_len"],
            max_steps=1,
            micro_batch_tokens=spec["micro_batch_tokens"],
            gradient_checkpointing=spec["gradient_checkpointing"],
            long_rows="truncate",
            log_every=1000,
            save_every=1000,
        )
        m = train(cfg, spec["data"], None, spec["out"], None, log=lambda _: None)
        marks["supervised"] = m["supervised_tokens"]
    else:
        from trainer.config import LoraSettings
        from trainer.evaluate import loss_sums
        from trainer.modeling import build_lora, load_tokenizer

        tok = load_tokenizer(spec["model"])
        rows = [json.loads(x) for x in Path(spec["data"]).read_text().splitlines()]
        rows = rows[: spec["batch"]]
        model = build_lora(load(spec["model"], precision="fp32", device="cpu"), LoraSettings())
        fn = legacy_loss_sums if spec["variant"] == "before" else loss_sums
        _, marks["supervised"] = fn(
            model.eval(), tok, rows, batch_size=spec["batch"], max_seq_len=spec["max_seq_len"]
        )
    marks["peak"] = _field("VmHWM") - marks["rss_before_load"]
    return marks


def run(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if spec["what"] == "train" and spec["variant"] == "before":
        env["LLMFT_LOSS_CHUNK_TOKENS"] = "0"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--before-scale", type=float, default=0.5)
    ap.add_argument(
        "--micro-batch-tokens",
        type=int,
        default=-1,
        help="train's micro_batch_tokens: -1 (default) the whole micro-batch at once, as on a "
        "GPU; 0 the CPU default (pieces of 1,024 padded tokens)",
    )
    ap.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="train with gradient checkpointing (both variants)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from plan_accuracy import build_qwen_shaped, write_rows

    with tempfile.TemporaryDirectory(prefix="llmft-lossmem-") as tmp:
        model = build_qwen_shaped(Path(tmp) / "qwen")
        weights = sum(f.stat().st_size for f in Path(model).glob("*.safetensors"))
        data = Path(tmp) / "rows.jsonl"
        write_rows(data, n=max(args.train_batch, args.eval_batch), words=2 * args.max_seq_len)
        results: dict[str, list[int]] = {}
        for _ in range(args.repeats):  # interleaved: before, after, before, after
            for what, batch in (("train", args.train_batch), ("eval", args.eval_batch)):
                for variant in ("before", "after"):
                    b = batch if variant == "after" else max(1, int(batch * args.before_scale))
                    spec = {
                        "what": what,
                        "variant": variant,
                        "model": model,
                        "data": str(data),
                        "batch": b,
                        "max_seq_len": args.max_seq_len,
                        "micro_batch_tokens": args.micro_batch_tokens,
                        "gradient_checkpointing": args.gradient_checkpointing,
                        "out": str(Path(tmp) / f"out-{what}-{variant}"),
                    }
                    results.setdefault(f"{what} {variant}", []).append(run(spec)["peak"])
    gib = 2**30
    report = {"weights_bytes": weights, "peaks": results}
    lines = [f"weights (fp32 safetensors): {weights / gib:.2f} GiB"]
    for what, batch in (("train", args.train_batch), ("eval", args.eval_batch)):
        before = statistics.median(results[f"{what} before"])
        after = statistics.median(results[f"{what} after"])
        extra = after - weights
        ok = extra <= GOAL_BYTES
        report[what] = {"before": before, "after": after, "ratio": after / before, "goal_met": ok}
        spread = ", ".join(f"{x / gib:.2f}" for x in results[f"{what} after"])
        half = max(1, int(batch * args.before_scale))
        lines.append(
            f"{what} (batch {batch} x {args.max_seq_len}; before at batch {half}): "
            f"before {before / gib:.2f} GiB, after "
            f"{after / gib:.2f} GiB ({spread}); after/before {after / before:.2f}x; "
            f"after - weights {extra / 1e9:.2f} GB (goal <= 1.5 GB: {'met' if ok else 'MISSED'})"
        )
    print(json.dumps(report) if args.json else "\n".join(lines))


if __name__ == "__main__":
    main()
