"""One-time Google Cloud set-up for llmft, as a list of gcloud / kubectl commands.

What it creates (idempotent: "already exists" answers are accepted):

* the APIs: Vertex AI, Cloud Storage, Artifact Registry, GKE (when a cluster is named), IAM,
  Resource Manager;
* the bucket (uniform bucket-level access) and a Docker repository in Artifact Registry;
* a dedicated service account with least privilege: ``roles/storage.objectAdmin`` on THAT
  bucket only, ``roles/aiplatform.user`` on the project, ``roles/artifactregistry.reader`` on
  the repository only; never owner or editor;
* for KFP on GKE, Workload Identity: the Kubernetes service account may impersonate the
  Google one (``roles/iam.workloadIdentityUser`` on the service account) and carries the
  ``iam.gke.io/gcp-service-account`` annotation (the original design's workload_idf_conf.sh);
* with ``--hf-token-secret NAME`` (gated hub models): the Secret Manager API, the secret
  (empty: its value is added by the user, never passed to this tool) and
  ``roles/secretmanager.secretAccessor`` on THAT secret only.

``--dry-run`` prints every command; otherwise they run in order and the first failure stops.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from trainer.config import ConfigError

APIS = (
    "aiplatform.googleapis.com",
    "storage.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
)
GKE_API = "container.googleapis.com"
SECRET_MANAGER_API = "secretmanager.googleapis.com"

BUCKET_ROLE = "roles/storage.objectAdmin"
"""Granted on the bucket only (read data, write run folders and pipeline artifacts)."""
PROJECT_ROLES = ("roles/aiplatform.user",)
"""Granted on the project (create pipeline jobs and the custom jobs of their steps)."""
REPOSITORY_ROLE = "roles/artifactregistry.reader"
"""Granted on the Docker repository only (pull the llmft images)."""
SUBMITTER_ROLE = "roles/iam.serviceAccountUser"
"""Granted on the service account to the person submitting runs (act-as), when named."""
WORKLOAD_IDENTITY_ROLE = "roles/iam.workloadIdentityUser"
"""Granted on the service account to the Kubernetes service account (GKE only)."""
SECRET_ROLE = "roles/secretmanager.secretAccessor"
"""Granted on the hub-token secret only (the upload step reads it at run time)."""

FORBIDDEN_ROLES = ("roles/owner", "roles/editor")

_ALREADY = re.compile(r"already exists|ALREADY_EXISTS|already enabled|409", re.IGNORECASE)


@dataclass(frozen=True)
class Step:
    """One command of the set-up.

    Attributes:
        argv: The command line.
        why: One line shown before it runs.
        exists_ok: An "already exists" failure means done (creating what is there).
    """

    argv: tuple[str, ...]
    why: str
    exists_ok: bool = False

    def shell(self) -> str:
        """The command as one copy-pastable shell line."""
        return shlex.join(self.argv)


def service_account_email(project: str, name: str) -> str:
    """E-mail of a user-managed service account."""
    return f"{name}@{project}.iam.gserviceaccount.com"


def _check_name(kind: str, value: str, pattern: str) -> None:
    if not re.fullmatch(pattern, value):
        raise ConfigError(f"invalid {kind} {value!r}")


def secret_id(project: str, name: str) -> str:
    """The Secret Manager secret ID of ``NAME`` or ``projects/PROJECT/secrets/NAME``.

    Raises:
        ConfigError: Not a valid secret ID, or a resource name of another project.
    """
    text = name.strip()
    m = re.fullmatch(r"projects/([^/]+)/secrets/([^/]+)", text)
    if m:
        if m[1] != project:
            raise ConfigError(f"--hf-token-secret {text!r} is in project {m[1]!r}, not {project!r}")
        text = m[2]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", text):
        raise ConfigError(
            f"invalid --hf-token-secret {name!r} (a secret ID: letters, digits, '-' and '_')"
        )
    return text


def secret_hints(project: str, name: str) -> list[str]:
    """What to do after the set-up: add the token as the secret's value, compile with it.

    The token never passes through llmft: ``gcloud`` reads it from standard input.
    """
    sid = secret_id(project, name)
    add = shlex.join(
        ["gcloud", "secrets", "versions", "add", sid, "--data-file=-", f"--project={project}"]
    )
    return [
        "# add the hub token as the secret's value (type or paste it, then Ctrl-D):",
        add,
        "# then compile or submit with:",
        f"--hf-token-secret projects/{project}/secrets/{sid}",
    ]


def plan(
    project: str,
    region: str,
    bucket: str,
    *,
    service_account: str = "llmft-pipelines",
    repository: str = "llmft",
    gke_cluster: str | None = None,
    k8s_namespace: str | None = None,
    k8s_service_account: str | None = None,
    submitter: str | None = None,
    hf_token_secret: str | None = None,
) -> list[Step]:
    """The commands that set up a project for llmft, in order.

    Args:
        project: Google Cloud project ID.
        region: Region of the bucket, repository, Vertex AI and the cluster.
        bucket: Bucket name (with or without ``gs://``).
        service_account: Name (before ``@``) of the dedicated service account.
        repository: Artifact Registry Docker repository for the images.
        gke_cluster: GKE cluster for KFP (enables the Workload Identity binding).
        k8s_namespace: Namespace of the KFP runs (default ``kubeflow``).
        k8s_service_account: Kubernetes service account of the run pods
            (default ``pipeline-runner``, KFP's default).
        submitter: IAM member (``user:me@example.com``) allowed to start runs as the service
            account (``roles/iam.serviceAccountUser`` on it only).
        hf_token_secret: Secret Manager secret ID (or ``projects/PROJECT/secrets/ID``) for a
            gated model's hub token: created empty if missing, readable by the service account
            (``roles/secretmanager.secretAccessor`` on it only). The value is never taken here.

    Returns:
        The steps; ``--dry-run`` prints them, ``run`` executes them.
    """
    bucket = bucket.removeprefix("gs://").strip("/")
    _check_name("project", project, r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
    _check_name("bucket", bucket, r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
    _check_name("service account name", service_account, r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
    _check_name("region", region, r"[a-z]+-[a-z]+[0-9]+")
    sid = secret_id(project, hf_token_secret) if hf_token_secret else None
    sa = service_account_email(project, service_account)
    member = f"serviceAccount:{sa}"
    p = ("--project", project)
    apis = (*APIS, GKE_API) if gke_cluster else APIS
    if sid:
        apis = (*apis, SECRET_MANAGER_API)
    steps = [
        Step(("gcloud", "services", "enable", *apis, *p), "enable the APIs"),
        Step(
            (
                "gcloud",
                "storage",
                "buckets",
                "create",
                f"gs://{bucket}",
                f"--location={region}",
                "--uniform-bucket-level-access",
                *p,
            ),
            "create the bucket (data, pipeline root, run folders)",
            exists_ok=True,
        ),
        Step(
            (
                "gcloud",
                "artifacts",
                "repositories",
                "create",
                repository,
                "--repository-format=docker",
                f"--location={region}",
                *p,
            ),
            "create the Docker repository for the llmft images",
            exists_ok=True,
        ),
        Step(
            (
                "gcloud",
                "iam",
                "service-accounts",
                "create",
                service_account,
                "--display-name=llmft pipelines",
                *p,
            ),
            "create the dedicated service account the runs execute as",
            exists_ok=True,
        ),
        Step(
            (
                "gcloud",
                "storage",
                "buckets",
                "add-iam-policy-binding",
                f"gs://{bucket}",
                f"--member={member}",
                f"--role={BUCKET_ROLE}",
                *p,
            ),
            "let it read and write objects in this bucket only",
        ),
    ]
    for role in PROJECT_ROLES:
        steps.append(
            Step(
                (
                    "gcloud",
                    "projects",
                    "add-iam-policy-binding",
                    project,
                    f"--member={member}",
                    f"--role={role}",
                    "--condition=None",
                ),
                "let it run Vertex AI pipeline and custom jobs",
            )
        )
    steps.append(
        Step(
            (
                "gcloud",
                "artifacts",
                "repositories",
                "add-iam-policy-binding",
                repository,
                f"--location={region}",
                f"--member={member}",
                f"--role={REPOSITORY_ROLE}",
                *p,
            ),
            "let it pull the llmft images from this repository only",
        )
    )
    if sid:
        steps += [
            Step(
                ("gcloud", "secrets", "create", sid, "--replication-policy=automatic", *p),
                "create the secret for the hub token (its value is added by you, see below)",
                exists_ok=True,
            ),
            Step(
                (
                    "gcloud", "secrets", "add-iam-policy-binding", sid,
                    f"--member={member}", f"--role={SECRET_ROLE}", *p,
                ),
                "let it read this secret only (the upload step fetches the hub token)",
            ),
        ]  # fmt: skip
    if submitter:
        if not re.fullmatch(r"(user|group|serviceAccount):\S+@\S+", submitter):
            raise ConfigError(f"invalid --submitter {submitter!r} (e.g. user:me@example.com)")
        steps.append(
            Step(
                (
                    "gcloud", "iam", "service-accounts", "add-iam-policy-binding", sa,
                    f"--member={submitter}", f"--role={SUBMITTER_ROLE}", *p,
                ),
                "let the submitter start runs as the service account",
            )
        )  # fmt: skip
    if gke_cluster:
        ns = k8s_namespace or "kubeflow"
        ksa = k8s_service_account or "pipeline-runner"
        steps += [
            Step(
                (
                    "gcloud", "container", "clusters", "get-credentials", gke_cluster,
                    f"--region={region}", *p,
                ),
                "point kubectl at the cluster",
            ),
            Step(
                ("kubectl", "create", "serviceaccount", ksa, f"--namespace={ns}"),
                "create the Kubernetes service account of the run pods",
                exists_ok=True,
            ),
            Step(
                (
                    "gcloud", "iam", "service-accounts", "add-iam-policy-binding", sa,
                    f"--member=serviceAccount:{project}.svc.id.goog[{ns}/{ksa}]",
                    f"--role={WORKLOAD_IDENTITY_ROLE}", *p,
                ),
                "Workload Identity: let the Kubernetes service account act as the Google one",
            ),
            Step(
                (
                    "kubectl", "annotate", "serviceaccount", ksa, f"--namespace={ns}",
                    f"iam.gke.io/gcp-service-account={sa}", "--overwrite",
                ),
                "Workload Identity: annotate the Kubernetes service account",
            ),
        ]  # fmt: skip
    return steps


def granted_roles(steps: list[Step]) -> list[tuple[str, str]]:
    """``(role, scope)`` of every IAM binding in ``steps``; scope is the resource bound on."""
    out = []
    for step in steps:
        argv = step.argv
        if "add-iam-policy-binding" not in argv:
            continue
        role = next(a.split("=", 1)[1] for a in argv if a.startswith("--role="))
        resource = argv[argv.index("add-iam-policy-binding") + 1]
        kind = " ".join(argv[1 : argv.index("add-iam-policy-binding")])
        out.append((role, f"{kind} {resource}"))
    return out


def run(
    steps: list[Step],
    *,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> int:
    """Print (dry run) or execute the steps in order, stopping at the first failure.

    Args:
        steps: From ``plan``.
        dry_run: Only print the commands.
        echo: Output function.
        runner: ``subprocess.run``-compatible (injected by tests).

    Returns:
        0 when every step succeeded (or was printed), else the failing command's exit code.
    """
    for step in steps:
        echo(f"# {step.why}")
        echo(step.shell())
        if dry_run:
            continue
        try:
            res = runner(list(step.argv), capture_output=True, text=True, check=False)
        except FileNotFoundError:
            echo(
                f"error: {step.argv[0]} not found on PATH (install the Google Cloud SDK / kubectl)"
            )
            return 127
        if res.returncode != 0:
            if step.exists_ok and _ALREADY.search((res.stderr or "") + (res.stdout or "")):
                echo("  (already exists)")
                continue
            last = (res.stderr or res.stdout or "").strip().splitlines()
            echo(f"error: step failed (exit {res.returncode}): {last[-1] if last else ''}")
            return res.returncode
    return 0
