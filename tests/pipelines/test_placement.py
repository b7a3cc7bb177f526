"""What a real backend would make of the compiled YAML: GPU step sizes that can schedule,
GPU counts, compile-time guards, the recorded target, and the platform spec parsed strictly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from trainer.config import ConfigError

ROOT = {"output_root": "gs://llmft-test-bucket"}
SMALLEST_ALLOCATABLE = {"T4": (3.92, 12.3e9), "L4": (3.92, 13.3e9)}
"""The issue's measured allocatable of n1-standard-4 (T4) and g2-standard-4 (L4) on GKE."""
G2_SHAPES = {4: 16, 8: 32, 12: 48, 16: 64, 24: 96, 32: 128, 48: 192, 96: 384}
N1_SHAPES = {4: 15, 8: 30, 16: 60, 32: 120}


def _compile(tmp_path: Path, target: str, acc: str, name: str = "p", **kw: Any) -> list[Any]:
    from pipelines.compile import compile_pipeline

    kw.setdefault("param_defaults", ROOT)
    path = compile_pipeline(target, acc, str(tmp_path / f"{name}.yaml"), **kw)
    return list(yaml.safe_load_all(Path(path).read_text()))


def _res(spec: dict[str, Any], task: str) -> dict[str, Any]:
    return spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]["resources"]


def _bytes(q: str) -> float:
    units = {"Gi": 2**30, "Mi": 2**20, "G": 1e9, "M": 1e6}
    for suffix, mult in units.items():
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * mult
    return float(q)


