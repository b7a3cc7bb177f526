"""Cloud settings from the environment and a ``.env`` file (the original design's variables).

Precedence, highest first: explicit arguments (CLI flags, notebook keyword arguments), the
process environment, the ``.env`` file in the current directory, then the defaults below.
``.env.example`` documents every variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from trainer.config import SAMPLE_DATASET, ConfigError

ENV_FILE = ".env"


def _env(name: str, help: str, default: str | None = None, *, flag: str | None = None) -> Any:
    return field(default=default, metadata={"env": name, "help": help, "flag": flag})


@dataclass(frozen=True)
class Settings:
    """Where and how pipelines are submitted; every field maps to one environment variable."""

    project_id: str | None = _env("PROJECT_ID", "Google Cloud project ID.", flag="--project")
    region: str = _env("REGION", "Vertex AI region (also the bucket location).", "us-central1")
    bucket_name: str | None = _env(
        "BUCKET_NAME",
        "GCS bucket (name or gs://name) for staging, pipeline root and runs.",
        flag="--bucket",
    )
    local_data_path: str = _env(
        "LOCAL_DATA_PATH",
        "Dataset to train on: a local JSONL/JSON file (staged to GCS) or a gs:// URI.",
        SAMPLE_DATASET,
    )
    model_name: str | None = _env(
        "MODEL_NAME", "Base model (Hugging Face id, gs:// dir); empty: the pipeline's default."
    )
    accelerator: str = _env("ACCELERATOR", "GPU for train/evaluate: L4, T4 or none.", "L4")
    service_account: str | None = _env(
        "SERVICE_ACCOUNT",
        "Vertex: the GCP service account e-mail runs execute as; KFP: the Kubernetes service account.",
    )
    vertex_api_endpoint: str | None = _env(
        "VERTEX_API_ENDPOINT",
        "Vertex API endpoint URL for regional/private endpoints (default: <region>-aiplatform.googleapis.com).",
    )
    vertex_experiment: str | None = _env(
        "VERTEX_EXPERIMENT", "Vertex AI Experiment to attach runs to (optional)."
    )
    kfp_host: str | None = _env(
        "KFP_HOST",
        "Kubeflow Pipelines API URL, e.g. http://localhost:8080 after port-forward.",
        flag="--host",
    )
    kfp_namespace: str | None = _env(
        "KFP_NAMESPACE", "Kubernetes namespace of a multi-user Kubeflow (profile namespace)."
    )
    kfp_experiment: str = _env("KFP_EXPERIMENT", "KFP experiment name for runs.", "llmft")
    image_repo: str | None = _env(
        "LLMFT_IMAGE_REPO",
        "Registry path of the llmft images, e.g. us-central1-docker.pkg.dev/PROJECT/llmft.",
    )
    image_tag: str | None = _env(
        "LLMFT_IMAGE_TAG", "Tag of the llmft images compiled into the pipeline.", flag="--image-tag"
    )

    @property
    def bucket_uri(self) -> str | None:
        """``gs://<bucket>`` (without trailing slash), or None when no bucket is configured."""
        if not self.bucket_name:
            return None
        name = self.bucket_name.removeprefix("gs://").strip("/")
        return f"gs://{name}"

    def require(self, *names: str) -> None:
        """Raise ``SettingsError`` naming the flag and variable of each missing field."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            meta = {f.name: f.metadata for f in fields(Settings)}
            parts = [
                f"{meta[n]['flag'] or '--' + n.replace('_', '-')} / {meta[n]['env']}"
                for n in missing
            ]
            raise SettingsError(
                "missing " + ", ".join(parts) + " (set the flag, the environment variable or .env)"
            )


class SettingsError(ConfigError):
    """A required setting is missing or malformed (a usage error, exit code 2)."""


def env_name(field_name: str) -> str:
    """Environment variable behind a ``Settings`` field."""
    return next(f.metadata["env"] for f in fields(Settings) if f.name == field_name)


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a ``.env`` file: ``KEY=VALUE`` lines, ``export`` prefixes, quotes and ``#`` comments.

    Args:
        path: The file; a missing file gives an empty mapping.

    Returns:
        The variables in file order.

    Raises:
        SettingsError: On a line that is not ``KEY=VALUE`` (names the file and line).
    """
    p = Path(path)
    if not p.is_file():
        return {}
    out: dict[str, str] = {}
    for lineno, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise SettingsError(f"{p}:{lineno}: expected KEY=VALUE, got {raw.strip()!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    return out


def load_settings(env_file: str | os.PathLike[str] | None = ENV_FILE, **overrides: Any) -> Settings:
    """Build ``Settings`` from defaults, ``env_file``, the environment and ``overrides``.

    Args:
        env_file: The ``.env`` file to read (None: none).
        **overrides: Field values that win over everything; ``None`` values are ignored so CLI
            flags that were not given fall through to the environment.

    Returns:
        The merged settings.
    """
    file_vars = read_env_file(env_file) if env_file else {}
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = f.metadata["env"]
        raw = os.environ.get(name, file_vars.get(name))
        if raw is not None and raw.strip() != "":
            values[f.name] = raw.strip()
    unknown = set(overrides) - {f.name for f in fields(Settings)}
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(Settings(), **values)
