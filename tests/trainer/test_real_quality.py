"""Quality on a real model: a few LoRA steps of smollm2-135m on the orders task lower the loss on
held-out rows (new names, cities, items and templates), so training learns, not memorises."""

from __future__ import annotations

import json
from pathlib import Path

from trainer import task_data as td


def _write(path: Path, rows: list[dict[str, str]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_few_lora_steps_lower_held_out_loss(smollm2_dir: str, tmp_path) -> None:
    from trainer.config import TrainConfig
    from trainer.evaluate import eval_loss
    from trainer.modeling import load_base_model, load_tokenizer
    from trainer.train import train

    rows = td.generate_rows(16, 8, seed=5)
    held = [r for r in rows if td.split_of(r) == "eval"]
    seen = [r for r in rows if td.split_of(r) == "train"]
    tok = load_tokenizer("smollm2-135m")
    base = eval_loss(
        load_base_model("smollm2-135m", precision="fp32"),
        tok,
        held,
        batch_size=8,
        max_seq_len=192,
    )
    cfg = TrainConfig(
        model="smollm2-135m",
        max_steps=4,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        lr_schedule="constant",
        batch_size=4,
        max_seq_len=192,
        precision="fp32",
        log_every=4,
    )
    metrics = train(
        cfg,
        _write(tmp_path / "train.jsonl", seen),
        _write(tmp_path / "eval.jsonl", held),
        str(tmp_path / "out"),
        log=lambda _line: None,
    )
    assert metrics["steps"] == 4
    # Base SmolLM2 does not know the answer format (~1.0 nats/token on these rows); four steps
    # over 16 rows cut it to ~0.35 (measured), so 0.6x leaves a wide margin.
    assert metrics["eval_loss"] < 0.6 * base, (base, metrics["eval_loss"])