def _cpu(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


@pytest.mark.parametrize("acc", ["T4", "L4"])
def test_gke_defaults_fit_the_smallest_node_of_the_gpu(tmp_path: Path, acc: str) -> None:
    spec, _ = _compile(tmp_path, "gke", acc)
    cpu, mem = SMALLEST_ALLOCATABLE[acc]
    for task in ("train-lora", "evaluate"):
        res = _res(spec, task)
        assert _cpu(res["resourceCpuRequest"]) <= cpu, res
        assert _bytes(res["resourceMemoryRequest"]) <= mem, res
        assert "resourceCpuLimit" not in res and "resourceMemoryLimit" not in res


def test_gke_sizes_are_settable_and_checked(tmp_path: Path) -> None:
    spec, _ = _compile(tmp_path, "gke", "T4", gpu_step_cpu="3", gpu_step_memory="12G")
    res = _res(spec, "train-lora")
    assert res["resourceCpuRequest"] == "3" and res["resourceMemoryRequest"] == "12G"
    # Larger than n1-standard-4 offers: refused unless the node pool's machine is named.
    with pytest.raises(ConfigError, match="does not fit n1-standard-4"):
        _compile(tmp_path, "gke", "T4", gpu_step_memory="16G")
    spec, _ = _compile(tmp_path, "gke", "T4", machine_type="n1-standard-8", gpu_step_memory="16G")
    assert _res(spec, "evaluate")["resourceMemoryRequest"] == "16G"
    with pytest.raises(ConfigError, match="does not fit g2-standard-8"):
        _compile(tmp_path, "gke", "L4", machine_type="g2-standard-8", gpu_step_cpu="8")
    spec, _ = _compile(tmp_path, "gke", "L4", machine_type="g2-standard-12")
    res = _res(spec, "train-lora")
    assert 8 <= _cpu(res["resourceCpuRequest"]) < 11.9
    assert 30 * 2**30 <= _bytes(res["resourceMemoryRequest"]) < 42.6 * 2**30


@pytest.mark.parametrize(
    ("acc", "machine"),
    [("L4", "n1-standard-8"), ("T4", "g2-standard-4"), ("L4", "a2-highgpu-1g")],
)
def test_a_machine_of_another_gpu_is_refused(tmp_path: Path, acc: str, machine: str) -> None:
    with pytest.raises(ConfigError, match=machine):
        _compile(tmp_path, "gke", acc, machine_type=machine)


@pytest.mark.parametrize("acc", ["T4", "L4"])
@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_vertex_limits_are_a_real_machine_of_the_family(
    tmp_path: Path, acc: str, count: int
) -> None:
    if acc == "T4" and count == 8:
        with pytest.raises(ConfigError, match="no T4 machine carries 8"):
            _compile(tmp_path, "vertex", acc, accelerator_count=count)
        return
    (spec,) = _compile(tmp_path, "vertex", acc, accelerator_count=count)
    res = _res(spec, "train-lora")
    cpu, mem = int(res["resourceCpuLimit"]), _bytes(res["resourceMemoryLimit"]) / 1e9
    shapes = G2_SHAPES if acc == "L4" else N1_SHAPES
    assert cpu in shapes and math.isclose(mem, shapes[cpu]), res
    if acc == "L4":  # each G2 shape has a fixed number of L4s
        carried = {4: 1, 8: 1, 12: 1, 16: 1, 24: 2, 32: 1, 48: 4, 96: 8}[cpu]
        assert carried == count, res
    assert int(res["accelerator"]["resourceCount"]) == count
    assert res["accelerator"]["resourceType"] == {"L4": "NVIDIA_L4", "T4": "NVIDIA_TESLA_T4"}[acc]
    # evaluate generates in one process: one GPU
    assert int(_res(spec, "evaluate")["accelerator"]["resourceCount"]) == 1


def test_vertex_request_picks_the_smallest_machine_holding_it(tmp_path: Path) -> None:
    (spec,) = _compile(tmp_path, "vertex", "L4", gpu_step_cpu="10", gpu_step_memory="40G")
    res = _res(spec, "train-lora")
    assert res["resourceCpuLimit"] == "12" and res["resourceMemoryLimit"] == "48G"
    with pytest.raises(ConfigError, match="largest is g2-standard-32"):
        _compile(tmp_path, "vertex", "L4", gpu_step_memory="200G")


@pytest.mark.parametrize("count", [2, 4])
def test_gke_count_lands_on_train_only(tmp_path: Path, count: int) -> None:
    spec, _ = _compile(tmp_path, "gke", "L4", accelerator_count=count)
    assert int(_res(spec, "train-lora")["accelerator"]["resourceCount"]) == count
    assert int(_res(spec, "evaluate")["accelerator"]["resourceCount"]) == 1
    assert _res(spec, "train-lora")["accelerator"]["resourceType"] == "nvidia.com/gpu"


@pytest.mark.parametrize("count", [0, 3, 16])
def test_impossible_gpu_counts_are_refused(tmp_path: Path, count: int) -> None:
    with pytest.raises(ConfigError, match="accelerator-count"):
        _compile(tmp_path, "gke", "L4", accelerator_count=count)


# --------------------------------------------------------------------------- guards


def test_cloud_compile_refuses_a_container_output_root(tmp_path: Path) -> None:
    for root in ("runs", "/tmp/runs", "file:///x", "s3://b"):
        with pytest.raises(ConfigError, match="output_root"):
            _compile(tmp_path, "vertex", "L4", param_defaults={"output_root": root})
    _compile(tmp_path, "vertex", "L4", param_defaults={"output_root": "/gcs/bucket/runs"})


def test_cloud_compile_refuses_the_placeholder_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.images import DEFAULT_REPO

    monkeypatch.delenv("LLMFT_IMAGE_REPO", raising=False)
    for target in ("vertex", "gke"):
        with pytest.raises(ConfigError, match="LLMFT_IMAGE_REPO"):
            _compile(tmp_path, target, "L4")
        with pytest.raises(ConfigError, match="image repository"):
            _compile(tmp_path, target, "L4", image_repo=DEFAULT_REPO)
    (spec,) = _compile(tmp_path, "vertex", "L4", image_repo="eu.gcr.io/p/llmft")
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert all(i.startswith("eu.gcr.io/p/llmft/") for i in images)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("lora_r", 0),
        ("eval_fraction", 2.0),
        ("learning_rate", math.nan),
        ("learning_rate", math.inf),
        ("weight_decay", -0.1),
        ("gate_min_improvement", math.nan),
        ("batching", "sideways"),
        ("precision", "fp8"),
        ("max_steps", 1.5),
        ("long_rows", "explode"),
    ],
)
def test_param_values_get_the_run_checks_at_compile_time(
    tmp_path: Path, param: str, value: Any
) -> None:
    for target in ("vertex", "gke"):
        with pytest.raises(ConfigError, match=param):
            _compile(tmp_path, target, "L4", param_defaults={**ROOT, param: value})


