"""``llmft train``: LoRA fine-tuning from the command line.

Every ``TrainConfig`` field is a flag (``--lora-r``, ``--max-steps``, ...) generated from the
dataclass with its help text, so a new knob appears here without editing this file.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import typer

EXIT_PREEMPTED = 143
"""128 + SIGTERM: what a process killed by SIGTERM reports; orchestrators retry it."""

_FIXED = ("data", "eval_data", "output", "checkpoint_dir", "num_processes", "debug")


def flag_name(field_name: str) -> str:
    """``max_steps`` -> ``--max-steps``."""
    return "--" + field_name.replace("_", "-")


def config_parameters(cls: type) -> list[inspect.Parameter]:
    """One keyword parameter per dataclass field, defaulting to ``None`` (= not given).

    ``None`` defaults let the command tell given flags from defaults (``--epochs`` alone
    switches ``max_steps`` to 0); the real default is shown in the help text.
    """
    params = []
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    types = {"int": int, "float": float, "str": str, "bool": bool}
    for f in dataclasses.fields(cls):
        typ = types[hints[f.name] if isinstance(hints[f.name], str) else hints[f.name].__name__]
        help_text = f"{f.metadata.get('help', '')} [default: {f.default}]"
        decls = [flag_name(f.name)]
        if typ is bool:
            decls = [f"{flag_name(f.name)}/--no-{f.name.replace('_', '-')}"]
        opt = typer.Option(None, *decls, help=help_text, show_default=False)
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ | None
            )
        )
    return params


def build_config(given: dict[str, Any]) -> Any:
    """``TrainConfig`` from the flags the user gave (``None`` = not given)."""
    from trainer.config import TrainConfig

    values = {k: v for k, v in given.items() if v is not None}
    if "epochs" in values and "max_steps" not in values:
        values["max_steps"] = 0
    return TrainConfig(**values)


def _train_command(**kwargs: Any) -> None:
    from pipelines.cli_common import friendly_errors

    debug = bool(kwargs.pop("debug", False))
    fixed = {k: kwargs.pop(k) for k in _FIXED if k in kwargs}
    with friendly_errors(debug):
        cfg = build_config(kwargs)
        _run(cfg, fixed)


def _quiet_libraries() -> None:
    """Keep the terminal to our progress bar and log lines (no per-load tqdm bars)."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _run(cfg: Any, fixed: dict[str, Any]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from pipelines.cli_common import console, err_console
    from trainer.checkpoint import Preempted
    from trainer.launch import train_processes

    _quiet_libraries()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("training", total=None)

        def log(line: str) -> None:
            bar.console.print(line, highlight=False, soft_wrap=True)

        def progress(step: int, total: int) -> None:
            bar.update(task, completed=step, total=total)

        try:
            metrics = train_processes(
                int(fixed.get("num_processes") or 1),
                cfg,
                fixed["data"],
                fixed.get("eval_data"),
                fixed["output"],
                fixed.get("checkpoint_dir"),
                log=log,
                progress=progress,
            )
        except Preempted as exc:
            err_console.print(f"preempted: {exc}; rerun the same command to resume")
            raise SystemExit(EXIT_PREEMPTED) from None
    ev = metrics.get("eval_loss")
    console.print(
        f"wrote {fixed['output']}: {metrics['steps']} steps, final loss {metrics['final_loss']:.4f}"
        + (f", eval loss {ev:.4f}" if ev is not None else "")
        + f", {metrics['supervised_tokens_per_s']:.0f} supervised tok/s",
        highlight=False,
    )


def _signature() -> inspect.Signature:
    from trainer.config import TrainConfig

    kw = inspect.Parameter.KEYWORD_ONLY
    fixed = [
        inspect.Parameter(
            "data",
            kw,
            annotation=str,
            default=typer.Option(
                ..., "--data", help="Training JSONL (llmft validate's train.jsonl)."
            ),
        ),
        inspect.Parameter(
            "eval_data",
            kw,
            annotation=str | None,
            default=typer.Option(None, "--eval-data", help="Held-out JSONL for the eval loss."),
        ),
        inspect.Parameter(
            "output",
            kw,
            annotation=str,
            default=typer.Option(..., "--output", help="Output directory (local or gs://)."),
        ),
        inspect.Parameter(
            "checkpoint_dir",
            kw,
            annotation=str | None,
            default=typer.Option(
                None,
                "--checkpoint-dir",
                help="Checkpoint location (local or gs://); a rerun resumes from its latest "
                "complete checkpoint.",
            ),
        ),
        inspect.Parameter(
            "num_processes",
            kw,
            annotation=int,
            default=typer.Option(
                1,
                "--num-processes",
                min=1,
                help="Data-parallel processes (one per GPU; gloo on the CPU). N processes "
                "with --batch-size b step like one with N x b.",
            ),
        ),
        inspect.Parameter(
            "debug",
            kw,
            annotation=bool,
            default=typer.Option(False, "--debug", help="Show tracebacks."),
        ),
    ]
    return inspect.Signature([*fixed, *config_parameters(TrainConfig)])


def register(app: typer.Typer) -> None:
    """Add ``llmft train`` to the app."""

    def train_cmd(**kwargs: Any) -> None:
        _train_command(**kwargs)

    train_cmd.__signature__ = _signature()  # type: ignore[attr-defined]
    train_cmd.__doc__ = (
        "Train a LoRA adapter on validated JSONL (default model: the built-in tiny one). "
        "Exits 143 after saving a checkpoint when it receives SIGTERM."
    )
    app.command("train")(train_cmd)
