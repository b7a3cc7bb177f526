"""The Hugging Face hub token of a run, from the environment or from Secret Manager.

A gated model's token never travels as a pipeline parameter (parameters are stored in the
pipeline spec and shown in the UI). The compiled pipeline puts it on the upload task instead:

- KFP on GKE: a Kubernetes Secret mounted as the ``HF_TOKEN`` environment variable;
- Vertex AI (no Kubernetes Secrets there): ``HF_TOKEN_SECRET`` holds a Secret Manager
  version name (``projects/P/secrets/S/versions/latest``) that ``hub_token`` reads at run
  time as the run's service account, over REST with google-auth (already installed with
  google-cloud-storage, so no new dependency).

The value is returned, never logged, and never part of an error message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re

TOKEN_ENV = "HF_TOKEN"
"""Holds the token itself (a Kubernetes Secret on GKE, or the user's shell locally)."""
SECRET_ENV = "HF_TOKEN_SECRET"
"""Holds a Secret Manager version name whose value is the token."""
ENDPOINT_ENV = "LLMFT_SECRETMANAGER_ENDPOINT"
"""Overrides the Secret Manager endpoint (tests, private endpoints)."""
DEFAULT_ENDPOINT = "https://secretmanager.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
ACCESSOR_ROLE = "roles/secretmanager.secretAccessor"
TIMEOUT_S = 30.0

_SECRET_RE = re.compile(
    r"projects/(?P<project>[A-Za-z0-9][A-Za-z0-9.:-]{0,61}[A-Za-z0-9])"
    r"/secrets/(?P<secret>[A-Za-z0-9_-]{1,255})"
    r"(?:/versions/(?P<version>latest|[1-9][0-9]*))?"
)


class SecretError(RuntimeError):
    """A secret could not be read (one line naming the secret; never its value)."""


def secret_version_name(name: str) -> str:
    """Check a Secret Manager name and return its version form.

    Args:
        name: ``projects/P/secrets/S`` (the latest version is meant) or
            ``projects/P/secrets/S/versions/V`` (V: ``latest`` or a version number).

    Returns:
        ``projects/P/secrets/S/versions/V``.

    Raises:
        ValueError: Not a Secret Manager secret or version name.
    """
    m = _SECRET_RE.fullmatch(name.strip())
    if not m:
        raise ValueError(
            f"{name!r} is not a Secret Manager name: expected "
            "projects/PROJECT/secrets/NAME[/versions/VERSION]"
        )
    version = m["version"] or "latest"
    return f"projects/{m['project']}/secrets/{m['secret']}/versions/{version}"


def hub_token() -> str | None:
    """The hub token for this process, or None when none is configured.

    ``HF_TOKEN`` wins when set (a Kubernetes Secret, or the user's own shell); otherwise
    ``HF_TOKEN_SECRET`` names a Secret Manager version to read. Public models need neither.

    Returns:
        The token, or None.

    Raises:
        SecretError: ``HF_TOKEN_SECRET`` is set but its value cannot be read.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    name = os.environ.get(SECRET_ENV, "").strip()
    if not name:
        return None
    return access_secret(name)


def access_secret(name: str, *, endpoint: str | None = None, timeout: float = TIMEOUT_S) -> str:
    """Read a secret version's value from Secret Manager as the default credentials.

    Args:
        name: ``projects/P/secrets/S[/versions/V]`` (see ``secret_version_name``).
        endpoint: API root (default ``LLMFT_SECRETMANAGER_ENDPOINT`` or the public endpoint).
        timeout: Seconds for the request.

    Returns:
        The value as text, surrounding whitespace removed (``echo`` adds a newline).

    Raises:
        SecretError: Bad name, no credentials, network failure, denied, missing or empty;
            the message names the secret and, for a denial, the role to grant.
    """
    try:
        version = secret_version_name(name)
    except ValueError as exc:
        raise SecretError(f"{SECRET_ENV}: {exc}") from None
    root = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
    session = _session(version)
    import requests
    from google.auth.exceptions import GoogleAuthError

    try:
        resp = session.get(f"{root}/v1/{version}:access", timeout=timeout)
    except requests.RequestException as exc:
        raise SecretError(
            f"cannot reach Secret Manager for {version}: {_first_line(exc)}"
        ) from None
    except GoogleAuthError as exc:
        # Token refresh failed (expired key, metadata server down, a 401 retried).
        raise SecretError(
            f"Google credentials failed reading secret {version}: {_first_line(exc)}"
        ) from None
    if resp.status_code != 200:
        raise SecretError(_http_error(version, resp.status_code, resp.text))
    try:
        data = json.loads(resp.text)["payload"]["data"]
        value = base64.b64decode(data, validate=True).decode("utf-8").strip()
    except (ValueError, KeyError, TypeError, binascii.Error):
        # No detail from the body: it may hold the value.
        raise SecretError(f"secret {version}: unexpected response from Secret Manager") from None
    if not value:
        raise SecretError(f"secret {version} is empty")
    return value


def _session(version: str):  # -> google.auth.transport.requests.AuthorizedSession
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, _ = google.auth.default(scopes=list(SCOPES))
    except DefaultCredentialsError as exc:
        raise SecretError(
            f"cannot read secret {version}: no Google credentials ({_first_line(exc)})"
        ) from None
    return AuthorizedSession(credentials)


def _http_error(version: str, status: int, body: str) -> str:
    if status == 403:
        return (
            f"permission denied reading secret {version}: grant the run's service account "
            f"{ACCESSOR_ROLE} on that secret (llmft gcp-setup --hf-token-secret NAME does)"
        )
    if status == 404:
        return (
            f"secret {version} not found: create it and add a version "
            "(gcloud secrets versions add NAME --data-file=-)"
        )
    if status == 401:
        return f"Secret Manager rejected the credentials reading secret {version} (HTTP 401)"
    detail = ""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        detail = str(json.loads(body)["error"]["message"])
    return f"reading secret {version} failed: HTTP {status}" + (
        f": {_first_line(detail)}" if detail else ""
    )


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
