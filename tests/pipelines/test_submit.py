"""``llmft submit`` against loopback stand-ins: the real aiplatform and kfp clients, the GCS emulator.

What the clients put on the wire is asserted (pipeline spec, parameters with the staged dataset
URI, pipeline root, service account, accelerator placement), not our own arguments.

No test may wait on client retries: ``PipelineJob.submit()`` checks the pipeline-root bucket
(answered by the GCS emulator) and looks up the project number over gRPC, which offline
retries ~60 s; the ``vertex_server`` fixture answers that lookup (see tests/fixtures/vertex_stub.py).
The timeout below makes any such stall fail fast instead of slowing the suite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fixtures.kfp_stub import KfpStub, kfp_server_fixture  # noqa: F401  (fixture)
from tests.fixtures.vertex_stub import VertexStub, vertex_server_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)

PROJECT, REGION = "test-project", "us-central1"
SA = "llmft-pipelines@test-project.iam.gserviceaccount.com"
ROOT = {"output_root": "gs://llmft-test-bucket"}


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, str]:
    """The real pipeline compiled once per target, with an L4 accelerator."""
    from pipelines.compile import compile_pipeline

    out = tmp_path_factory.mktemp("compiled")
    return {
        "vertex": compile_pipeline("vertex", "L4", str(out / "vertex.yaml"), param_defaults=ROOT),
        "kfp": compile_pipeline("gke", "L4", str(out / "gke.yaml"), param_defaults=ROOT),
    }


@pytest.fixture
def dataset(tmp_path) -> Path:
    rows = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(20)]
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No .env and no stray settings from the developer's shell."""
    for var in ("PROJECT_ID", "BUCKET_NAME", "REGION", "SERVICE_ACCOUNT", "KFP_HOST",
                "VERTEX_API_ENDPOINT", "MODEL_NAME", "LOCAL_DATA_PATH", "ACCELERATOR"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    from pipelines.cli import app

    return CliRunner().invoke(app, list(args))


def bucket_name(gcs_bucket) -> str:
    return str(gcs_bucket).removeprefix("gs://").strip("/")


def staged_blob(bucket: str, sha: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    return client.bucket(bucket).get_blob(f"staging/datasets/{sha}.jsonl")


def vertex_args(stub: VertexStub, bucket: str, data: Path, *extra: str) -> list[str]:
    return [
        "submit", "--backend", "vertex", "--project", PROJECT, "--region", REGION,
        "--bucket", bucket, "--data", str(data), "--api-endpoint", stub.url,
        "--service-account", SA, *extra,
    ]  # fmt: skip


def _executor_for(spec: dict, task: str) -> dict:
    comp = spec["root"]["dag"]["tasks"]
    # tasks may sit inside the exit handler's sub-DAG
    for c in spec["components"].values():
        if "dag" in c:
            comp = {**comp, **c["dag"]["tasks"]}
    ref = comp[task]["componentRef"]["name"]
    executor = spec["components"][ref]["executorLabel"]
    return spec["deploymentSpec"]["executors"][executor]


def test_vertex_submit_stages_data_and_sends_the_job(
    vertex_server, gcs_bucket, dataset, packages, env
):
    bucket = bucket_name(gcs_bucket)
    sha = hashlib.sha256(dataset.read_bytes()).hexdigest()
    res = invoke(
        *vertex_args(vertex_server, bucket, dataset, "--package", packages["vertex"],
                     "--param", "max_steps=20", "--label", "team=ml", "--no-cache"),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (post,) = vertex_server.posted("pipelineJobs")
    assert post.path == f"/v1/projects/{PROJECT}/locations/{REGION}/pipelineJobs"
    body = post.body
    rc = body["runtimeConfig"]
    staged = f"gs://{bucket}/staging/datasets/{sha}.jsonl"
    assert rc["gcsOutputDirectory"] == f"gs://{bucket}/pipeline_root"
    assert rc["parameterValues"]["dataset_uri"] == staged
    assert rc["parameterValues"]["output_root"] == f"gs://{bucket}"
    assert rc["parameterValues"]["max_steps"] == 20  # typed from the compiled spec
    # fail-slow: whether Vertex still runs the exit task under fail-fast is undocumented
    assert rc["failurePolicy"] in (1, "PIPELINE_FAILURE_POLICY_FAIL_SLOW")
    assert body["serviceAccount"] == SA
    assert body["labels"] == {"app": "llmft", "team": "ml"}
    # the accelerator travels inside the spec of the GPU step
    spec = body["pipelineSpec"]
    assert spec["pipelineInfo"]["name"] == "llm-lora-finetune"
    train = _executor_for(spec, "train-lora")
    assert "NVIDIA_L4" in json.dumps(train["container"].get("resources", {}))
    # --no-cache reached every task
    cached = [t.get("cachingOptions", {}) for t in spec["root"]["dag"]["tasks"].values()]
    assert all(not c.get("enableCache") for c in cached)
    # the staged object holds the file's bytes
    blob = staged_blob(bucket, sha)
    assert blob is not None and blob.download_as_bytes() == dataset.read_bytes()
    job_id = post.query["pipelineJobId"][0]
    assert f"run id: {job_id}" in res.output
    assert f"vertex-ai/locations/{REGION}/pipelines/runs/{job_id}?project={PROJECT}" in res.output
    assert "uploaded" in res.output
    # the pipeline-root ownership check ran (and was answered, not retried for a minute)
    assert vertex_server.project_lookups == [PROJECT]


def test_second_submit_uploads_nothing(vertex_server, gcs_bucket, dataset, packages, env):
    bucket = bucket_name(gcs_bucket)
    sha = hashlib.sha256(dataset.read_bytes()).hexdigest()
    args = vertex_args(vertex_server, bucket, dataset, "--package", packages["vertex"])
    assert invoke(*args).exit_code == 0
    first = staged_blob(bucket, sha)
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    again = staged_blob(bucket, sha)
    assert (again.generation, again.updated) == (first.generation, first.updated)
    assert "already staged, not uploaded" in res.output
    posts = vertex_server.posted("pipelineJobs")
    assert len(posts) == 2
    uris = {p.body["runtimeConfig"]["parameterValues"]["dataset_uri"] for p in posts}
    assert uris == {f"gs://{bucket}/staging/datasets/{sha}.jsonl"}


def test_vertex_submit_compiles_for_vertex_when_no_package(vertex_server, gcs_bucket, dataset, env):
    res = invoke(
        *vertex_args(vertex_server, bucket_name(gcs_bucket), dataset, "--accelerator", "T4")
    )
    assert res.exit_code == 0, res.output
    (post,) = vertex_server.posted("pipelineJobs")
    train = _executor_for(post.body["pipelineSpec"], "train-lora")
    assert "NVIDIA_TESLA_T4" in json.dumps(train["container"].get("resources", {}))


@pytest.mark.parametrize(
    ("state", "code"), [("PIPELINE_STATE_SUCCEEDED", 0), ("PIPELINE_STATE_FAILED", 1)]
)
def test_vertex_wait_exit_code_follows_the_run(
    vertex_server, gcs_bucket, dataset, packages, env, state, code
):
    vertex_server.job_state = state
    res = invoke(
        *vertex_args(vertex_server, bucket_name(gcs_bucket), dataset, "--package", packages["vertex"],
                     "--wait", "--poll-interval", "0"),
    )  # fmt: skip
    assert res.exit_code == code, res.output
    assert f"state: {state}" in res.output


def test_unknown_param_is_one_line_error_and_nothing_is_sent(
    vertex_server, gcs_bucket, dataset, packages, env
):
    bucket = bucket_name(gcs_bucket)
    res = invoke(*vertex_args(vertex_server, bucket, dataset, "--package", packages["vertex"],
                              "--param", "max_stpes=20"))  # fmt: skip
    assert res.exit_code == 2
    assert "unknown pipeline parameter 'max_stpes'" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert vertex_server.requests == []
    sha = hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert staged_blob(bucket, sha) is None


def test_badly_typed_param(vertex_server, gcs_bucket, dataset, packages, env):
    res = invoke(*vertex_args(vertex_server, bucket_name(gcs_bucket), dataset, "--package",
                              packages["vertex"], "--param", "max_steps=lots"))  # fmt: skip
    assert res.exit_code == 2 and "expected integer" in res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["submit", "--backend", "vertex"], "--project / PROJECT_ID, --bucket / BUCKET_NAME"),
        (["submit", "--backend", "vertex", "--project", "p"], "--bucket / BUCKET_NAME"),
        (["submit", "--backend", "kfp", "--bucket", "b"], "--host / KFP_HOST"),
        (["submit", "--backend", "sagemaker"], "--backend must be vertex or kfp"),
    ],
)
def test_missing_settings_are_usage_errors(env, args, needle):
    res = invoke(*args)
    assert res.exit_code == 2
    assert needle in res.output and "Traceback" not in res.output


