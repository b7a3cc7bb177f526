"""Data commands: ``llmft validate``, ``llmft convert`` and ``llmft model tiny``.

The ``validate`` options are generated from :class:`trainer.config.ValidateConfig` (name, type,
default and help of each field), so a new knob appears here without editing this file.
Heavy libraries are imported inside the commands; ``validate --schema-only`` never imports
torch or transformers.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from typing import Any

import typer

from pipelines.cli_common import EXIT_INVALID, EXIT_OK, console, err_console, friendly_errors
from trainer.config import ValidateConfig

MAX_PRINTED_PROBLEMS = 50
"""Problems printed one per line before the rest are only counted."""

_TYPES = {"float": float, "int": int, "str": str, "bool": bool}


def config_options(cls: type) -> list[inspect.Parameter]:
    """One keyword-only typer option per dataclass field (``--field-name``), help from metadata."""
    params = []
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        annotation = _TYPES[f.type] if isinstance(f.type, str) else f.type
        decls = [f"{flag}/--no-{flag[2:]}"] if annotation is bool else [flag]
        option = typer.Option(f.default, *decls, help=f.metadata.get("help", ""))
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
            )
        )
    return params


def _print_summary(s: Any) -> None:
    from rich.table import Table

    verdict = "[bold green]VALID[/]" if s.ok else "[bold red]INVALID[/]"
    table = Table(title=f"{s.source}: {verdict}", show_header=True)
    for col in ("lines read", "accepted", "rejected", "blank", "train", "eval", "warnings"):
        table.add_column(col, justify="right")
    table.add_row(
        *map(str, (s.lines_read, s.accepted, s.rejected, s.blank, s.n_train, s.n_eval, s.warnings))
    )
    console.print(table)
    if s.counts_by_code:
        codes = Table(show_header=True)
        codes.add_column("code")
        codes.add_column("count", justify="right")
        codes.add_column("first lines")
        for code, n in s.counts_by_code.items():
            codes.add_row(code, str(n), ", ".join(map(str, s.examples_by_code.get(code, []))))
        console.print(codes)
    ts = s.token_stats
    if ts:
        p, r = ts["prompt"], ts["response"]
        console.print(
            f"tokens ({ts['model']}): prompt p50/p90/p99/max {p['p50']}/{p['p90']}/{p['p99']}/{p['max']}, "
            f"response {r['p50']}/{r['p90']}/{r['p99']}/{r['max']}; {ts['over_max_seq_len']} rows "
            f"({ts['over_max_seq_len_pct']}%) over max_seq_len {ts['max_seq_len']}, "
            f"{ts['response_cut_entirely']} with the response cut entirely; long_rows={ts['long_rows']}: "
            f"{ts['dropped']} dropped, {ts['truncated']} truncated"
        )
    if s.overlap["count"]:
        console.print(f"prompts in both train and eval: {s.overlap['count']}")
    console.print(
        f"nothing lost: {s.lines_read} read = {s.accepted} accepted + {s.rejected} rejected "
        f"+ {s.blank} blank"
    )
    for reason in s.reasons:
        console.print(f"[red]invalid:[/] {reason}")


def _validate(
    src: str,
    *,
    out_dir: str | None,
    json_out: bool,
    debug: bool,
    values: dict[str, Any],
) -> None:
    with friendly_errors(debug):
        cfg = ValidateConfig(**values)
        from trainer.validate import validate_file

        printed = 0
        hidden = 0
        stream = sys.stderr if json_out else sys.stdout

        def on_problem(p: Any) -> None:
            nonlocal printed, hidden
            if printed < MAX_PRINTED_PROBLEMS:
                print(str(p), file=stream)
                printed += 1
            else:
                hidden += 1

        progress_cm, on_progress = _progress(json_out)
        with progress_cm:
            summary = validate_file(
                src, cfg, out_dir, on_problem=on_problem, on_progress=on_progress
            )
        if hidden:
            print(f"... and {hidden} more problem(s) (see report.md / --json)", file=stream)
        if json_out:
            sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
        else:
            _print_summary(summary)
            if out_dir:
                console.print(
                    f"wrote train.jsonl, eval.jsonl, rejects.jsonl, report.md, summary.json to {out_dir}"
                )
    raise typer.Exit(EXIT_OK if summary.ok else EXIT_INVALID)


def _progress(quiet: bool) -> tuple[Any, Any]:
    """A rich progress bar that appears only once a file takes more than a moment."""
    import contextlib
    import time

    if quiet or not err_console.is_terminal:
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "validating",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    state: dict[str, Any] = {"task": None, "t0": time.monotonic()}

    def update(done: int, total: int | None) -> None:
        if state["task"] is None:
            if time.monotonic() - state["t0"] < 1.0:
                return
            bar.start()
            state["task"] = bar.add_task("validate", total=total)
        bar.update(state["task"], completed=done)

    class _Stop:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: Any) -> None:
            if state["task"] is not None:
                bar.stop()

    return _Stop(), update


def _build_validate() -> Any:
    fields = {f.name for f in dataclasses.fields(ValidateConfig)}

    def validate(src: str, out_dir: str | None, json_out: bool, debug: bool, **values: Any) -> None:
        _validate(
            src,
            out_dir=out_dir,
            json_out=json_out,
            debug=debug,
            values={k: values[k] for k in fields},
        )

    params = [
        inspect.Parameter(
            "src",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=typer.Argument(..., help="JSONL file: local path, file:// or gs:// URI."),
            annotation=str,
        ),
        inspect.Parameter(
            "out_dir",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                "--out-dir",
                help="Write train.jsonl, eval.jsonl, rejects.jsonl, report.md, summary.json here.",
            ),
            annotation=str | None,
        ),
        inspect.Parameter(
            "json_out",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
            annotation=bool,
        ),
        inspect.Parameter(
            "debug",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, "--debug", help="Show tracebacks."),
            annotation=bool,
        ),
        *config_options(ValidateConfig),
    ]
    validate.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    validate.__doc__ = (
        "Check every line of an Alpaca JSONL file, split it and report (exit 0 valid, 1 invalid, "
        "2 usage error)."
    )
    return validate


def convert(
    src: str = typer.Argument(..., help="Alpaca JSON array file (.json)."),
    out: str = typer.Option(..., "-o", "--out", help="JSONL file to write."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Convert an Alpaca JSON array into JSONL (one object per line)."""
    with friendly_errors(debug):
        from trainer.validate import convert_json_to_jsonl

        n = convert_json_to_jsonl(src, out)
        console.print(f"wrote {n} rows to {out}", soft_wrap=True)


def tiny(
    out: str | None = typer.Option(
        None, "--out", help="Copy the built model here (default: print the cache dir)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the weights and tokenizer."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Build (once, cached) the built-in tiny Qwen2-style model and its tokenizer."""
    with friendly_errors(debug):
        import shutil
        from pathlib import Path

        from trainer.tiny_model import tiny_model_dir

        cached = tiny_model_dir(seed)
        if out is None:
            console.print(cached, soft_wrap=True)
            return
        dest = Path(out)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(cached, dest, dirs_exist_ok=True)
        console.print(f"tiny model (seed {seed}) in {dest}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``validate``, ``convert`` and ``model tiny`` to the ``llmft`` app."""
    app.command("validate")(_build_validate())
    app.command("convert")(convert)
    model_app = typer.Typer(help="Models: the built-in tiny model.", no_args_is_help=True)
    model_app.command("tiny")(tiny)
    app.add_typer(model_app, name="model")
