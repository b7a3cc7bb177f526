"""Schedules: the cron parser and its two dialects, and create/list/pause/resume/delete against
loopback stand-ins for the Vertex and KFP APIs (real aiplatform and kfp clients)."""

# No ``from __future__ import annotations`` here: kfp reads the mini components' annotations.
import json

import pytest

from pipelines.schedule import CronError, parse_cron
from tests.fixtures.kfp_stub import kfp_server_fixture  # noqa: F401  (fixture)
from tests.fixtures.vertex_stub import vertex_server_fixture  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    ("expr", "kfp", "vertex"),
    [
        ("0 3 * * *", "0 0 3 * * *", "0 3 * * *"),
        ("*/15 * * * *", "0 */15 * * * *", "*/15 * * * *"),
        ("30 2 1,15 * 1-5", "0 30 2 1,15 * 1-5", "30 2 1,15 * 1-5"),
        ("0 0-12/3 * jan-mar mon", "0 0 0-12/3 * JAN-MAR MON", "0 0-12/3 * JAN-MAR MON"),
        ("@daily", "0 0 0 * * *", "0 0 * * *"),
        ("  5   4  *  *  0 ", "0 5 4 * * 0", "5 4 * * 0"),
        # KFP (robfig) only knows 0-6 for weekdays: 7 (Sunday) is rewritten, meaning kept
        ("0 9 * * 7", "0 0 9 * * 0", "0 9 * * 7"),
        ("0 9 * * 5-7", "0 0 9 * * 0,5,6", "0 9 * * 5-7"),
    ],
)
def test_dialects(expr, kfp, vertex):
    cron = parse_cron(expr)
    assert cron.kfp() == kfp
    assert len(cron.kfp().split()) == 6
    assert cron.vertex() == vertex


def test_timezone_goes_into_the_vertex_prefix_only():
    cron = parse_cron("0 3 * * *", "Europe/Paris")
    assert cron.vertex() == "TZ=Europe/Paris 0 3 * * *"
    with pytest.raises(CronError, match="UTC"):
        cron.kfp()
    assert parse_cron("0 3 * * *", "UTC").kfp() == "0 0 3 * * *"


def test_tz_prefix_in_the_expression_is_accepted():
    assert parse_cron("TZ=America/New_York 0 3 * * *").timezone == "America/New_York"
    assert parse_cron("CRON_TZ=Asia/Tokyo 0 3 * * *").vertex() == "TZ=Asia/Tokyo 0 3 * * *"
    with pytest.raises(CronError, match="twice"):
        parse_cron("TZ=Asia/Tokyo 0 3 * * *", "Europe/Paris")


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("0 0 3 * * *", "seconds-first"),
        ("60 * * * *", "minute field '60': 60 is out of range 0-59"),
        ("0 24 * * *", "hour field '24'"),
        ("0 0 0 * *", "day-of-month field '0'"),
        ("0 0 * 13 *", "month field '13'"),
        ("0 0 * * 8", "day-of-week field '8'"),
        ("0 0 * * FUNDAY", "not a number"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "step"),
        ("*/61 * * * *", "larger than the range"),
        ("5/15 * * * *", "needs * or a range"),
        ("1,,2 * * * *", "empty item"),
        ("? * * * *", "not a number"),
        ("", "expected 5 fields"),
    ],
)
def test_invalid_expressions_name_the_field_and_reason(expr, needle):
    with pytest.raises(CronError) as err:
        parse_cron(expr)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("expr", "months"),
    [
        ("0 0 30 2 *", "FEB"),
        ("0 0 31 4,6,9,11 *", "APR, JUN, SEP, NOV"),
        ("0 0 30,31 feb *", "FEB"),
        ("15 3 31 2,4 *", "FEB, APR"),
        ("0 0 31 apr-apr *", "APR"),
    ],
)
def test_cron_that_can_never_fire_is_refused(expr, months):
    with pytest.raises(CronError) as err:
        parse_cron(expr)
    msg = str(err.value)
    assert "never fires" in msg and f"month(s) {months}" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "expr",
    [
        "0 0 30 2 1",  # both days restricted: OR, so Mondays in February fire
        "0 0 31 2 mon-fri",
        "0 0 29 2 *",  # leap years
        "0 0 31 * *",
        "0 0 31 1,4 *",  # January has a 31st
        "0 0 31 apr-jun *",  # May has
        "0 0 */7 2 *",
        "0 0 31 2 */2",  # a stepped weekday: robfig ORs it, so it may fire
    ],
)
def test_cron_that_fires_sometimes_is_accepted(expr):
    parse_cron(expr)


def test_unknown_timezone():
    with pytest.raises(CronError, match="unknown time zone"):
        parse_cron("0 3 * * *", "Mars/Olympus")


# --------------------------------------------------------------------------- against the stubs

pytestmark = pytest.mark.timeout(60)

