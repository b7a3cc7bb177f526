"""The notebook API: settings precedence, compile, submit/wait and status through the real clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines import api
from tests.fixtures.vertex_stub import vertex_server_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("PROJECT_ID", "BUCKET_NAME", "REGION", "SERVICE_ACCOUNT", "VERTEX_API_ENDPOINT",
                "MODEL_NAME", "LOCAL_DATA_PATH", "ACCELERATOR"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_settings_keywords_win_over_env_and_dotenv(env, monkeypatch):
    (env / ".env").write_text("PROJECT_ID=file\nREGION=europe-west4\nBUCKET_NAME=b\n")
    monkeypatch.setenv("REGION", "asia-east1")
    s = api.settings(project_id="kw")
    assert (s.project_id, s.region, s.bucket_uri) == ("kw", "asia-east1", "gs://b")


def test_compile_writes_the_target_yaml(env):
    path = api.compile("gke", accelerator="T4", output="out/p.yaml", bucket="b")
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    assert path.endswith("out/p.yaml") and len(docs) == 2  # pipeline spec + platform spec
    assert "nvidia-tesla-t4" in json.dumps(docs[1])
    vertex_yaml = api.compile("vertex", accelerator="none", output="v.yaml", bucket="gs://b/x")
    (single,) = yaml.safe_load_all(Path(vertex_yaml).read_text())
    executors = single["deploymentSpec"]["executors"].values()
    assert all("accelerator" not in e["container"].get("resources", {}) for e in executors)
    assert all("resources" not in e["container"] for e in executors)


def test_submit_and_wait_returns_final_status(vertex_server, gcs_bucket, env):
    data = env / "d.jsonl"
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    run = api.submit("vertex", project="p-1", bucket=gcs_bucket, data=str(data),
                     api_endpoint=vertex_server.url, accelerator="none",
                     params={"max_steps": 5}, labels={"who": "notebook"})  # fmt: skip
    assert run.backend == "vertex" and run.staged is not None and run.staged.uploaded
    (post,) = vertex_server.posted("pipelineJobs")
    assert post.body["runtimeConfig"]["parameterValues"]["max_steps"] == 5
    assert post.body["labels"]["who"] == "notebook"

    vertex_server.job_state = "PIPELINE_STATE_FAILED"
    final = api.submit("vertex", project="p-1", bucket=gcs_bucket, data=str(data),
                       api_endpoint=vertex_server.url, accelerator="none", wait=True,
                       poll_interval=0)  # fmt: skip
    assert final.done and not final.succeeded and final.state == "PIPELINE_STATE_FAILED"
    again = api.status(
        final.run_id, backend="vertex", project="p-1", api_endpoint=vertex_server.url
    )
    assert again.state == "PIPELINE_STATE_FAILED"


def test_unknown_keyword_is_rejected(env):
    with pytest.raises(TypeError):
        api.status("x", backend="vertex", bogus=1)
