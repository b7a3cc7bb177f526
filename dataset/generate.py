"""Write the bundled sample dataset: dataset/sample.jsonl and dataset/sample_alpaca.json.

Deterministic: the same seed writes byte-identical files. Run: python dataset/generate.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.sample_data import generate_rows


def main() -> None:
    """Generate the sample files next to this script (or into --out-dir)."""
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=3000, help="rows in sample.jsonl")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--out-dir", type=Path, default=here, help="output directory")
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


if __name__ == "__main__":
    main()
