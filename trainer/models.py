"""Where a model comes from: the built-in tiny name, a local or gs:// directory, or a hub id."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from trainer.config import TINY_MODEL


def is_tiny(model: str) -> bool:
    """Whether ``model`` names the built-in tiny model (also the default for an empty name)."""
    return model.strip() in ("", TINY_MODEL)


def resolve_model(model: str) -> str:
    """Return something ``from_pretrained`` can load without surprises.

    Args:
        model: ``llmft-tiny`` (or empty), a local directory, ``file://`` or ``/gcs/`` path,
            a ``gs://`` directory (downloaded once into the cache), or a Hugging Face id
            (returned as is; only clusters that reach the hub can load it).

    Returns:
        A local directory, or the hub id unchanged.
    """
    from trainer.tiny_model import cache_root, tiny_model_dir

    if is_tiny(model):
        return tiny_model_dir()
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
