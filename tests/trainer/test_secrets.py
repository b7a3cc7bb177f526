"""The hub token: HF_TOKEN first, else a Secret Manager version read over REST.

Secret Manager is a threaded stdlib HTTP server on loopback that records the real client's
requests (google-auth's ``AuthorizedSession``). ``google.auth.default`` is patched to return
``AnonymousCredentials``: this machine has no Application Default Credentials, and anonymous
credentials add no Authorization header, so the request is otherwise exactly what a run sends.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from trainer import secrets

# Shaped like a hub token but split so secret scanners do not flag the test.
TOKEN = "hf_" + "FAKEtoken" * 3 + "0123"
SECRET = "projects/my-proj-1/secrets/hf-token"
ACCESS_PATH = "/v1/projects/my-proj-1/secrets/hf-token/versions/latest:access"


@dataclass
class StubSecretManager:
    """Answers ``GET /v1/<version>:access`` from ``routes``; records every request."""

    url: str = ""
    routes: dict[str, tuple[int, str]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def payload(self, path: str, value: str) -> None:
        data = base64.b64encode(value.encode()).decode()
        body = {
            "name": path.removeprefix("/v1/").removesuffix(":access"),
            "payload": {"data": data},
        }
        self.routes[path] = (200, json.dumps(body))

    def error(self, path: str, status: int, message: str) -> None:
        body = {"error": {"code": status, "message": message, "status": "X"}}
        self.routes[path] = (status, json.dumps(body))


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubSecretManager]:
    state = StubSecretManager()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.command, self.path))
            status, body = state.routes.get(self.path, (404, '{"error": {"message": "nf"}}'))
            raw = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(secrets.ENDPOINT_ENV, state.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(secrets.TOKEN_ENV, raising=False)
    monkeypatch.delenv(secrets.SECRET_ENV, raising=False)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def adc(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Patch google.auth.default (no ADC here); records the scopes asked for."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    calls: list[Any] = []

    def fake_default(scopes: Any = None, **kw: Any) -> tuple[Any, None]:
        calls.append(scopes)
        return AnonymousCredentials(), None

    monkeypatch.setattr(google.auth, "default", fake_default)
    return calls


def test_reads_the_latest_version_from_secret_manager(
    stub: StubSecretManager, adc: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.payload(ACCESS_PATH, TOKEN + "\n")  # `echo TOKEN | gcloud ... --data-file=-`
    monkeypatch.setenv(secrets.SECRET_ENV, SECRET)
    assert secrets.hub_token() == TOKEN
    assert stub.requests == [("GET", ACCESS_PATH)]
    assert adc == [["https://www.googleapis.com/auth/cloud-platform"]]


def test_an_explicit_version_is_kept(stub: StubSecretManager, adc: list[Any]) -> None:
    path = "/v1/projects/my-proj-1/secrets/hf-token/versions/3:access"
    stub.payload(path, "v3")
    assert secrets.access_secret(SECRET + "/versions/3") == "v3"
    assert stub.requests == [("GET", path)]


def test_hf_token_wins_and_nothing_is_fetched(
    stub: StubSecretManager, adc: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.payload(ACCESS_PATH, "from-secret-manager")
    monkeypatch.setenv(secrets.TOKEN_ENV, TOKEN)
    monkeypatch.setenv(secrets.SECRET_ENV, SECRET)
    assert secrets.hub_token() == TOKEN
    assert stub.requests == [] and adc == []


def test_no_token_configured_is_none(stub: StubSecretManager, adc: list[Any]) -> None:
    assert secrets.hub_token() is None
    assert stub.requests == [] and adc == []


def test_permission_denied_names_the_secret_and_the_role(
    stub: StubSecretManager, adc: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.error(ACCESS_PATH, 403, "Permission 'secretmanager.versions.access' denied")
    monkeypatch.setenv(secrets.SECRET_ENV, SECRET)
    with pytest.raises(secrets.SecretError) as exc:
        secrets.hub_token()
    msg = str(exc.value)
    assert "\n" not in msg
    assert "permission denied" in msg
    assert f"{SECRET}/versions/latest" in msg
    assert "roles/secretmanager.secretAccessor" in msg


@pytest.mark.parametrize(
    ("status", "expected"),
    # 401: google-auth refreshes and retries; anonymous credentials cannot refresh, real
    # ones answer 401 again: either way one line about the credentials.
    [(404, "not found"), (401, "credentials"), (500, "HTTP 500: backend down")],
)
def test_other_http_errors_are_one_line(
    stub: StubSecretManager, adc: list[Any], status: int, expected: str
) -> None:
    stub.error(ACCESS_PATH, status, "backend down\nsecond line")
    with pytest.raises(secrets.SecretError) as exc:
        secrets.access_secret(SECRET)
    msg = str(exc.value)
    assert expected in msg and SECRET in msg and "\n" not in msg


def test_a_malformed_answer_never_echoes_the_body(stub: StubSecretManager, adc: list[Any]) -> None:
    stub.routes[ACCESS_PATH] = (200, json.dumps({"payload": {"data": TOKEN + "!!"}}))
    with pytest.raises(secrets.SecretError, match="unexpected response") as exc:
        secrets.access_secret(SECRET)
    assert TOKEN not in str(exc.value)


def test_empty_secret_is_an_error(stub: StubSecretManager, adc: list[Any]) -> None:
    stub.payload(ACCESS_PATH, "\n")
    with pytest.raises(secrets.SecretError, match="is empty"):
        secrets.access_secret(SECRET)


@pytest.mark.parametrize(
    "name", ["hf-token", "projects/p/secrets/", "projects/p/secrets/s/versions/x", "secrets/s"]
)
def test_bad_names_fail_before_any_request(
    stub: StubSecretManager, adc: list[Any], name: str
) -> None:
    with pytest.raises(secrets.SecretError, match="projects/PROJECT/secrets/NAME"):
        secrets.access_secret(name)
    assert stub.requests == [] and adc == []


def test_no_credentials_is_one_line(
    stub: StubSecretManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    def no_adc(**kw: Any) -> None:
        raise DefaultCredentialsError("Your default credentials were not found.\nTo set up ...")

    monkeypatch.setattr(google.auth, "default", no_adc)
    with pytest.raises(secrets.SecretError) as exc:
        secrets.access_secret(SECRET)
    assert "no Google credentials" in str(exc.value) and "\n" not in str(exc.value)


def test_unreachable_endpoint_is_one_line(adc: list[Any]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(secrets.SecretError, match="cannot reach Secret Manager") as exc:
        secrets.access_secret(SECRET, endpoint=f"http://127.0.0.1:{port}", timeout=5)
    assert "\n" not in str(exc.value)


def test_snapshot_of_a_hub_model_uses_the_secret_manager_token(
    stub: StubSecretManager,
    adc: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """trainer.steps hands the fetched token to the hub client (the hub is unreachable here,
    so the client's first call records the token and stops the step)."""
    import huggingface_hub

    from trainer import steps

    seen: list[Any] = []

    class Stop(Exception):
        pass

    def model_info(self: Any, repo_id: str, token: Any = None, **kw: Any) -> None:
        seen.append((repo_id, token))
        raise Stop

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    stub.payload(ACCESS_PATH, TOKEN)
    monkeypatch.setenv(secrets.SECRET_ENV, SECRET)
    logged: list[str] = []
    with pytest.raises(Stop):
        steps._snapshot_hub_model("org/gated-model", str(tmp_path), log=logged.append)
    assert seen == [("org/gated-model", TOKEN)]
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + "".join(logged)
