"""The Markdown data report (``report.md``) written by validation; readable in the KFP UI."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def render_report(summary: Any) -> str:
    """Render a :class:`trainer.validate.ValidationSummary` as Markdown.

    Args:
        summary: The summary returned by ``validate_file``.

    Returns:
        The report text: verdict, counts, problems by code with their first lines, token
        statistics, the split, train/eval prompt overlap and the "nothing lost" equation.
    """
    from trainer.validate import CODES

    s = summary
    verdict = "VALID" if s.ok else "INVALID"
    lines = [f"# Data report: `{s.source}`", "", f"**{verdict}**"]
    if s.reasons:
        lines += [""] + [f"- {r}" for r in s.reasons]
    lines += [
        "",
        "## Counts",
        "",
        *_table(
            [
                "lines read",
                "accepted",
                "rejected",
                "of which dropped (long rows)",
                "blank",
                "train",
                "eval",
            ],
            [[s.lines_read, s.accepted, s.rejected, s.dropped_long, s.blank, s.n_train, s.n_eval]],
        ),
        "",
        f"Nothing lost: {s.lines_read} lines read = {s.accepted} accepted + {s.rejected} rejected "
        f"+ {s.blank} blank ({'holds' if s.balanced else 'DOES NOT HOLD'}).",
        "",
        f"Rows rejected for an error: {s.error_rows} ({s.error_fraction:.2%} of non-blank lines); "
        f"warnings: {s.warnings}. Input: {s.input_bytes} bytes, sha256 `{s.input_sha256}`.",
        "",
        "## Problems by code",
        "",
    ]
    if s.counts_by_code:
        rows = []
        for code, n in s.counts_by_code.items():
            ex = ", ".join(f"`{s.source}:{ln}`" for ln in s.examples_by_code.get(code, []))
            rows.append([f"`{code}`", n, CODES.get(code, ""), ex or "-"])
        lines += _table(["code", "count", "meaning", "first lines"], rows)
    else:
        lines.append("None.")
    if s.problems:
        lines += ["", "First problems:", "", "```"]
        lines += [str(p) for p in s.problems[:20]]
        lines += ["```"]
    lines += ["", "## Tokens", ""]
    ts = s.token_stats
    if ts is None:
        lines.append("Not measured (schema-only).")
    else:
        lines += _table(
            ["", "p50", "p90", "p99", "max", "mean"],
            [
                ["prompt tokens", *[ts["prompt"][k] for k in ("p50", "p90", "p99", "max", "mean")]],
                [
                    "response tokens",
                    *[ts["response"][k] for k in ("p50", "p90", "p99", "max", "mean")],
                ],
            ],
        )
        lines += [
            "",
            f"Model `{ts['model']}`, max_seq_len {ts['max_seq_len']}: {ts['over_max_seq_len']} rows "
            f"over ({ts['over_max_seq_len_pct']}%), {ts['response_cut_entirely']} whose response "
            f"would be cut entirely. Policy long_rows={ts['long_rows']}: {ts['dropped']} dropped, "
            f"{ts['truncated']} truncated (response tail only).",
        ]
    frac = s.config.get("eval_fraction", 0)
    if not getattr(s, "split_computed", True):
        lines += ["", "## Split", "", "Not computed (schema-only check without --out-dir)."]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Split",
        "",
        f"{s.n_train} train / {s.n_eval} eval (eval_fraction {frac}), decided by crc32 of each "
        "row's canonical JSON (the line written to train/eval.jsonl): appending, reordering "
        "or re-serialising rows never moves existing ones.",
        "",
        f"Prompts in both train and eval: {s.overlap['count']}.",
    ]
    for ex in s.overlap["examples"]:
        lines.append(
            f"- eval `{s.source}:{ex['eval_line']}` = train `{s.source}:{ex['train_line']}`"
        )
    if s.outputs:
        lines += [
            "",
            "## Outputs",
            "",
            *_table(["file", "sha256"], [[k, f"`{v}`"] for k, v in s.outputs.items()]),
        ]
    return "\n".join(lines) + "\n"
