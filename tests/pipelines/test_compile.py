"""The compiled pipeline, per target: tasks, edges, placement, retries, caching, parameters."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer.config import EvalConfig, TrainConfig, ValidateConfig, field_help

TASKS = {"init-run", "validate-data", "upload", "train-lora", "evaluate", "publish-artifacts"}
GUARDED = TASKS - {"init-run"}
"""Inside the dsl.If on init-run's ``skipped`` output: they take init-run's outputs as inputs
of the condition group, so their edge to init-run is the group's."""
ROOT = {"output_root": "gs://llmft-test-bucket"}
"""Cloud compiles need a gs:// output_root (a container path is refused)."""
EDGES = {
    "validate-data": set(),
    "upload": {"validate-data"},
    "train-lora": {"upload"},
    "evaluate": {"upload", "train-lora"},
    "publish-artifacts": {"validate-data", "upload", "train-lora", "evaluate"},
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    from pipelines.compile import compile_pipeline

    out = tmp_path_factory.mktemp("compiled")
    docs = {}
    for target, acc in (("vertex", "L4"), ("gke", "L4"), ("vertex-t4", "T4"), ("gke-none", "none")):
        path = compile_pipeline(
            target.split("-")[0], acc, str(out / f"{target}.yaml"), param_defaults=ROOT
        )
        with open(path, encoding="utf-8") as fh:
            docs[target] = list(yaml.safe_load_all(fh))
        docs[target + ":text"] = Path(path).read_text()
    return docs


def _handler(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]


def _condition(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The condition group's task in the exit handler and the tasks of its DAG."""
    (name,) = (n for n, t in _handler(spec).items() if "triggerPolicy" in t)
    comp = _handler(spec)[name]["componentRef"]["name"]
    return name, spec["components"][comp]["dag"]["tasks"]


def _inner(spec: dict[str, Any]) -> dict[str, Any]:
    """Every step task inside the exit handler, the guarded ones included."""
    name, guarded = _condition(spec)
    return {**{n: t for n, t in _handler(spec).items() if n != name}, **guarded}


def _executor(spec: dict[str, Any], task: str) -> dict[str, Any]:
    return spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]


def test_tasks_and_edges(compiled: dict[str, Any]) -> None:
    for target in ("vertex", "gke"):
        spec = compiled[target][0]
        inner = _inner(spec)
        assert set(inner) == TASKS
        for task, deps in EDGES.items():
            assert set(inner[task].get("dependentTasks", [])) == deps, task
        assert "dependentTasks" not in inner["init-run"]
        name, guarded = _condition(spec)
        assert set(guarded) == GUARDED
        assert _handler(spec)[name]["dependentTasks"] == ["init-run"]


def test_skip_condition_guards_validate_to_publish(compiled: dict[str, Any]) -> None:
    from pipelines.pipeline import CONDITION_NAME

    for target in ("vertex", "gke"):
        spec = compiled[target][0]
        name, _ = _condition(spec)
        group = _handler(spec)[name]
        assert group["taskInfo"]["name"] == CONDITION_NAME
        cond = group["triggerPolicy"]["condition"]
        assert cond == "inputs.parameter_values['pipelinechannel--init-run-skipped'] == false"
        assert group["inputs"]["parameters"]["pipelinechannel--init-run-skipped"] == {
            "taskOutputParameter": {"producerTask": "init-run", "outputParameterKey": "skipped"}
        }
        # init-run decides: it takes the run-level parameter, and outputs a bool.
        init = _handler(spec)["init-run"]["inputs"]["parameters"]["skip_if_unchanged"]
        assert init == {"componentInputParameter": "pipelinechannel--skip_if_unchanged"}
        outputs = spec["components"]["comp-init-run"]["outputDefinitions"]["parameters"]
        assert outputs["skipped"]["parameterType"] == "BOOLEAN"
    assert "pipelinechannel--init-run-skipped" in compiled["vertex:text"]


def test_exit_handler_runs_finalize_after_everything(compiled: dict[str, Any]) -> None:
    root = compiled["vertex"][0]["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finalize-run"}
    final = root["finalize-run"]
    assert final["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert final["dependentTasks"] == ["exit-handler-1"]
    assert final["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == (
        "exit-handler-1"
    )
    # The exit task finds the run folder through the job placeholders, not task outputs.
    params = final["inputs"]["parameters"]
    assert params["job_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert params["job_name"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"


def test_vertex_is_single_document_with_accelerator(compiled: dict[str, Any]) -> None:
    assert len(compiled["vertex"]) == 1
    assert "platforms" not in compiled["vertex:text"]
    spec = compiled["vertex"][0]
    for task in ("train-lora", "evaluate"):
        res = _executor(spec, task)["resources"]
        assert res["accelerator"]["type"] == "NVIDIA_L4"
        assert int(res["accelerator"]["count"]) == 1
        assert res["resourceCpuLimit"] == "8"
        assert res["resourceMemoryLimit"] == "32G"
    for task in ("init-run", "validate-data", "upload", "publish-artifacts", "finalize-run"):
        assert "accelerator" not in _executor(spec, task).get("resources", {})
    t4 = compiled["vertex-t4"][0]
    assert _executor(t4, "train-lora")["resources"]["accelerator"]["type"] == "NVIDIA_TESLA_T4"


def test_gke_node_selector_toleration_and_gpu_limit(compiled: dict[str, Any]) -> None:
    spec, platform = compiled["gke"]
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(execs) == {"exec-train-lora", "exec-evaluate"}
    for cfg in execs.values():
        assert cfg["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in cfg[
            "tolerations"
        ]
    for task in ("train-lora", "evaluate"):
        acc = _executor(spec, task)["resources"]["accelerator"]
        assert acc["type"] == "nvidia.com/gpu"
        assert int(acc["count"]) == 1


def test_accelerator_none_has_no_gpu_settings(compiled: dict[str, Any]) -> None:
    docs = compiled["gke-none"]
    assert len(docs) == 1
    for task in ("train-lora", "evaluate"):
        assert "accelerator" not in _executor(docs[0], task).get("resources", {})


def test_retries_with_backoff_on_the_idempotent_steps(compiled: dict[str, Any]) -> None:
    inner = _inner(compiled["gke"][0])
    for task, spec in inner.items():
        policy = spec.get("retryPolicy")
        if task in ("upload", "train-lora", "evaluate", "publish-artifacts"):
            assert policy["maxRetryCount"] >= 1
            assert policy["backoffDuration"] == "60s"
            assert policy["backoffFactor"] == 2.0
        else:
            assert policy is None, task


def test_caching_only_on_validate(compiled: dict[str, Any]) -> None:
    spec = compiled["vertex"][0]
    inner = _inner(spec)
    cached = {t for t, s in inner.items() if s.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"validate-data"}
    assert not spec["root"]["dag"]["tasks"]["finalize-run"]["cachingOptions"].get("enableCache")
    # The cache key of validate includes the sha256 measured afresh by the uncached init-run
    # (handed to the condition group, then to validate)...
    params = inner["validate-data"]["inputs"]["parameters"]
    channel = params["dataset_sha256"]["componentInputParameter"]
    name, _ = _condition(spec)
    assert _handler(spec)[name]["inputs"]["parameters"][channel]["taskOutputParameter"] == {
        "producerTask": "init-run",
        "outputParameterKey": "dataset_sha256",
    }
    # ...and nothing that differs per run (run folder, job id): that would defeat the cache.
    assert set(params) == {"dataset_uri", "dataset_sha256", "validate_config", "output_root"}
    assert params["output_root"] == {"componentInputParameter": "pipelinechannel--output_root"}


def test_images_gpu_for_train_and_evaluate(compiled: dict[str, Any]) -> None:
    from components.images import images

    imgs = images()
    spec = compiled["vertex"][0]
    for task in ("train-lora", "evaluate"):
        assert _executor(spec, task)["image"] == imgs.gpu
    for task in ("init-run", "validate-data", "upload", "publish-artifacts", "finalize-run"):
        assert _executor(spec, task)["image"] == imgs.cpu
    # Lightweight components run in our image: no pip install at start-up.
    assert "pip install" not in compiled["vertex:text"]


def test_image_tag_override(tmp_path: Path) -> None:
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(
        "vertex", "L4", str(tmp_path / "p.yaml"), image_tag="v9.9", param_defaults=ROOT
    )
    spec = yaml.safe_load(Path(path).read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images and all(i.endswith(":v9.9") for i in images)
    assert any("/llmft-gpu:" in i for i in images) and any("/llmft-cpu:" in i for i in images)


def _config_defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in (ValidateConfig, TrainConfig, EvalConfig):
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, f.default)
            assert out[f.name] == f.default, f"{f.name} has different defaults across configs"
    return out


RUN_LEVEL = {"dataset_uri": None, "output_root": "runs", "skip_if_unchanged": False}
"""Pipeline parameters that are not config fields (dataset_uri: the bundled sample)."""


def test_parameters_match_config_dataclasses(compiled: dict[str, Any]) -> None:
    from pipelines.pipeline import RUN_PARAMETERS
    from trainer.config import SAMPLE_DATASET

    params = compiled["vertex"][0]["root"]["inputDefinitions"]["parameters"]
    run_level = {**RUN_LEVEL, "dataset_uri": SAMPLE_DATASET, **ROOT}
    assert set(RUN_PARAMETERS) == set(run_level)
    config = _config_defaults()
    assert not set(config) & set(run_level), "a run-level parameter shadows a config field"
    expected = {**config, **run_level}
    assert set(params) == set(expected)
    for name, value in expected.items():
        got = params[name]["defaultValue"]
        if isinstance(value, bool):
            assert got is value, name
        else:
            assert got == value, name


def test_every_parameter_has_default_and_description(compiled: dict[str, Any]) -> None:
    for target in ("vertex", "gke"):
        spec = compiled[target][0]
        for name, p in spec["root"]["inputDefinitions"]["parameters"].items():
            assert "defaultValue" in p, name
            assert len(p.get("description", "")) > 5, name
        # Components document every input too (the KFP UI shows them).
        for comp_name, comp in spec["components"].items():
            if comp_name.startswith(("comp-exit-handler", "comp-condition")):
                continue  # generated groups: their inputs are the channels of documented ones
            for kind in ("parameters", "artifacts"):
                for name, p in comp.get("inputDefinitions", {}).get(kind, {}).items():
                    if name == "status":
                        continue
                    assert p.get("description"), f"{comp_name}.{name}"


def _config_help() -> dict[str, str]:
    """``{field: help}`` as the docstrings take it: TrainConfig's help for shared fields."""
    out: dict[str, str] = {}
    for cls in (TrainConfig, ValidateConfig, EvalConfig):
        for name, text in field_help(cls).items():
            out.setdefault(name, text)
    return out


def _descriptions(spec: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Parameter descriptions of the pipeline and of the init-run component."""
    root = spec["root"]["inputDefinitions"]["parameters"]
    init = spec["components"]["comp-init-run"]["inputDefinitions"]["parameters"]
    return {
        "pipeline": {n: p.get("description", "") for n, p in root.items()},
        "init-run": {n: p.get("description", "") for n, p in init.items()},
    }


def test_config_parameter_descriptions_are_the_config_help(compiled: dict[str, Any]) -> None:
    """The UI shows trainer.config's help text, compared here with field_help (not literals)."""
    from components.init_run import INPUT_HELP
    from pipelines.pipeline import RUN_PARAMETER_HELP

    config = _config_help()
    extras = {"pipeline": RUN_PARAMETER_HELP, "init-run": INPUT_HELP}
    for target in ("vertex", "gke"):
        for where, got in _descriptions(compiled[target][0]).items():
            assert set(got) == set(config) | set(extras[where]), where
            for name, text in {**config, **extras[where]}.items():
                assert got[name] == text, f"{target} {where}.{name}"


def test_descriptions_follow_a_changed_help_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generated, not copied: a different help text reaches the compiled pipeline."""
    from kfp import compiler

    import trainer.config
    from pipelines.pipeline import build_pipeline

    real = trainer.config.field_help

    def changed(cls: type) -> dict[str, str]:
        return {n: f"{t} (changed)" for n, t in real(cls).items()}

    monkeypatch.setattr(trainer.config, "field_help", changed)
    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline(), str(out))
    got = _descriptions(yaml.safe_load(out.read_text()))["pipeline"]
    assert got["lora_r"] == f"{real(TrainConfig)['lora_r']} (changed)"
    assert got["eval_fraction"] == f"{real(ValidateConfig)['eval_fraction']} (changed)"


SECRET_LOOKING = (
    r"hf_[A-Za-z0-9]{20,}",
    r"AKIA[0-9A-Z]{16}",
    r"-----BEGIN",
    r"ya29\.",
    r"(?i)(password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{12,}",
)


def test_no_secret_looking_values(compiled: dict[str, Any]) -> None:
    text = compiled["vertex:text"] + compiled["gke:text"]
    for pattern in SECRET_LOOKING:
        assert not re.search(pattern, text), pattern
    params = compiled["vertex"][0]["root"]["inputDefinitions"]["parameters"]
    assert not any(
        re.search(r"(^|_)token$|secret|password|api_key|credential", n, re.I) for n in params
    )


def test_param_defaults_override(tmp_path: Path) -> None:
    from pipelines.compile import compile_pipeline
    from trainer.config import ConfigError

    path = compile_pipeline(
        "vertex",
        "L4",
        str(tmp_path / "p.yaml"),
        param_defaults={"output_root": "gs://bucket/llmft", "max_steps": 50},
    )
    params = yaml.safe_load(Path(path).read_text())["root"]["inputDefinitions"]["parameters"]
    assert params["output_root"]["defaultValue"] == "gs://bucket/llmft"
    assert params["max_steps"]["defaultValue"] == 50
    with pytest.raises(ConfigError, match="nope"):
        compile_pipeline(
            "vertex", "L4", str(tmp_path / "q.yaml"), param_defaults={**ROOT, "nope": 1}
        )


def test_placement_rejects_unknown_values() -> None:
    from pipelines.compile import placement_for
    from trainer.config import ConfigError

    assert placement_for("vertex", "t4").accelerator == "T4"
    with pytest.raises(ConfigError, match="accelerator"):
        placement_for("vertex", "A100x")
    with pytest.raises(ConfigError, match="target"):
        placement_for("aws", "L4")


def test_cli_compile_writes_yaml(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path / "gke.yaml"
    res = CliRunner().invoke(
        app,
        [
            "compile",
            "--target",
            "gke",
            "--accelerator",
            "T4",
            "-o",
            str(out),
            "--param",
            "output_root=gs://b/x",
        ],
    )
    assert res.exit_code == 0, res.output
    docs = list(yaml.safe_load_all(out.read_text()))
    sel = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-lora"]
    assert sel["nodeSelector"]["labels"]["cloud.google.com/gke-accelerator"] == "nvidia-tesla-t4"
    assert docs[0]["root"]["inputDefinitions"]["parameters"]["output_root"]["defaultValue"] == (
        "gs://b/x"
    )
    bad = CliRunner().invoke(app, ["compile", "--target", "aws", "-o", str(out)])
    assert bad.exit_code == 2
    assert "Traceback" not in bad.output


# --------------------------------------------------------------------------- hub token secret

SM_NAME = "projects/my-proj-1/secrets/hf-token"
SM_VERSION = SM_NAME + "/versions/latest"
FAKE_TOKEN = "hf_" + "Zq7" * 10
"""In the compiling process's environment: it must not reach the YAML."""
SECRET_CASES = {
    "gke": ("gke", "L4", "hf-token"),
    "gke-key": ("gke", "T4", "team.hf-token:hf_key"),
    "gke-sm": ("gke", "none", SM_NAME),
    "vertex": ("vertex", "L4", SM_NAME),
}


@pytest.fixture(scope="module")
def with_secret(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pipelines.compile import compile_pipeline

    out = tmp_path_factory.mktemp("secret")
    docs: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", FAKE_TOKEN)
        for case, (target, acc, spec) in SECRET_CASES.items():
            path = compile_pipeline(
                target, acc, str(out / f"{case}.yaml"), hf_token_secret=spec, param_defaults=ROOT
            )
            docs[case + ":text"] = Path(path).read_text()
            docs[case] = list(yaml.safe_load_all(docs[case + ":text"]))
    return docs


def _k8s_executors(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return (
        docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    )


def _envs(spec: dict[str, Any]) -> dict[str, Any]:
    """``{executor: its container env}`` for every executor that has one."""
    execs = spec["deploymentSpec"]["executors"]
    return {n: e["container"]["env"] for n, e in execs.items() if e["container"].get("env")}


@pytest.mark.parametrize(("case", "key"), [("gke", "token"), ("gke-key", "hf_key")])
def test_gke_kubernetes_secret_as_env_on_upload_only(
    with_secret: dict[str, Any], case: str, key: str
) -> None:
    docs = with_secret[case]
    execs = _k8s_executors(docs)
    with_secrets = {n for n, cfg in execs.items() if "secretAsEnv" in cfg}
    assert with_secrets == {"exec-upload"}
    (entry,) = execs["exec-upload"]["secretAsEnv"]
    assert entry["secretName"] == SECRET_CASES[case][2].split(":")[0]
    assert entry["keyToEnv"] == [{"secretKey": key, "envVar": "HF_TOKEN"}]
    assert entry.get("optional") is not True  # a missing Secret must stop the step
    # GPU placement is untouched, and nothing reaches the spec's own env.
    for gpu in ("exec-train-lora", "exec-evaluate"):
        assert "nodeSelector" in execs[gpu]
    assert _envs(docs[0]) == {}


def test_vertex_secret_manager_name_on_upload_only(with_secret: dict[str, Any]) -> None:
    docs = with_secret["vertex"]
    assert len(docs) == 1 and "platforms" not in with_secret["vertex:text"]
    assert _envs(docs[0]) == {"exec-upload": [{"name": "HF_TOKEN_SECRET", "value": SM_VERSION}]}


def test_gke_accepts_a_secret_manager_name_too(with_secret: dict[str, Any]) -> None:
    docs = with_secret["gke-sm"]
    assert len(docs) == 1  # accelerator none and no Kubernetes Secret: no platform spec
    assert _envs(docs[0]) == {"exec-upload": [{"name": "HF_TOKEN_SECRET", "value": SM_VERSION}]}


def test_no_token_value_in_any_yaml(with_secret: dict[str, Any], compiled: dict[str, Any]) -> None:
    plain = compiled["vertex"][0]["root"]["inputDefinitions"]["parameters"]
    for case in SECRET_CASES:
        text = with_secret[case + ":text"]
        assert FAKE_TOKEN not in text, case
        for pattern in SECRET_LOOKING:
            assert not re.search(pattern, text), (case, pattern)
        params = with_secret[case][0]["root"]["inputDefinitions"]["parameters"]
        assert params == plain, case  # the secret is no pipeline parameter


@pytest.mark.parametrize(
    ("target", "spec", "match"),
    [
        ("vertex", "hf-token", "vertex has no Kubernetes Secrets"),
        ("vertex", "projects/p1/secrets/", "not a Secret Manager name"),
        ("vertex", "projects/p1/secrets/s/versions/newest", "not a Secret Manager name"),
        ("gke", "HF_Token", "expected a Kubernetes Secret NAME or NAME:KEY"),
        ("gke", "hf-token:", "expected a Kubernetes Secret NAME or NAME:KEY"),
        ("gke", "hf-token:a/b", "expected a Kubernetes Secret NAME or NAME:KEY"),
        ("gke", "  ", "empty"),
        ("vertex", "", "empty"),
    ],
)
def test_bad_secret_spec_is_one_line_error_before_writing(
    tmp_path: Path, target: str, spec: str, match: str
) -> None:
    from pipelines.compile import compile_pipeline
    from trainer.config import ConfigError

    out = tmp_path / "p.yaml"
    with pytest.raises(ConfigError, match=match) as exc:
        compile_pipeline(target, "L4", str(out), hf_token_secret=spec, param_defaults=ROOT)
    assert "\n" not in str(exc.value)
    assert not out.exists()


def test_cli_compile_hf_token_secret(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path / "v.yaml"
    args = ["compile", "--target", "vertex", "-o", str(out), "--bucket", "b", "--hf-token-secret"]
    res = CliRunner().invoke(app, [*args, SM_NAME])
    assert res.exit_code == 0, res.output
    spec = yaml.safe_load(out.read_text())
    assert _envs(spec)["exec-upload"] == [{"name": "HF_TOKEN_SECRET", "value": SM_VERSION}]
    bad = CliRunner().invoke(app, [*args, "hf-token"])
    assert bad.exit_code == 2
    assert "Kubernetes Secrets" in bad.output and "Traceback" not in bad.output


def _cloud_args(*extra: str) -> list[str]:
    return ["--project", "my-proj-1", "--bucket", "my-bucket", "--env-file", "/nonexistent", *extra]


@pytest.mark.parametrize(
    "command",
    [["submit"], ["schedule", "create", "--cron", "0 3 * * *"]],
    ids=["submit", "schedule"],
)
def test_submit_and_schedule_refuse_secret_with_a_package(
    tmp_path: Path, command: list[str]
) -> None:
    """The secret is compiled in: with a ready package it would be silently ignored."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    pkg = tmp_path / "p.yaml"
    pkg.write_text("root: {}\n")
    res = CliRunner().invoke(
        app, [*command, *_cloud_args("--package", str(pkg), "--hf-token-secret", SM_NAME)]
    )
    assert res.exit_code == 2, res.output
    assert "leave out --package" in res.output and "Traceback" not in res.output


def test_schedule_create_compiles_the_secret_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """schedule_pipeline compiles the package with the secret; only the Vertex call is replaced
    (no Vertex here), so the package it would send is inspected."""
    from typer.testing import CliRunner

    from pipelines import schedule
    from pipelines.cli import app

    seen: list[Any] = []

    def fake_create(package: str, target: Any, **kw: Any) -> Any:
        seen.append(_envs(yaml.safe_load(Path(package).read_text())))
        return schedule.ScheduleInfo(
            backend="vertex", schedule_id="s1", name="s1", display_name="x", cron="0 3 * * *",
            state="ACTIVE", max_concurrency=1,
        )  # fmt: skip

    monkeypatch.setattr(schedule, "create_vertex_schedule", fake_create)
    res = CliRunner().invoke(
        app,
        [
            "schedule", "create", "--cron", "0 3 * * *", "--data", "gs://my-bucket/d.jsonl",
            *_cloud_args("--hf-token-secret", SM_NAME),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen == [{"exec-upload": [{"name": "HF_TOKEN_SECRET", "value": SM_VERSION}]}]


@pytest.mark.parametrize(("target", "gpu"), [("vertex", "L4"), ("gke", "L4"), ("vertex-t4", "T4")])
def test_upload_preflights_the_compiled_accelerator(
    compiled: dict[str, Any], target: str, gpu: str
) -> None:
    params = _inner(compiled[target][0])["upload"]["inputs"]["parameters"]
    assert params["accelerator"]["runtimeValue"]["constant"] == gpu
    assert params["accelerator_count"]["runtimeValue"]["constant"] == 1
    # Inside the condition group init-run's output arrives as a pipeline channel.
    assert "init-run-train_config" in str(params["train_config"])


def test_every_gpu_gets_a_training_process(tmp_path, capsys) -> None:
    import yaml

    from pipelines.compile import compile_pipeline

    out = compile_pipeline(
        "gke", "L4", str(tmp_path / "p.yaml"), param_defaults=ROOT, accelerator_count=2
    )
    spec = next(yaml.safe_load_all(Path(out).read_text()))
    params = _inner(spec)["train-lora"]["inputs"]["parameters"]
    assert params["num_processes"]["runtimeValue"]["constant"] == 2
    assert "idle" not in capsys.readouterr().err
