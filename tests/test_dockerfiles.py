"""Static checks of the images (no Docker engine here): locked versions, non-root, no secrets,
and the image names the compiled pipeline uses are the ones these Dockerfiles build."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"gpu": ROOT / "Dockerfile", "cpu": ROOT / "Dockerfile.cpu"}
SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def torch_pin() -> str:
    (line,) = [
        ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln.startswith("torch==")
    ]
    return line.split("==", 1)[1]


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_installs_the_project_with_locked_versions(kind):
    ins = instructions(DOCKERFILES[kind])
    copies = [a for i, a in ins if i == "COPY"]
    assert any(a.split()[0] == "constraints.txt" for a in copies)
    runs = " && ".join(a for i, a in ins if i == "RUN")
    # torch at the version constraints.txt pins (read from it, not retyped)
    assert "sed -n 's/^torch==//p' /tmp/constraints.txt" in runs
    assert 'pip install "torch==${TORCH_VERSION}" --index-url' in runs
    index = "https://download.pytorch.org/whl/cpu"
    if kind == "gpu":
        (arg,) = [a for i, a in ins if i == "ARG" and a.startswith("TORCH_INDEX_URL=")]
        index = arg.split("=", 1)[1]
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", index)
    else:
        assert index in runs
    # the project itself: constrained by the lock file (minus torch, installed just before)
    assert "grep -v '^torch==' /tmp/constraints.txt > /tmp/constraints-no-torch.txt" in runs
    assert "pip install -c /tmp/constraints-no-torch.txt ." in runs
    # every package the project needs is in the lock file
    assert torch_pin()
    for pkg in ("transformers", "peft", "kfp", "google-cloud-storage", "google-cloud-aiplatform"):
        assert re.search(rf"^{pkg}==", (ROOT / "constraints.txt").read_text(), re.M | re.I), pkg
    for needed in ("trainer", "components", "pipelines", "dataset", "pyproject.toml"):
        assert any(needed in a.split()[:-1] for a in copies), needed


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_runs_as_non_root_without_secrets(kind):
    ins = instructions(DOCKERFILES[kind])
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    # numeric uid[:gid]: runAsNonRoot admission (KFP's pods run with it) cannot verify a name
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]), users[-1]
    assert re.search(rf"useradd .*--uid {users[-1].split(':')[0]}\b", DOCKERFILES[kind].read_text())
    last_user = max(n for n, (i, _) in enumerate(ins) if i == "USER")
    assert not any(i in ("RUN", "COPY") and "pip install" in a for i, a in ins[last_user:])
    for i, a in ins:
        if i in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", a) or [a.split()[0]]
            assert not any(SECRETISH.search(n) for n in names), a
            assert "GOOGLE_APPLICATION_CREDENTIALS" not in a
        if i in ("COPY", "ADD"):
            assert ".env" not in shlex.split(a) and "credentials" not in a.lower()
    assert DOCKERFILES[kind].read_text().count("FROM ") == 1


def test_dockerignore_keeps_secrets_and_bulk_out():
    lines = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()}
    for entry in (".env", ".venv", ".git", "runs", "tests", "**/*credentials*.json"):
        assert entry in lines
    # nothing the images COPY is ignored
    for needed in ("trainer", "components", "pipelines", "dataset", "constraints.txt", "README.md"):
        assert needed not in lines


def _title(path: Path) -> str:
    m = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', path.read_text())
    assert m, path
    return m[1]


def test_compiled_pipeline_uses_the_images_these_dockerfiles_build(tmp_path):
    """One configured name/tag: components/images.py, the compiled YAML, the Dockerfiles and
    the build commands of the Makefile all agree."""
    import yaml

    from components import images as img
    from pipelines.compile import compile_pipeline

    assert _title(DOCKERFILES["cpu"]) == img.CPU_NAME
    assert _title(DOCKERFILES["gpu"]) == img.GPU_NAME
    configured = img.images()
    for target in ("vertex", "gke"):
        out = compile_pipeline(
            target,
            "L4",
            str(tmp_path / f"{target}.yaml"),
            image_tag="9.9.9",
            param_defaults={"output_root": "gs://b"},
        )
        spec = next(yaml.safe_load_all(Path(out).read_text()))
        used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert used == {
            configured.cpu.rsplit(":", 1)[0] + ":9.9.9",
            configured.gpu.rsplit(":", 1)[0] + ":9.9.9",
        }

    makefile = ROOT / "Makefile"
    builds = re.findall(r"docker build (.+)", makefile.read_text())
    pairs = {}
    for cmd in builds:
        argv = shlex.split(cmd)
        tag = argv[argv.index("-t") + 1]
        dockerfile = argv[argv.index("-f") + 1]
        pairs[dockerfile] = tag
    assert pairs["Dockerfile"].split(":")[0].endswith("/" + img.GPU_NAME)
    assert pairs["Dockerfile.cpu"].split(":")[0].endswith("/" + img.CPU_NAME)
    text = makefile.read_text()
    default_tag = re.search(r"^LLMFT_IMAGE_TAG \?= (\S+)", text, re.M)
    assert default_tag and default_tag[1] == img.DEFAULT_TAG
    default_repo = re.search(r"^LLMFT_IMAGE_REPO \?= (\S+)", text, re.M)
    assert default_repo and default_repo[1] == img.DEFAULT_REPO
    # One variable pair drives both `make images` and the compiled pipeline.
    assert all(
        "$(LLMFT_IMAGE_REPO)/" in t and t.endswith(":$(LLMFT_IMAGE_TAG)") for t in pairs.values()
    )
