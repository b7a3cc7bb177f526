"""Write the bundled datasets: sample.jsonl, sample_alpaca.json and orders.jsonl.

sample.jsonl (and its first 200 rows as the Alpaca array sample_alpaca.json) is the tiny
model's synthetic task set (trainer/sample_data.py); orders.jsonl is the real-language task
set for smollm2-135m (trainer/task_data.py: JSON extraction and one-sentence replies, held-out
rows from held-out names, cities, items and templates).

Deterministic: the same seeds write byte-identical files. Run: python dataset/generate.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer import task_data
from trainer.sample_data import generate_rows

ORDERS_TRAIN = task_data.DEFAULT_TRAIN
ORDERS_EVAL = task_data.DEFAULT_EVAL


def main() -> None:
    """Generate the sample files next to this script (or into --out-dir)."""
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=3000, help="rows in sample.jsonl")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--out-dir", type=Path, default=here, help="output directory")
    ap.add_argument(
        "--orders-train", type=int, default=ORDERS_TRAIN, help="training rows in orders.jsonl"
    )
    ap.add_argument(
        "--orders-eval", type=int, default=ORDERS_EVAL, help="held-out rows in orders.jsonl"
    )
    args = ap.parse_args()
    rows = generate_rows(args.rows, seed=args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "sample.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    # The array form exercises `llmft convert` (the original design's json2jsonl).
    arr = rows[:200]
    (args.out_dir / "sample_alpaca.json").write_text(
        json.dumps(arr, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    print(
        f"wrote {len(rows)} rows to {args.out_dir / 'sample.jsonl'} and {len(arr)} to sample_alpaca.json"
    )
    orders = task_data.generate_rows(args.orders_train, args.orders_eval, seed=args.seed)
    with open(args.out_dir / "orders.jsonl", "w", encoding="utf-8") as f:
        for row in orders:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(
        f"wrote {len(orders)} rows ({args.orders_train} train, {args.orders_eval} held-out) "
        f"to {args.out_dir / 'orders.jsonl'}"
    )


if __name__ == "__main__":
    main()