def test_defaults_come_from_dotenv(vertex_server, gcs_bucket, dataset, packages, env):
    (env / ".env").write_text(
        f"PROJECT_ID={PROJECT}\nBUCKET_NAME=gs://{bucket_name(gcs_bucket)}\n"
        f"LOCAL_DATA_PATH={dataset}\nMODEL_NAME=Qwen/Qwen2.5-0.5B-Instruct\n"
        f"VERTEX_API_ENDPOINT={vertex_server.url}\n"
    )
    res = invoke("submit", "--package", packages["vertex"])
    assert res.exit_code == 0, res.output
    (post,) = vertex_server.posted("pipelineJobs")
    assert post.path.startswith(f"/v1/projects/{PROJECT}/")
    params = post.body["runtimeConfig"]["parameterValues"]
    assert params["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert params["dataset_uri"].startswith(f"gs://{bucket_name(gcs_bucket)}/staging/datasets/")


def test_gs_dataset_is_used_in_place(vertex_server, gcs_bucket, packages, env):
    bucket = bucket_name(gcs_bucket)
    res = invoke(*vertex_args(vertex_server, bucket, Path("x"), "--package", packages["vertex"],
                              "--data", f"gs://{bucket}/fresh/train.jsonl"))  # fmt: skip
    assert res.exit_code == 0, res.output
    (post,) = vertex_server.posted("pipelineJobs")
    assert (
        post.body["runtimeConfig"]["parameterValues"]["dataset_uri"]
        == f"gs://{bucket}/fresh/train.jsonl"
    )


def test_kfp_submit_sends_spec_platform_spec_and_staged_uri(
    kfp_server: KfpStub, gcs_bucket, dataset, packages, env
):
    bucket = bucket_name(gcs_bucket)
    sha = hashlib.sha256(dataset.read_bytes()).hexdigest()
    res = invoke(
        "submit", "--backend", "kfp", "--host", kfp_server.url, "--bucket", bucket,
        "--data", str(dataset), "--service-account", "pipeline-runner",
        "--package", packages["kfp"], "--param", "lora_r=8",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (post,) = kfp_server.posted("runs")
    body = post.body
    params = body["runtime_config"]["parameters"]
    assert params["dataset_uri"] == f"gs://{bucket}/staging/datasets/{sha}.jsonl"
    assert params["output_root"] == f"gs://{bucket}"
    assert params["lora_r"] == 8
    assert body["runtime_config"]["pipeline_root"] == f"gs://{bucket}/pipeline_root"
    assert body["service_account"] == "pipeline-runner"
    (exp,) = kfp_server.posted("experiments")
    assert exp.body["display_name"] == "llmft"
    assert body["experiment_id"] in kfp_server.experiments
    # GPU placement for GKE lives in the platform spec: node selector + toleration
    # kfp.Client sends both YAML documents inside pipeline_spec
    assert set(body["pipeline_spec"]) == {"pipeline_spec", "platform_spec"}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "llm-lora-finetune"
    platform = json.dumps(body["pipeline_spec"]["platform_spec"])
    assert "cloud.google.com/gke-accelerator" in platform and "nvidia-l4" in platform
    assert "nvidia.com/gpu" in platform
    run_id = next(iter(kfp_server.runs))
    assert f"run id: {run_id}" in res.output
    assert f"{kfp_server.url}/#/runs/details/{run_id}" in res.output


def test_kfp_wait_fails_on_failed_run(kfp_server: KfpStub, gcs_bucket, dataset, packages, env):
    kfp_server.run_state = "FAILED"
    res = invoke(
        "submit", "--backend", "kfp", "--host", kfp_server.url, "--bucket", bucket_name(gcs_bucket),
        "--data", str(dataset), "--package", packages["kfp"], "--wait", "--poll-interval", "0",
    )  # fmt: skip
    assert res.exit_code == 1
    assert "ended FAILED" in res.output


def test_status_of_vertex_and_kfp_runs(
    vertex_server, kfp_server, gcs_bucket, dataset, packages, env
):
    bucket = bucket_name(gcs_bucket)
    assert (
        invoke(
            *vertex_args(vertex_server, bucket, dataset, "--package", packages["vertex"])
        ).exit_code
        == 0
    )
    job_id = vertex_server.posted("pipelineJobs")[0].query["pipelineJobId"][0]
    vertex_server.job_state = "PIPELINE_STATE_RUNNING"
    res = invoke(
        "status",
        job_id,
        "--backend",
        "vertex",
        "--project",
        PROJECT,
        "--api-endpoint",
        vertex_server.url,
    )
    assert res.exit_code == 0 and "PIPELINE_STATE_RUNNING" in res.output
    vertex_server.job_state = "PIPELINE_STATE_FAILED"
    res = invoke(
        "status",
        job_id,
        "--backend",
        "vertex",
        "--project",
        PROJECT,
        "--api-endpoint",
        vertex_server.url,
    )
    assert res.exit_code == 1 and "PIPELINE_STATE_FAILED" in res.output

    res = invoke("submit", "--backend", "kfp", "--host", kfp_server.url, "--bucket", bucket,
                 "--data", str(dataset), "--package", packages["kfp"])  # fmt: skip
    run_id = next(iter(kfp_server.runs))
    res = invoke("status", run_id, "--backend", "kfp", "--host", kfp_server.url)
    assert res.exit_code == 0 and "SUCCEEDED" in res.output


def test_status_of_a_local_run_folder(tmp_path, env):
    run = tmp_path / "runs" / "experiments" / "finetune_job_20260101_000000"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    res = invoke("status", str(run))
    assert res.exit_code == 0 and "RUNNING" in res.output
    (run / "metrics.json").write_text(
        json.dumps({"base": {"eval_loss": 3.5}, "tuned": {"eval_loss": 1.25}})
    )
    (run / "status.txt").write_text("SUCCESS\n")
    res = invoke("status", str(run))
    assert res.exit_code == 0
    assert "SUCCESS" in res.output and "tuned: eval_loss=1.25" in res.output
    (run / "status.txt").write_text("SKIPPED dataset unchanged\n")
    res = invoke("status", str(run))
    assert res.exit_code == 0 and "SKIPPED" in res.output
    (run / "status.txt").write_text("FAILED train-lora\n")
    (run / "error.log").write_text("train-lora: CUDA out of memory\n")
    res = invoke("status", str(run))
    assert res.exit_code == 1 and "CUDA out of memory" in res.output
    res = invoke("status", str(tmp_path / "nowhere"))
    assert res.exit_code == 2 and "not a run folder" in res.output
