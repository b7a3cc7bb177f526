"""Accuracy of ``trainer.plan.estimate`` against measured memory of ``llmft train`` on the CPU.

One command::

    flock /tmp/llmft-heavy.lock .venv/bin/python bench/plan_accuracy.py [--cases tiny,qwen]
        [--repeats 2] [--steps 3] [--saved] [--json]

Two measurements:

``rss`` (default): each case trains in its own subprocess (``trainer.train.train``, the code
``llmft train`` runs) on rows that are all exactly ``max_seq_len`` tokens (long responses cut by
``long_rows=truncate``), so the estimate's worst case (every micro-batch ``batch x max_seq_len``
tokens, nearly all supervised) is what actually runs. The child resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``) right before the model loads, records ``VmRSS`` there (the
baseline: Python, torch, transformers, peft, accelerate, datasets, tokenizer and tokenised
data) and reads ``VmHWM`` after training. ``measured = VmHWM - baseline`` is what the estimate
models on the CPU: fp32 weights, LoRA weights + grads + AdamW, activations and the loss; it is
compared with the estimate minus its fixed runtime term, as a ratio (estimate / measured) and a
relative error. Each case runs twice: with glibc's default malloc (as ``llmft train`` runs;
compared with the estimate including its malloc-retention term) and with every block over
64 KiB mmapped and returned on free (``live``: RSS tracks the bytes alive; compared with the
tensor terms alone, without the retention term). The baseline itself is reported to check
``CPU_RUNTIME_BYTES``.

Cases: the built-in tiny model (hidden 128, 4 layers, vocab 4,096) and a Qwen2.5-0.5B-shaped
random model (vocab 151,936, hidden 896, intermediate 4,864, 14 heads, 2 KV heads, tied
embeddings) cut to 2 layers (~0.66 GB fp32), saved with the tiny tokenizer (its ids are < 4,096,
valid for the larger vocabulary). Each is run with and without gradient checkpointing.

``--saved``: per-layer activation bytes counted exactly, tensor by tensor, with
``torch.autograd.graph.saved_tensors_hooks`` over one forward of a LoRA-wrapped 1-layer model
(Qwen2.5-0.5B layer shape), in fp32 and under bf16 autocast with bf16 base weights (what a GPU
runs), against ``trainer.plan``'s per-token-per-layer formula.

The loss: the trainer runs the output head in chunks sized by the vocabulary
(``trainer.loss.chunk_rows``: 441 rows of the Qwen vocabulary); the estimate follows
``trainer.plan.resolve_loss_chunk`` and each row reports the chunk it assumed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIB = 1024**2

QWEN_SHAPE = {
    "vocab_size": 151_936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
}

# (name, model, batch_size, max_seq_len, gradient_checkpointing)
CASES = [
    ("tiny b16 L512", "tiny", 16, 512, False),
    ("tiny b16 L512 ckpt", "tiny", 16, 512, True),
    ("tiny b32 L1024", "tiny", 32, 1024, False),
    ("qwen-2L b4 L256", "qwen", 4, 256, False),
    ("qwen-2L b8 L256", "qwen", 8, 256, False),
    ("qwen-2L b8 L256 ckpt", "qwen", 8, 256, True),
]

_WORDS = (
    "river stone apple quick green seven table music light forest window paper garden "
    "silver market train cloud letter summer number orange yellow bridge winter circle"
).split()


def _kib_field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{name} not in /proc/self/status")


def build_qwen_shaped(out: Path) -> str:
    """A random Qwen2 model with Qwen2.5-0.5B's widths and 2 layers, plus the tiny tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.tiny_model import tiny_model_dir

    tiny = Path(tiny_model_dir())
    out.mkdir(parents=True, exist_ok=True)
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            shutil.copy(f, out / f.name)
    tiny_cfg = json.loads((tiny / "config.json").read_text())
    cfg = Qwen2Config(
        eos_token_id=tiny_cfg.get("eos_token_id"),
        pad_token_id=tiny_cfg.get("pad_token_id"),
        bos_token_id=None,
        **QWEN_SHAPE,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(str(out))
    return str(out)


def write_rows(path: Path, n: int, words: int, seed: int = 0) -> None:
    """Rows whose responses are far longer than any max_seq_len used here (truncated to it)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for k in range(n):
            out = " ".join(rng.choice(_WORDS) for _ in range(words))
            f.write(
                json.dumps({"instruction": f"Write text {k}.", "input": "", "output": out}) + "\n"
            )


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one training in this process and report its memory marks."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from trainer import modeling
    from trainer.config import TrainConfig
    from trainer.train import train

    marks: dict[str, int] = {}
    original = modeling.load_base_model

    def load(*a: Any, **kw: Any) -> Any:
        marks["hwm_before_load"] = _kib_field("VmHWM")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
        marks["rss_before_load"] = _kib_field("VmRSS")
        m = original(*a, **kw)
        marks["rss_after_load"] = _kib_field("VmRSS")
        return m

    modeling.load_base_model = load
    cfg = TrainConfig(
        model=spec["model_dir"],
        batch_size=spec["batch_size"],
        max_seq_len=spec["max_seq_len"],
        gradient_checkpointing=spec["ckpt"],
        # The whole micro-batch at once, as on a GPU (the CPU default splits it into pieces).
        micro_batch_tokens=-1,
        max_steps=spec["steps"],
        long_rows="truncate",
        log_every=1000,
        save_every=1000,
    )
    metrics = train(cfg, spec["data"], None, spec["out"], None, log=lambda _: None)
    marks["hwm_after_train"] = _kib_field("VmHWM")
    marks["tokens"] = metrics["tokens"]
    marks["supervised"] = metrics["supervised_tokens"]
    marks["steps"] = metrics["steps"]
    return marks


ALLOCATORS = {
    "glibc": {},
    "live": {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"},
}
"""``glibc``: the default malloc, as ``llmft train`` runs. ``live``: every block over 64 KiB is
mmapped and returned when freed, so the peak RSS tracks the bytes actually alive (what the
estimate models and what a GPU's caching allocator holds, fragmentation aside)."""


def run_case(
    name: str, model_dir: str, b: int, L: int, ckpt: bool, steps: int, tmp: Path, alloc: str
) -> dict:
    data = tmp / f"rows-{L}.jsonl"
    if not data.exists():
        write_rows(data, n=max(64, b * (steps + 1)), words=2 * L)
    spec = {
        "model_dir": model_dir,
        "batch_size": b,
        "max_seq_len": L,
        "ckpt": ckpt,
        "steps": steps,
        "data": str(data),
        "out": str(tmp / f"out-{abs(hash(name))}"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(ALLOCATORS[alloc])
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimate_case(model_dir: str, b: int, L: int, ckpt: bool) -> Any:
    from trainer.config import TrainConfig
    from trainer.plan import estimate, load_model_config

    cfg = TrainConfig(
        model=model_dir,
        batch_size=b,
        max_seq_len=L,
        gradient_checkpointing=ckpt,
        micro_batch_tokens=-1,  # as the measured child trains
    )
    return estimate(
        load_model_config(model_dir), cfg, accelerator="cpu", eval_pass=False, advise=False
    )


def rss_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    from trainer.plan import CPU_RUNTIME_BYTES, load_model_config, resolve_loss_chunk
    from trainer.tiny_model import tiny_model_dir

    wanted = set(args.cases.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="plan-acc-") as t:
        tmp = Path(t)
        dirs = {"tiny": tiny_model_dir()}
        if "qwen" in wanted:
            dirs["qwen"] = build_qwen_shaped(tmp / "qwen-shaped")
        for name, model, b, L, ckpt in CASES:
            if model not in wanted:
                continue
            plan = estimate_case(dirs[model], b, L, ckpt)
            retention = plan.components["malloc retention (glibc heap)"]
            targets = {
                "glibc": plan.peak_bytes - CPU_RUNTIME_BYTES,
                "live": plan.peak_bytes - CPU_RUNTIME_BYTES - retention,
            }
            row: dict[str, Any] = {
                "case": name,
                "estimate_mib": round(targets["glibc"] / MIB),
                "estimate_tensors_mib": round(targets["live"] / MIB),
                "loss_chunk_tokens": resolve_loss_chunk(
                    None, load_model_config(dirs[model]).get("vocab_size")
                ),
                "breakdown_mib": {k: round(v / MIB) for k, v in plan.components.items()},
            }
            for alloc in ALLOCATORS:
                runs = [
                    run_case(name, dirs[model], b, L, ckpt, args.steps, tmp, alloc)
                    for _ in range(args.repeats)
                ]
                meas = [r["hwm_after_train"] - r["rss_before_load"] for r in runs]
                med = statistics.median(meas)
                est = targets[alloc]
                row[alloc] = {
                    "measured_mib_median": round(med / MIB),
                    "measured_mib_runs": [round(m / MIB) for m in meas],
                    "ratio_est_over_measured": round(est / med, 3),
                    "rel_error": round((est - med) / med, 3),
                    "baseline_rss_mib_median": round(
                        statistics.median(r["rss_before_load"] for r in runs) / MIB
                    ),
                }
                row["tokens_per_step"] = runs[0]["tokens"] // max(1, runs[0]["steps"])
                row["supervised_per_step"] = runs[0]["supervised"] // max(1, runs[0]["steps"])
            rows.append(row)
            if not args.json:
                g, v = row["glibc"], row["live"]
                print(
                    f"{name:<22} tensors: estimate {row['estimate_tensors_mib']:>6} MiB, live "
                    f"{v['measured_mib_median']:>6} MiB {v['measured_mib_runs']} error "
                    f"{v['rel_error']:+.0%} | with retention: estimate {row['estimate_mib']:>6} "
                    f"MiB, glibc {g['measured_mib_median']:>6} MiB {g['measured_mib_runs']} error "
                    f"{g['rel_error']:+.0%} | baseline RSS {g['baseline_rss_mib_median']} MiB, "
                    f"{row['supervised_per_step']}/{row['tokens_per_step']} supervised tokens/step",
                    flush=True,
                )
    return rows


def saved_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Exact saved-for-backward bytes of one decoder layer vs the plan's formula."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.config import TrainConfig
    from trainer.plan import _components, _targets, model_shape

    rows = []
    B, L = 2, 256
    for mode in ("fp32", "bf16-autocast"):
        per = {}
        for layers in (1, 2):
            cfgd = {**QWEN_SHAPE, "vocab_size": 512, "num_hidden_layers": layers}
            torch.manual_seed(0)
            m = Qwen2ForCausalLM(Qwen2Config(**cfgd))
            if mode != "fp32":
                m = m.to(torch.bfloat16)
            m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
            m.train()
            seen: dict[int, int] = {}

            def pack(t: Any, seen: dict[int, int] = seen) -> Any:
                # Activations only: their first dim is the batch or the flattened tokens
                # (weights and autocast's cached weight casts are not).
                if t.dim() and t.shape[0] in (B, B * L):
                    s = t.untyped_storage()
                    seen.setdefault(s.data_ptr(), s.nbytes())
                return t

            ids = torch.randint(0, 512, (B, L))
            attn = torch.ones(B, L, dtype=torch.long)
            attn[0, -8:] = 0  # a padding mask, as length grouping produces
            ctx = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if mode != "fp32"
                else contextlib.nullcontext()
            )
            params = {p.untyped_storage().data_ptr() for p in m.parameters()}
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
                m.get_base_model().model(input_ids=ids, attention_mask=attn, use_cache=False)
            per[layers] = sum(v for k, v in seen.items() if k not in params)
        measured = (per[2] - per[1]) / (B * L)
        shape = model_shape(QWEN_SHAPE)
        notes: list[str] = []
        cfg = TrainConfig()
        _, _, _, info = _components(
            shape,
            cfg,
            batch=B,
            seq=L,
            checkpointing=False,
            quantization="none",
            precision="fp32" if mode == "fp32" else "bf16",
            device="cpu" if mode == "fp32" else "cuda",
            count=1,
            chunk=0,
            attn="sdpa",
            targets=_targets("all-linear", shape, notes),
            eval_pass=False,
        )
        est = info["per_token_per_layer_activation_bytes"]
        row = {
            "mode": mode,
            "measured_bytes_per_token_layer": round(measured),
            "estimate_bytes_per_token_layer": est,
            "ratio_est_over_measured": round(est / measured, 3),
        }
        rows.append(row)
        if not args.json:
            print(
                f"saved tensors {mode:<14} measured {row['measured_bytes_per_token_layer']:>7} B"
                f"/token/layer  estimate {est:>7}  ratio {row['ratio_est_over_measured']:.2f}",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="tiny,qwen", help="tiny, qwen or both (comma-separated)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--saved", action="store_true", help="only the saved-tensor count")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    result: dict[str, Any] = {"saved": saved_bench(args)}
    if not args.saved:
        result["rss"] = rss_bench(args)
        for alloc in ALLOCATORS:
            errs = [abs(r[alloc]["rel_error"]) for r in result["rss"]]
            if errs and not args.json:
                print(f"{alloc}: median |error| {statistics.median(errs):.1%}, max {max(errs):.1%}")
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
