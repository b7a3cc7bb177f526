"""Helpers shared by the CLI modules: one-line errors, exit codes, the --debug switch."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from rich.console import Console

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def debug_enabled() -> bool:
    """Whether tracebacks should be shown (``--debug`` flag or ``LLMFT_DEBUG=1``)."""
    return os.environ.get("LLMFT_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = EXIT_INVALID) -> None:
    """Print one clear error line and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise SystemExit(code)


@contextlib.contextmanager
def friendly_errors(debug: bool = False) -> Iterator[None]:
    """Turn exceptions into one error line (usage errors exit 2, others 1) unless debugging."""
    from trainer.config import ConfigError

    if debug:
        os.environ["LLMFT_DEBUG"] = "1"
    try:
        yield
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise SystemExit(130) from None
    except Exception as exc:
        if debug_enabled():
            raise
        code = EXIT_USAGE if isinstance(exc, (ConfigError, FileNotFoundError)) else EXIT_INVALID
        msg = str(exc) or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(code) from None
