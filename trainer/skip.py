"""Skip-if-unchanged: has the last successful run already trained on exactly this dataset?

A scheduled run with ``skip_if_unchanged`` compares the sha256 of its input dataset with the
dataset sha256 recorded in ``manifest.json`` of the newest run folder under
``<output_root>/experiments/`` whose ``status.txt`` starts with ``SUCCESS``. Equal hashes mean
nothing new to learn: the run ends early with status ``SKIPPED``. Failed and skipped runs are
passed over, so a failure never blocks a retry on the same data; a run folder without a
manifest or without a recorded hash is passed over too (it cannot prove anything).
"""

from __future__ import annotations

import json
from typing import Any

EXPERIMENTS_DIR = "experiments"
STATUS_FILE = "status.txt"
MANIFEST_FILE = "manifest.json"
SUCCESS = "SUCCESS"
SKIPPED = "SKIPPED"


def manifest_dataset_sha(manifest: dict[str, Any]) -> str | None:
    """The input dataset's sha256 recorded in a run manifest, if any.

    Accepts ``{"dataset": {"sha256": ...}}`` and a flat ``dataset_sha256`` key.
    """
    dataset = manifest.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("sha256"), str):
        return dataset["sha256"]
    flat = manifest.get("dataset_sha256")
    return flat if isinstance(flat, str) and flat else None


def run_folders(output_root: str) -> list[str]:
    """Run folders under ``<output_root>/experiments/`` that have a status.txt, newest first.

    Folder names start with the UTC timestamp (``finetune_job_%Y%m%d_%H%M%S``), so the reverse
    lexical order of names is newest first.
    """
    from trainer import storage

    base = storage.join(output_root, EXPERIMENTS_DIR)
    suffix = "/" + STATUS_FILE
    folders = set()
    try:
        files = storage.list_files(base)
    except FileNotFoundError:  # no experiments/ yet: the first run
        return []
    for uri in files:
        norm = uri.replace("\\", "/")
        if norm.endswith(suffix):
            rel = norm[: -len(suffix)]
            # Only direct children of experiments/ are run folders.
            if rel.rstrip("/").rsplit("/", 1)[0].endswith(EXPERIMENTS_DIR):
                folders.add(uri[: -len(suffix)])
    return sorted(folders, key=lambda f: f.rstrip("/").rsplit("/", 1)[-1], reverse=True)


def last_success(output_root: str) -> tuple[str, str] | None:
    """The newest SUCCESS run under ``output_root`` that recorded its dataset hash.

    Args:
        output_root: Local directory or ``gs://bucket[/prefix]`` holding ``experiments/``.

    Returns:
        ``(run_folder, dataset_sha256)``, or None when no successful run recorded a hash.
    """
    from trainer import storage

    for folder in run_folders(output_root):
        status = storage.read_text(storage.join(folder, STATUS_FILE)).split()
        if not status or status[0].upper() != SUCCESS:
            continue  # FAILED and SKIPPED runs are never a reference
        manifest_uri = storage.join(folder, MANIFEST_FILE)
        if not storage.exists(manifest_uri):
            continue
        try:
            manifest = json.loads(storage.read_text(manifest_uri))
        except ValueError:
            continue
        sha = manifest_dataset_sha(manifest) if isinstance(manifest, dict) else None
        if sha:
            return folder, sha
    return None


def previous_success_sha(output_root: str) -> str | None:
    """Dataset sha256 of the newest SUCCESS run under ``output_root`` (None if there is none).

    Args:
        output_root: Local directory or ``gs://bucket[/prefix]`` holding ``experiments/``.

    Returns:
        The recorded hash, or None when no successful run recorded one.
    """
    found = last_success(output_root)
    return found[1] if found else None


def skip_reason(output_root: str, dataset_sha256: str) -> str | None:
    """Why a run on data with this hash should be skipped, or None when it should run.

    Args:
        output_root: Where the run folders live (local or ``gs://``).
        dataset_sha256: sha256 of this run's input dataset.

    Returns:
        ``"dataset sha256 <sha> equals run <folder>'s, the last SUCCESS"``, or None.
    """
    if not dataset_sha256:
        return None
    found = last_success(output_root)
    if found is None or found[1] != dataset_sha256:
        return None
    name = found[0].rstrip("/").rsplit("/", 1)[-1]
    return f"dataset sha256 {dataset_sha256} equals run {name}'s, the last SUCCESS"


def should_skip(output_root: str, dataset_sha256: str) -> bool:
    """Whether a run on data with this hash would repeat the last successful run.

    Args:
        output_root: Where the run folders live (local or ``gs://``).
        dataset_sha256: sha256 of this run's input dataset (as validate computes it).

    Returns:
        True when the newest successful run recorded the same dataset hash.
    """
    return skip_reason(output_root, dataset_sha256) is not None
