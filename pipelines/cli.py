"""The ``llmft`` command line.

Each group of commands lives in its own ``cli_*.py`` module with a ``register(app)`` function;
modules import heavy libraries (torch, transformers, kfp, aiplatform) inside the command
bodies only.

Start-up is kept short for the command actually run: :func:`main` registers only the module
that owns the command named on the command line (all of them for ``--help``, no command or an
unknown name), and ``llmft validate`` with well-formed options runs without building the typer
app at all (see :func:`pipelines.cli_data.fast_validate`: typer 0.29 builds a pydantic adapter
per option, ~0.15 s before the first byte is read). ``from pipelines.cli import app`` gives the
fully registered app (built on first use).
"""

from __future__ import annotations

import sys
from typing import Any

_MODULES = ("cli_data", "cli_train", "cli_eval", "cli_plan", "cli_pipeline", "cli_cloud")

_OWNER = {
    "validate": "cli_data",
    "convert": "cli_data",
    "model": "cli_data",
    "train": "cli_train",
    "evaluate": "cli_eval",
    "plan": "cli_plan",
    "compile": "cli_pipeline",
    "run": "cli_pipeline",
    "submit": "cli_cloud",
    "schedule": "cli_cloud",
    "status": "cli_cloud",
    "gcp-setup": "cli_cloud",
}
"""Which module registers each top-level command. Only a start-up shortcut: a command missing
here (or moved) still works, because :func:`build_app` then registers every module."""

HELP = "LoRA fine-tuning of open LLMs as a Kubeflow pipeline (Vertex AI, KFP on GKE, or local)."


def _names(app: Any) -> set[str]:
    names = {c.name for c in app.registered_commands}
    return names | {g.name for g in app.registered_groups}


def build_app(command: str | None = None) -> Any:
    """Build the typer app, registering only what ``command`` needs when it is known.

    Args:
        command: The first command-line word (``validate``, ``run``, ...); ``None`` or an
            unknown name registers every module (``--help`` lists every command).

    Returns:
        The ``typer.Typer`` app.
    """
    import importlib

    import typer

    app = typer.Typer(
        name="llmft",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    # A callback keeps the app a command group even when one module registers a single
    # command (typer would otherwise run that command as the whole program).
    @app.callback()
    def _root() -> None:
        pass

    owner = _OWNER.get(command or "")
    order = [owner, *(m for m in _MODULES if m != owner)] if owner else list(_MODULES)
    for name in order:
        try:
            mod = importlib.import_module(f"pipelines.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pipelines.{name}":
                raise
            continue
        mod.register(app)
        if owner and command in _names(app):
            break
    return app


def __getattr__(name: str) -> Any:
    # PEP 562: ``from pipelines.cli import app`` builds the full app on first use only.
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point."""
    argv = sys.argv[1:]
    command = argv[0] if argv else None
    if command == "validate":
        from pipelines.cli_data import fast_validate

        code = fast_validate(argv[1:])
        if code is not None:
            sys.exit(code)
    sys.exit(build_app(command)())
