"""The ``llmft`` command line.

Each group of commands lives in its own ``cli_*.py`` module with a ``register(app)`` function;
modules import heavy libraries (torch, transformers, kfp, aiplatform) inside the command
bodies only, so ``llmft --help`` and ``llmft validate --schema-only`` start fast.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="llmft",
    help="LoRA fine-tuning of open LLMs as a Kubeflow pipeline (Vertex AI, KFP on GKE, or local).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_MODULES = ("cli_data", "cli_train", "cli_eval", "cli_pipeline", "cli_cloud")


def _register_all() -> None:
    import importlib

    for name in _MODULES:
        try:
            mod = importlib.import_module(f"pipelines.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pipelines.{name}":
                raise
            continue
        mod.register(app)


_register_all()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
