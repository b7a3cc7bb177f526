"""The GCP set-up: least-privilege roles, Workload Identity, dry run, stop on first failure."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from pipelines import gcp_setup as g
from trainer.config import ConfigError

PROJECT, REGION, BUCKET = "my-project-1", "europe-west4", "my-llm-bucket"
SA = f"llmft-pipelines@{PROJECT}.iam.gserviceaccount.com"


def _plan(**kw):
    return g.plan(PROJECT, REGION, BUCKET, **kw)


def _sa_roles(steps) -> list[tuple[str, str]]:
    """(role, scope) of every binding whose member is the dedicated service account."""
    out = []
    for step in steps:
        if f"--member=serviceAccount:{SA}" in step.argv:
            (role,) = [a.split("=", 1)[1] for a in step.argv if a.startswith("--role=")]
            cmd = step.argv[: step.argv.index("add-iam-policy-binding") + 2]
            out.append((role, " ".join(cmd[1:])))
    return out


def test_service_account_gets_exactly_the_least_privilege_roles():
    roles = _sa_roles(_plan())
    assert sorted(roles) == sorted(
        [
            # object admin on THIS bucket only, not on the project
            ("roles/storage.objectAdmin", f"storage buckets add-iam-policy-binding gs://{BUCKET}"),
            ("roles/aiplatform.user", f"projects add-iam-policy-binding {PROJECT}"),
            # image pulls from the llmft repository only
            (
                "roles/artifactregistry.reader",
                "artifacts repositories add-iam-policy-binding llmft",
            ),
        ]
    )


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"gke_cluster": "c1", "submitter": "user:me@example.com"},
        {"hf_token_secret": "hf-token"},
    ],
)
def test_never_owner_or_editor_and_no_project_wide_storage(kw):
    steps = _plan(**kw)
    text = "\n".join(s.shell() for s in steps)
    for role in ("roles/owner", "roles/editor", "roles/storage.admin", "roles/secretmanager.admin"):
        assert role not in text
    for role, scope in g.granted_roles(steps):
        if role.startswith("roles/storage."):
            assert scope == f"storage buckets gs://{BUCKET}"
        if scope.startswith("projects "):
            assert role == "roles/aiplatform.user"
        if role.startswith("roles/secretmanager."):
            # the accessor role on the named secret only, never on the project
            assert (role, scope) == ("roles/secretmanager.secretAccessor", "secrets hf-token")


def test_hub_token_secret_created_and_readable_by_the_service_account_only():
    base = _plan()
    steps = _plan(hf_token_secret="hf-token")
    assert sorted(_sa_roles(steps)) == sorted(
        [
            *_sa_roles(base),
            ("roles/secretmanager.secretAccessor", "secrets add-iam-policy-binding hf-token"),
        ]
    )
    text = [s.shell() for s in steps]
    create = [t for t in text if t.startswith("gcloud secrets create")]
    assert create == [
        f"gcloud secrets create hf-token --replication-policy=automatic --project {PROJECT}"
    ]
    (create_step,) = [s for s in steps if s.argv[:3] == ("gcloud", "secrets", "create")]
    assert create_step.exists_ok  # re-running the set-up keeps the secret and its versions
    # created before the binding on it; the value itself is never part of any command
    assert text.index(create[0]) < next(i for i, t in enumerate(text) if "secretAccessor" in t)
    assert not any("versions add" in t or "--data" in t for t in text)
    # the API is enabled only when a secret is asked for
    assert "secretmanager.googleapis.com" in text[0]
    assert "secretmanager" not in "\n".join(s.shell() for s in base)


def test_hub_token_secret_resource_name_and_bad_names():
    full = _plan(hf_token_secret=f"projects/{PROJECT}/secrets/hf-token")
    assert [s.argv for s in full] == [s.argv for s in _plan(hf_token_secret="hf-token")]
    for bad in ("hf token", "projects/other-project/secrets/hf-token", "a/b", ""):
        with pytest.raises(ConfigError):
            g.secret_id(PROJECT, bad)
    with pytest.raises(ConfigError, match="other-project"):
        _plan(hf_token_secret="projects/other-project/secrets/hf-token")


def test_cli_hub_token_secret_prints_how_to_add_the_value(monkeypatch):
    from pipelines.cli import app

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("dry run ran something"))
    res = CliRunner().invoke(
        app,
        ["gcp-setup", "--project", PROJECT, "--region", REGION, "--bucket", BUCKET,
         "--hf-token-secret", "hf-token", "--dry-run", "--env-file", "/nonexistent"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"gcloud secrets versions add hf-token --data-file=- --project={PROJECT}" in res.output
    assert f"--hf-token-secret projects/{PROJECT}/secrets/hf-token" in res.output
    assert "roles/secretmanager.secretAccessor" in res.output


def test_gke_workload_identity_binding_and_annotation():
    steps = _plan(gke_cluster="c1", k8s_namespace="team-a", k8s_service_account="trainer")
    text = [s.shell() for s in steps]
    wi = [t for t in text if "roles/iam.workloadIdentityUser" in t]
    assert len(wi) == 1
    # bound on the service account (not the project), to the KSA's Workload Identity member
    assert f"iam service-accounts add-iam-policy-binding {SA}" in wi[0]
    assert f"serviceAccount:{PROJECT}.svc.id.goog[team-a/trainer]" in wi[0]
    annotate = [t for t in text if t.startswith("kubectl annotate")]
    assert annotate == [
        "kubectl annotate serviceaccount trainer --namespace=team-a "
        f"iam.gke.io/gcp-service-account={SA} --overwrite"
    ]
    assert "container.googleapis.com" in text[0]
    # kubectl needs the cluster credentials before the KSA commands
    first_kubectl = next(i for i, t in enumerate(text) if t.startswith("kubectl"))
    assert any("get-credentials c1" in t for t in text[:first_kubectl])


def test_without_gke_no_kubernetes_commands():
    text = "\n".join(s.shell() for s in _plan())
    assert "kubectl" not in text and "container.googleapis.com" not in text
    for api in ("aiplatform", "storage", "artifactregistry", "iam"):
        assert f"{api}.googleapis.com" in text


@pytest.mark.parametrize(
    "kw", [{"project": "X"}, {"bucket": "Bad_Bucket!"}, {"submitter": "me@example.com"}]
)
def test_bad_names_are_rejected(kw):
    args = {"project": PROJECT, "region": REGION, "bucket": BUCKET}
    extra = {}
    for k, v in kw.items():
        (args if k in args else extra)[k] = v
    with pytest.raises(ConfigError):
        g.plan(args["project"], args["region"], args["bucket"], **extra)


def test_run_stops_on_first_failure_and_tolerates_already_exists():
    steps = _plan()
    calls = []

    def runner(argv, **kw):
        calls.append(argv)
        if argv[:3] == ["gcloud", "storage", "buckets"] and "create" in argv:
            return subprocess.CompletedProcess(
                argv, 1, "", "ERROR: (gcloud) HTTPError 409: already exists"
            )
        if "projects" in argv:
            return subprocess.CompletedProcess(argv, 7, "", "PERMISSION_DENIED: nope")
        return subprocess.CompletedProcess(argv, 0, "", "")

    out: list[str] = []
    code = g.run(steps, echo=out.append, runner=runner)
    assert code == 7
    assert calls[-1][:2] == ["gcloud", "projects"]  # nothing ran after the failure
    assert len(calls) < len(steps)
    assert any("already exists" in line for line in out)
    assert "PERMISSION_DENIED" in out[-1]


def test_cli_dry_run_prints_every_command_and_runs_none(monkeypatch):
    from pipelines.cli import app

    def boom(*a, **k):
        raise AssertionError("dry run must not execute anything")

    monkeypatch.setattr(subprocess, "run", boom)
    res = CliRunner().invoke(
        app,
        ["gcp-setup", "--project", PROJECT, "--region", REGION, "--bucket", BUCKET,
         "--gke-cluster", "c1", "--dry-run", "--env-file", "/nonexistent"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    for step in _plan(gke_cluster="c1"):
        assert step.shell() in res.output
    assert f"SERVICE_ACCOUNT={SA}" in res.output


def test_cli_missing_bucket_is_one_line_usage_error(monkeypatch):
    from pipelines.cli import app

    monkeypatch.delenv("BUCKET_NAME", raising=False)
    res = CliRunner().invoke(
        app, ["gcp-setup", "--project", PROJECT, "--dry-run", "--env-file", "/nonexistent"]
    )
    assert res.exit_code == 2
    assert "BUCKET_NAME" in res.output and "Traceback" not in res.output