PROJECT, REGION = "test-project", "us-central1"
SA = "llmft-pipelines@test-project.iam.gserviceaccount.com"
ROOT = {"output_root": "gs://llmft-test-bucket"}


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, str]:
    """The real pipeline per target, plus a tiny pipeline without skip_if_unchanged."""
    from kfp import compiler, dsl

    from pipelines.compile import compile_pipeline

    out = tmp_path_factory.mktemp("compiled")

    @dsl.component(base_image="python:3.11-slim")
    def noop(dataset_uri: str, output_root: str, skip: bool) -> str:
        return dataset_uri

    @dsl.pipeline(name="mini-without-skip")
    def without_skip(dataset_uri: str = "d", output_root: str = "o"):
        noop(dataset_uri=dataset_uri, output_root=output_root, skip=False)

    compiler.Compiler().compile(without_skip, str(out / "without_skip.yaml"))
    return {
        "vertex": compile_pipeline("vertex", "L4", str(out / "vertex.yaml"), param_defaults=ROOT),
        "kfp": compile_pipeline("gke", "L4", str(out / "gke.yaml"), param_defaults=ROOT),
        "without_skip": str(out / "without_skip.yaml"),
    }


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("PROJECT_ID", "BUCKET_NAME", "REGION", "SERVICE_ACCOUNT", "KFP_HOST",
                "VERTEX_API_ENDPOINT", "MODEL_NAME", "LOCAL_DATA_PATH", "ACCELERATOR"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    from typer.testing import CliRunner

    from pipelines.cli import app

    return CliRunner().invoke(app, list(args))


def vertex(stub, *args: str) -> list[str]:
    return ["--backend", "vertex", "--project", PROJECT, "--region", REGION,
            "--api-endpoint", stub.url, *args]  # fmt: skip


def test_vertex_schedule_create_sends_tz_cron_and_concurrency(
    vertex_server, gcs_bucket, packages, env
):
    data = f"gs://{gcs_bucket}/live/train.jsonl"
    res = invoke("schedule", "create", "--cron", "0 3 * * 1-5", "--timezone", "Europe/Paris",
                 *vertex(vertex_server, "--bucket", gcs_bucket, "--data", data,
                         "--service-account", SA, "--package", packages["vertex"],
                         "--name", "nightly"))  # fmt: skip
    assert res.exit_code == 0, res.output
    (post,) = vertex_server.posted("schedules")
    assert post.path == f"/v1/projects/{PROJECT}/locations/{REGION}/schedules"
    body = post.body
    assert body["cron"] == "TZ=Europe/Paris 0 3 * * 1-5"
    assert int(body["maxConcurrentRunCount"]) == 1
    assert body["displayName"] == "nightly"
    job = body["createPipelineJobRequest"]["pipelineJob"]
    assert job["serviceAccount"] == SA
    assert job["runtimeConfig"]["gcsOutputDirectory"] == f"gs://{gcs_bucket}/pipeline_root"
    assert job["runtimeConfig"]["parameterValues"]["dataset_uri"] == data
    assert job["runtimeConfig"]["parameterValues"]["output_root"] == f"gs://{gcs_bucket}"
    assert job["pipelineSpec"]["pipelineInfo"]["name"] == "llm-lora-finetune"
    assert "NVIDIA_L4" in json.dumps(job["pipelineSpec"]["deploymentSpec"])
    assert vertex_server.posted("pipelineJobs") == []  # a schedule, not a run
    sid = next(iter(vertex_server.schedules)).rsplit("/", 1)[-1]
    assert f"schedule id: {sid}" in res.output


def test_vertex_schedule_list_pause_resume_delete(vertex_server, gcs_bucket, packages, env):
    res = invoke("schedule", "create", "--cron", "@daily", "--max-concurrency", "2",
                 *vertex(vertex_server, "--bucket", gcs_bucket, "--data",
                         f"gs://{gcs_bucket}/d.jsonl", "--package", packages["vertex"]))  # fmt: skip
    assert res.exit_code == 0, res.output
    (name,) = vertex_server.schedules
    sid = name.rsplit("/", 1)[-1]
    assert int(vertex_server.schedules[name]["maxConcurrentRunCount"]) == 2

    res = invoke("schedule", "list", "--json", *vertex(vertex_server))
    assert res.exit_code == 0, res.output
    (item,) = json.loads(res.output)
    assert (item["schedule_id"], item["cron"], item["state"]) == (sid, "0 0 * * *", "ACTIVE")

    assert invoke("schedule", "pause", sid, *vertex(vertex_server)).exit_code == 0
    assert vertex_server.schedules[name]["state"] == "PAUSED"
    assert any(r.path.endswith(f"{sid}:pause") for r in vertex_server.requests)
    assert invoke("schedule", "resume", sid, *vertex(vertex_server)).exit_code == 0
    assert vertex_server.schedules[name]["state"] == "ACTIVE"
    res = invoke("schedule", "delete", sid, *vertex(vertex_server))
    assert res.exit_code == 0, res.output
    assert vertex_server.schedules == {}


def test_skip_if_unchanged_sets_the_pipeline_parameter(vertex_server, gcs_bucket, packages, env):
    # The real llmft pipeline: without the flag the parameter keeps its default (False)...
    res = invoke("schedule", "create", "--cron", "0 * * * *",
                 *vertex(vertex_server, "--bucket", gcs_bucket, "--data", f"gs://{gcs_bucket}/d.jsonl",
                         "--package", packages["vertex"]))  # fmt: skip
    assert res.exit_code == 0, res.output
    # ...and with it every scheduled run gets skip_if_unchanged=True.
    res = invoke("schedule", "create", "--cron", "0 * * * *", "--skip-if-unchanged",
                 *vertex(vertex_server, "--bucket", gcs_bucket, "--data", f"gs://{gcs_bucket}/d.jsonl",
                         "--package", packages["vertex"]))  # fmt: skip
    assert res.exit_code == 0, res.output
    plain, skipping = (
        post.body["createPipelineJobRequest"]["pipelineJob"]["runtimeConfig"]["parameterValues"]
        for post in vertex_server.posted("schedules")
    )
    assert plain.get("skip_if_unchanged", False) is False
    assert skipping["skip_if_unchanged"] is True
    assert skipping["dataset_uri"] == f"gs://{gcs_bucket}/d.jsonl"

    res = invoke("schedule", "create", "--cron", "0 * * * *", "--skip-if-unchanged",
                 *vertex(vertex_server, "--bucket", gcs_bucket, "--data", f"gs://{gcs_bucket}/d.jsonl",
                         "--package", packages["without_skip"]))  # fmt: skip
    assert res.exit_code == 2
    assert "no 'skip_if_unchanged' parameter" in res.output
    assert len(vertex_server.posted("schedules")) == 2


def test_invalid_cron_is_rejected_before_anything_is_sent(vertex_server, gcs_bucket, packages, env):
    res = invoke("schedule", "create", "--cron", "0 25 * * *",
                 *vertex(vertex_server, "--bucket", gcs_bucket, "--package", packages["vertex"]))  # fmt: skip
    assert res.exit_code == 2
    assert "hour field '25'" in res.output and "Traceback" not in res.output
    assert vertex_server.requests == []


def test_kfp_recurring_run_gets_six_field_cron(kfp_server, gcs_bucket, packages, tmp_path, env):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    res = invoke("schedule", "create", "--backend", "kfp", "--cron", "30 2 * * 7",
                 "--host", kfp_server.url, "--bucket", gcs_bucket, "--data", str(data),
                 "--service-account", "pipeline-runner", "--package", packages["kfp"],
                 "--skip-if-unchanged")  # fmt: skip
    assert res.exit_code == 0, res.output
    (post,) = kfp_server.posted("recurringruns")
    body = post.body
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 0"
    assert int(body["max_concurrency"]) == 1
    assert body["mode"] == "ENABLE"
    assert body["no_catchup"] is True
    assert body["service_account"] == "pipeline-runner"
    params = body["runtime_config"]["parameters"]
    # a local file is staged once, content-addressed
    assert params["dataset_uri"].startswith(f"gs://{gcs_bucket}/staging/datasets/")
    assert params["skip_if_unchanged"] is True
    assert body["runtime_config"]["pipeline_root"] == f"gs://{gcs_bucket}/pipeline_root"
    assert "nvidia-l4" in json.dumps(body["pipeline_spec"]["platform_spec"])
    assert body["experiment_id"] in kfp_server.experiments


def test_kfp_rejects_a_time_zone_before_sending(kfp_server, gcs_bucket, packages, env):
    res = invoke("schedule", "create", "--backend", "kfp", "--cron", "0 3 * * *",
                 "--timezone", "Europe/Paris", "--host", kfp_server.url, "--bucket", gcs_bucket,
                 "--data", f"gs://{gcs_bucket}/d.jsonl", "--package", packages["kfp"])  # fmt: skip
    assert res.exit_code == 2
    assert "UTC" in res.output
    assert kfp_server.requests == []


def test_kfp_list_pause_resume_delete(kfp_server, gcs_bucket, packages, env):
    args = ("--backend", "kfp", "--host", kfp_server.url)
    res = invoke("schedule", "create", "--cron", "*/30 * * * *", *args, "--bucket", gcs_bucket,
                 "--data", f"gs://{gcs_bucket}/d.jsonl", "--package", packages["kfp"])  # fmt: skip
    assert res.exit_code == 0, res.output
    (rid,) = kfp_server.recurring
    res = invoke("schedule", "list", "--json", *args)
    assert res.exit_code == 0, res.output
    (item,) = json.loads(res.output)
    assert (item["schedule_id"], item["cron"], item["state"]) == (rid, "0 */30 * * * *", "ENABLED")
    assert invoke("schedule", "pause", rid, *args).exit_code == 0
    assert kfp_server.recurring[rid]["status"] == "DISABLED"
    assert invoke("schedule", "resume", rid, *args).exit_code == 0
    assert kfp_server.recurring[rid]["status"] == "ENABLED"
    assert invoke("schedule", "delete", rid, *args).exit_code == 0
    assert kfp_server.recurring == {}
