"""``llmft evaluate``: base vs tuned on the eval split, with the gate as the exit code.

Exit codes: 0 the gate passed (or is disabled), 1 the gate failed or the input is invalid,
2 a usage error (bad option value, missing file). Every ``EvalConfig`` field is an option
(``--max-new-tokens`` for ``max_new_tokens``), built from the dataclass with its help text, so
a new knob in ``trainer/config.py`` appears here without an edit.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import typer

from pipelines.cli_common import EXIT_INVALID, EXIT_OK, console, err_console, friendly_errors
from trainer.config import TINY_MODEL, EvalConfig, TrainConfig, field_defaults, field_help

# Options that are not EvalConfig fields: (name, default, flag, help).
_FIXED: tuple[tuple[str, Any, str, str], ...] = (
    (
        "adapter",
        ...,
        "--adapter",
        "LoRA adapter directory (local or gs://), e.g. `llmft train`'s output.",
    ),
    ("data", ..., "--data", "Eval JSONL (the eval.jsonl that `llmft validate --out-dir` writes)."),
    ("output", ..., "--output", "Directory (local or gs://) for metrics.json and eval_report.md."),
    ("model", TINY_MODEL, "--model", field_help(TrainConfig)["model"]),
    ("system_prompt", "", "--system-prompt", field_help(TrainConfig)["system_prompt"]),
    (
        "max_seq_len",
        field_defaults(TrainConfig)["max_seq_len"],
        "--max-seq-len",
        "Maximum tokens per row for the eval loss (use the training value).",
    ),
    (
        "quantization",
        field_defaults(TrainConfig)["quantization"],
        "--quantization",
        field_help(TrainConfig)["quantization"] + " Use the training value.",
    ),
)


def option_name(field_name: str) -> str:
    """The CLI flag of a config field: ``max_new_tokens`` -> ``--max-new-tokens``."""
    return "--" + field_name.replace("_", "-")


def _parameters() -> list[inspect.Parameter]:
    params = []
    for name, default, flag, help_text in _FIXED:
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(default, flag, help=help_text),
                annotation=type(default) if default is not ... else str,
            )
        )
    for f in dataclasses.fields(EvalConfig):
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    f.default, option_name(f.name), help=f.metadata.get("help", "")
                ),
                annotation=type(f.default),
            )
        )
    params.append(
        inspect.Parameter(
            "debug",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                False, "--debug", help="Show tracebacks instead of one-line errors."
            ),
            annotation=bool,
        )
    )
    return params


def _print_result(result: Any) -> None:
    from rich.table import Table

    from trainer import metrics as M
    from trainer.evaluate import METRIC_ORDER

    base, tuned = result.metrics["base"], result.metrics["tuned"]
    table = Table(title="base vs tuned")
    table.add_column("metric")
    for col in ("base", "tuned", "delta"):
        table.add_column(col, justify="right")
    for name in METRIC_ORDER:
        if name not in base:
            continue
        b, t = base[name], tuned[name]
        delta = t - b
        style = ""
        if name in M.GATE_METRICS and delta:
            better = delta < 0 if name in M.LOWER_IS_BETTER else delta > 0
            style = "green" if better else "red"
        is_float = isinstance(b, float) or isinstance(t, float)
        shown = f"{delta:+.4f}" if is_float else f"{delta:+d}"
        table.add_row(
            name,
            f"{b:.4f}" if is_float else str(b),
            f"{t:.4f}" if is_float else str(t),
            f"[{style}]{shown}[/]" if style else shown,
        )
    console.print(table)
    g = result.gate
    colour = "green" if g["passed"] else "red"
    verdict = "PASSED" if g["passed"] else "FAILED"
    console.print(f"[bold {colour}]gate {verdict}[/]: {g['reason']}", markup=True, highlight=False)


def _evaluate_command(**kwargs: Any) -> None:
    debug = kwargs.pop("debug")
    with friendly_errors(debug):
        from trainer.evaluate import evaluate

        cfg_names = {f.name for f in dataclasses.fields(EvalConfig)}
        cfg = EvalConfig(**{k: v for k, v in kwargs.items() if k in cfg_names})
        result = evaluate(
            cfg,
            kwargs["model"],
            kwargs["adapter"],
            kwargs["data"],
            kwargs["output"],
            system_prompt=kwargs["system_prompt"],
            max_seq_len=kwargs["max_seq_len"],
            quantization=kwargs["quantization"],
            log=lambda line: err_console.print(line, markup=False, highlight=False),
        )
        _print_result(result)
    raise SystemExit(EXIT_OK if result.passed else EXIT_INVALID)


_evaluate_command.__signature__ = inspect.Signature(_parameters())  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    """Add ``llmft evaluate`` to ``app``."""
    app.command(
        "evaluate",
        help=(
            "Evaluate base vs tuned (base + LoRA adapter) on an eval JSONL: eval loss, "
            "perplexity, exact match, ROUGE-L, BLEU; writes metrics.json and eval_report.md. "
            "Exit code 0 when the gate passes, 1 when it fails or the input is invalid, 2 on "
            "usage errors."
        ),
    )(_evaluate_command)