@pytest.mark.parametrize(
    "pair",
    ["lora_r=0", "eval_fraction=2", "learning_rate=nan", "on_error=maybe", "max_seq_len=abc"],
)
def test_cli_compile_exits_2_on_a_bad_param(tmp_path: Path, pair: str) -> None:
    from pipelines.cli import app

    out = tmp_path / "p.yaml"
    res = CliRunner().invoke(
        app,
        ["compile", "--target", "gke", "-o", str(out), "--bucket", "b", "--param", pair],
    )
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not out.exists()
    assert pair.split("=")[0] in res.output


def test_cli_compile_bucket_and_machine_flags(tmp_path: Path) -> None:
    from pipelines.cli import app

    out = tmp_path / "p.yaml"
    args = ["compile", "--target", "gke", "--accelerator", "T4", "-o", str(out)]
    res = CliRunner().invoke(app, [*args, "--bucket", "my-bucket", "--env-file", "/nonexistent"])
    assert res.exit_code == 0, res.output
    spec = next(yaml.safe_load_all(out.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["output_root"]["defaultValue"] == "gs://my-bucket"
    assert "machine=n1-standard-4" in res.output
    res = CliRunner().invoke(app, [*args, "--bucket", "b", "--gpu-step-memory", "64G"])
    assert res.exit_code == 2 and "--machine-type" in res.output
    res = CliRunner().invoke(app, [*args, "--bucket", "b", "--accelerator-count", "8"])
    assert res.exit_code == 2 and "8" in res.output


def test_run_local_stays_as_easy_as_before() -> None:
    """The guards are for cloud targets only: local compiles need no repo and no bucket."""
    from pipelines.compile import pipeline_for, placement_for

    assert placement_for("local", "none").target == "local"
    assert pipeline_for("local", "none") is not None


# --------------------------------------------------------------------------- target


def test_package_records_its_target(tmp_path: Path) -> None:
    from pipelines.compile import package_target

    _compile(tmp_path, "gke", "T4", "g")
    _compile(tmp_path, "vertex", "L4", "v")
    text = (tmp_path / "g.yaml").read_text()
    assert text.startswith(
        "# llmft-package: target=gke accelerator=T4 count=1 machine=n1-standard-4"
    )
    assert package_target(str(tmp_path / "g.yaml")) == "gke"
    assert package_target(str(tmp_path / "v.yaml")) == "vertex"
    # An editor that drops comments: the description still says it; without it, the shape.
    for name in ("g", "v"):
        docs = list(yaml.safe_load_all((tmp_path / f"{name}.yaml").read_text()))
        (tmp_path / f"{name}-nc.yaml").write_text(yaml.safe_dump_all(docs))
        docs[0]["pipelineInfo"]["description"] = "edited"
        (tmp_path / f"{name}-bare.yaml").write_text(yaml.safe_dump_all(docs))
    for suffix in ("nc", "bare"):
        assert package_target(str(tmp_path / f"g-{suffix}.yaml")) == "gke"
        assert package_target(str(tmp_path / f"v-{suffix}.yaml")) == "vertex"


@pytest.mark.parametrize(("compiled", "backend"), [("vertex", "kfp"), ("gke", "vertex")])
def test_submit_refuses_a_package_of_the_other_backend(
    tmp_path: Path, compiled: str, backend: str
) -> None:
    from pipelines.compile import check_package_for_backend

    _compile(tmp_path, compiled, "L4", "p")
    with pytest.raises(ConfigError, match=f"compiled for --target {compiled}"):
        check_package_for_backend(str(tmp_path / "p.yaml"), backend)
    check_package_for_backend(
        str(tmp_path / "p.yaml"), {"vertex": "vertex", "gke": "kfp"}[compiled]
    )


def test_cli_submit_refuses_the_wrong_package(tmp_path: Path) -> None:
    from pipelines.cli import app

    _compile(tmp_path, "vertex", "L4", "v")
    res = CliRunner().invoke(
        app,
        [
            "submit",
            "--backend",
            "kfp",
            "--host",
            "http://127.0.0.1:9",
            "--bucket",
            "b",
            "--env-file",
            "/nonexistent",
            "--package",
            str(tmp_path / "v.yaml"),
            "--data",
            "gs://b/d.jsonl",
        ],
    )
    assert res.exit_code == 2, res.output
    assert "compiled for --target vertex" in res.output and "Traceback" not in res.output


def test_a_vertex_package_on_kfp_fails_in_init_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """KFP's Argo compiler gives every task container KFP_POD_NAME (downward API)."""
    from trainer.steps import check_backend_matches

    check_backend_matches("vertex")
    check_backend_matches("gke")
    monkeypatch.setenv("KFP_POD_NAME", "llm-lora-finetune-x-init-run-123")
    check_backend_matches("gke")
    with pytest.raises(ConfigError, match="--target gke"):
        check_backend_matches("vertex")


def test_init_run_receives_the_target_as_a_constant(tmp_path: Path) -> None:
    (spec,) = _compile(tmp_path, "vertex", "L4")
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert tasks["init-run"]["inputs"]["parameters"]["target"] == {
        "runtimeValue": {"constant": "vertex"}
    }
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "target" not in params  # not a run parameter the UI would offer


# --------------------------------------------------------------------------- platform spec


@pytest.mark.parametrize("acc", ["T4", "L4"])
def test_platform_spec_parses_strictly_like_the_api_server(tmp_path: Path, acc: str) -> None:
    """The API server reads the 2nd document into PlatformSpec with strict protojson (a failure
    silently drops it: no node selector, no toleration); from 2.14 its Argo compiler parses each
    executor's config into KubernetesExecutorConfig strictly (an unknown field fails the run)."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    from kfp.pipeline_spec import pipeline_spec_pb2

    _, platform = _compile(tmp_path, "gke", acc, hf_token_secret="hf-token")
    parsed = json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    execs = parsed.platforms["kubernetes"].deployment_spec.executors
    assert set(execs) == {"exec-train-lora", "exec-evaluate", "exec-upload"}
    for name, struct in execs.items():
        cfg = json_format.ParseDict(
            json_format.MessageToDict(struct), k8s.KubernetesExecutorConfig()
        )
        if name == "exec-upload":
            assert cfg.secret_as_env[0].secret_name == "hf-token"
            continue
        label = {"T4": "nvidia-tesla-t4", "L4": "nvidia-l4"}[acc]
        assert cfg.node_selector.labels["cloud.google.com/gke-accelerator"] == label
        assert [(t.key, t.operator, t.effect) for t in cfg.tolerations] == [
            ("nvidia.com/gpu", "Exists", "NoSchedule")
        ]


def test_strict_parse_would_catch_a_schema_drift() -> None:
    """Negative control: an unknown field is an error, as on the API server."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    from kfp.pipeline_spec import pipeline_spec_pb2

    with pytest.raises(json_format.ParseError):
        json_format.ParseDict({"nodeSelectr": {"labels": {}}}, k8s.KubernetesExecutorConfig())
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(
            {"platforms": {"kubernetes": {"deploySpec": {}}}}, pipeline_spec_pb2.PlatformSpec()
        )
