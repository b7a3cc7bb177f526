"""Peak memory of merging a LoRA adapter: the old fp32 in-memory merge vs the streaming merge.

One command::

    flock /tmp/llmft-heavy.lock .venv/bin/python bench/merge_memory.py [--repeats 3]
        [--layers 4] [--rank 16] [--shards 2] [--json]

Model: a Qwen2.5-0.5B-shaped random model (vocabulary 151,936, hidden 896, intermediate 4,864,
14 heads, 2 KV heads, tied embeddings, qkv biases) cut to ``--layers`` layers, saved in bf16
with ``save_pretrained`` in ``--shards`` safetensors files (~0.39 GB at 4 layers, most of it the
embedding). Adapter: peft LoRA r ``--rank`` on every linear layer (``all-linear``), with random
non-zero factors.

Two variants, each in its own subprocess, interleaved over ``--repeats``:

- ``old``: the previous ``trainer.modeling.merge_and_save`` (copied below as ``legacy_merge``):
  load the base in fp32 on the CPU, attach the adapter with peft, ``merge_and_unload``,
  ``save_pretrained``;
- ``new``: today's ``trainer.modeling.merge_and_save`` (streams the safetensors files).

Peak RSS is ``VmHWM`` minus the RSS after the imports both variants share (Python, torch,
transformers, peft; the peak mark is reset there). It prints the medians with their spread
(min-max), the ratio new/old, and each peak over the bf16 weight bytes (goal for new <= 1.2).
The first repeat also checks that both outputs agree: every tensor of the new (bf16) output
against the old (fp32) output rounded to bf16.
"""

from __future__ import annotations

import argparse
import json
import os
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

QWEN_05B = {
    "vocab_size": 151_936,
    "hidden_size": 896,
    "intermediate_size": 4_864,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4_096,
    "tie_word_embeddings": True,
}
GOAL = 1.2


def _field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(name)


def legacy_merge(base_model: str, adapter_dir: str, out_dir: str) -> str:
    """The merge as it was: the whole base in fp32 on the CPU, peft's merge_and_unload."""
    from trainer.modeling import _adapter_touches_tied, load_adapter, load_base_model

    untie = _adapter_touches_tied(adapter_dir)
    base = load_base_model(
        base_model, precision="fp32", device="cpu", tie_word_embeddings=False if untie else None
    )
    if untie:
        emb, head = base.get_input_embeddings(), base.get_output_embeddings()
        if head is not None and emb is not None and head.weight.shape == emb.weight.shape:
            head.weight.data = emb.weight.data.clone()
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    os.makedirs(out_dir, exist_ok=True)
    merged.save_pretrained(out_dir)
    return out_dir


def build(tmp: Path, layers: int, rank: int, shards: int) -> tuple[str, str, int]:
    """The bf16 base, its adapter, and the base's tensor bytes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=layers, **QWEN_05B))
    model = model.to(torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    base = tmp / "base"
    model.save_pretrained(base, max_shard_size=weights // shards + 2**20)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear")
    )
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    adapter = tmp / "adapter"
    peft_model.save_pretrained(adapter)
    return str(base), str(adapter), weights


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import peft  # noqa: F401 - both variants pay for the same imports before the mark
    import torch
    import transformers  # noqa: F401

    from trainer import modeling

    torch.set_num_threads(1)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    base_rss = _field("VmRSS")
    t0 = time.perf_counter()
    if spec["variant"] == "old":
        legacy_merge(spec["base"], spec["adapter"], spec["out"])
    else:
        modeling.merge_and_save(spec["base"], spec["adapter"], spec["out"])
    return {
        "peak": _field("VmHWM") - base_rss,
        "seconds": time.perf_counter() - t0,
        "base_rss": base_rss,
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
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


def compare(old_dir: str, new_dir: str) -> dict[str, Any]:
    """Max difference of the new output from the old one rounded to bf16, in bf16 steps."""
    import torch
    from safetensors import safe_open

    def tensors(d: str) -> dict[str, Any]:
        out = {}
        for f in sorted(Path(d).glob("*.safetensors")):
            with safe_open(f, "pt") as st:
                out.update({k: st.get_tensor(k) for k in st.keys()})  # noqa: SIM118
        return out

    old, new = tensors(old_dir), tensors(new_dir)
    worst, differing, total = 0.0, 0, 0
    for k, t in new.items():
        ref = old[k].to(torch.bfloat16).float()
        got = t.float()
        step = torch.where(ref == 0, 2.0**-133, ref.abs() * 2.0**-7)  # one bf16 step at ref
        worst = max(worst, ((got - ref).abs() / step).max().item())
        differing += int((got != ref).sum())
        total += got.numel()
    return {
        "same_names": sorted(old) == sorted(new),
        "dtypes_new": sorted({str(t.dtype) for t in new.values()}),
        "max_diff_bf16_steps": worst,
        "fraction_differing": differing / total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    with tempfile.TemporaryDirectory(prefix="llmft-mergemem-") as tmp:
        base, adapter, weights = build(Path(tmp), args.layers, args.rank, args.shards)
        n_files = len(list(Path(base).glob("*.safetensors")))
        results: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        check: dict[str, Any] = {}
        for r in range(args.repeats):  # interleaved: old, new, old, new, ...
            for variant in ("old", "new"):
                out = str(Path(tmp) / f"out-{variant}-{r}")
                spec = {"variant": variant, "base": base, "adapter": adapter, "out": out}
                results[variant].append(run(spec))
            if r == 0:
                check = compare(str(Path(tmp) / "out-old-0"), str(Path(tmp) / "out-new-0"))
            for variant in ("old", "new"):
                import shutil

                shutil.rmtree(Path(tmp) / f"out-{variant}-{r}", ignore_errors=True)

    mib = 2**20
    peaks = {v: [x["peak"] for x in xs] for v, xs in results.items()}
    secs = {v: [x["seconds"] for x in xs] for v, xs in results.items()}
    med = {v: statistics.median(p) for v, p in peaks.items()}
    report = {
        "layers": args.layers,
        "rank": args.rank,
        "files": n_files,
        "bf16_weight_bytes": weights,
        "peaks": peaks,
        "seconds": secs,
        "ratio_new_over_old": med["new"] / med["old"],
        "new_over_bf16_weights": med["new"] / weights,
        "old_over_bf16_weights": med["old"] / weights,
        "check": check,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"Qwen2.5-0.5B-shaped, {args.layers} layers, bf16 weights {weights / mib:.0f} MiB "
        f"in {n_files} file(s); LoRA r {args.rank} all-linear; {args.repeats} repeats"
    )
    for v in ("old", "new"):
        p = peaks[v]
        print(
            f"  {v}: peak RSS over imports median {med[v] / mib:.0f} MiB "
            f"(spread {min(p) / mib:.0f}-{max(p) / mib:.0f}), "
            f"{med[v] / weights:.2f}x the bf16 weights; "
            f"merge {statistics.median(secs[v]):.1f} s median"
        )
    print(f"  ratio new/old: {med['new'] / med['old']:.3f}")
    ok = med["new"] / weights <= GOAL
    print(f"  goal new <= {GOAL}x bf16 weights: {'met' if ok else 'NOT met'}")
    print(
        f"  outputs agree: same tensors {check['same_names']}, new dtypes {check['dtypes_new']}, "
        f"max diff {check['max_diff_bf16_steps']:.2f} bf16 steps, "
        f"{check['fraction_differing']:.2e} of elements differ"
    )


if __name__ == "__main__":
    main()
