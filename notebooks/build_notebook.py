"""Write notebooks/quickstart.ipynb from the cells below (run: python notebooks/build_notebook.py).

Cells tagged ``ci`` run headless in the test suite (tests/pipelines/test_notebook.py); cells
tagged ``cloud`` need your own Google Cloud project or Kubeflow and never run in CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).with_name("quickstart.ipynb")

CELLS: list[tuple[str, str, str]] = [
    (
        "md",
        "",
        """\
# llmft quickstart

LoRA fine-tuning of an open LLM as a Kubeflow pipeline: **validate → upload → train → evaluate →
publish**, with a run folder that always ends with `status.txt`.

1. compile the pipeline for Vertex AI and for Kubeflow on GKE,
2. run the whole DAG **locally** (`kfp.local`, no cloud, no Docker) on the built-in tiny model and
   the bundled sample data, and look at the results,
3. submit, follow and schedule runs on **your own** Vertex AI project or Kubeflow cluster.

Parts 1 and 2 run anywhere (CI runs them on every change). Part 3 needs your project: see
`.env.example` and `llmft gcp-setup --dry-run`.""",
    ),
    (
        "code",
        "ci",
        """\
import os
from pathlib import Path

# Run from the repository root so relative paths (dataset/sample.jsonl, runs/) resolve.
if Path.cwd().name == "notebooks":
    os.chdir(Path.cwd().parent)

from pipelines import api

OUTPUT_ROOT = os.environ.get("LLMFT_NOTEBOOK_OUTPUT", "runs")
BUILD_DIR = os.environ.get("LLMFT_NOTEBOOK_BUILD", "build")""",
    ),
    (
        "md",
        "",
        """\
## 1. Compile

`vertex` gives the single-document YAML Vertex AI Pipelines accepts (the GPU as
`accelerator` on the train and evaluate steps); `gke` adds a platform spec with the node selector
`cloud.google.com/gke-accelerator` and the `nvidia.com/gpu` toleration, sized to fit the
smallest node of the GPU (here n1-standard-4 with a T4). Upload each file to its own backend's UI
(Vertex AI Pipelines, or Kubeflow) and run it with its defaults; `llmft submit` refuses a file
compiled for the other backend.""",
    ),
    (
        "code",
        "ci",
        """\
from pipelines.submit import pipeline_parameters

# Cloud packages name your registry (where `make images` pushed) and your bucket (where run
# folders go); compile refuses placeholders that could only fail at run time.
IMAGE_REPO = os.environ.get("LLMFT_IMAGE_REPO") or "us-central1-docker.pkg.dev/your-project/llmft"
BUCKET = os.environ.get("BUCKET_NAME") or "your-bucket"
vertex_yaml = api.compile(
    "vertex", accelerator="L4", output=f"{BUILD_DIR}/pipeline-vertex.yaml",
    bucket=BUCKET, image_repo=IMAGE_REPO,
)
gke_yaml = api.compile(
    "gke", accelerator="T4", output=f"{BUILD_DIR}/pipeline-gke.yaml",
    bucket=BUCKET, image_repo=IMAGE_REPO,
)
params = pipeline_parameters(vertex_yaml)
print(vertex_yaml, gke_yaml, sep="\\n")
print(f"{len(params)} parameters, e.g.:")
for name in ("dataset_uri", "model", "max_steps", "output_root"):
    print(f"  {name} = {params[name].default!r}")""",
    ),
    (
        "md",
        "",
        """\
## 2. Run locally

The whole DAG in this Python process's environment, on the tiny model and 20 training steps
so it finishes in about a minute on a laptop. Drop the overrides for the full default run.""",
    ),
    (
        "code",
        "ci",
        """\
result = api.run_local(
    output_root=OUTPUT_ROOT,
    max_steps=20,
    batch_size=8,
    max_eval_samples=16,
    max_new_tokens=8,
)
print(result.status, result.run_dir)""",
    ),
    (
        "code",
        "ci",
        """\
import json

assert result.ok, result.error
print("steps:")
for step, info in result.steps.items():
    print(f"  {step:<18} {info.get('state', ''):<10} {info.get('wall_s', 0):6.1f}s")
print("metrics (base -> tuned):")
for key, base in result.metrics["base"].items():
    tuned = result.metrics["tuned"].get(key)
    if isinstance(base, (int, float)) and isinstance(tuned, (int, float)):
        print(f"  {key:<12} {base:10.4f} -> {tuned:10.4f}")
print(sorted(p.name for p in Path(result.run_dir).iterdir()))""",
    ),
    (
        "code",
        "ci",
        """\
from IPython.display import Image, Markdown, display

curve = Path(result.run_dir) / "final_model" / "loss_curve.png"
if curve.exists():
    display(Image(filename=str(curve)))
report = Path(result.run_dir) / "eval_report.md"
if report.exists():
    display(Markdown(report.read_text()))
api.status(result.run_dir)""",
    ),
    (
        "md",
        "",
        """\
## 3. Your cloud (not run in CI)

Needs a project set up with `llmft gcp-setup` (APIs, bucket, least-privilege service account),
the images pushed with `make images`, and `gcloud auth application-default login`. Settings come
from keyword arguments, the environment or `.env` (`PROJECT_ID`, `REGION`, `BUCKET_NAME`, ...).

The dataset is staged to `gs://BUCKET/staging/datasets/<sha256>.jsonl` (uploaded once per
content) and the run writes its folder under `gs://BUCKET/experiments/`.""",
    ),
    (
        "code",
        "cloud",
        """\
run = api.submit(
    "vertex",
    project="your-project",
    region="us-central1",
    bucket="your-bucket",
    data="dataset/sample.jsonl",
    model="Qwen/Qwen2.5-0.5B-Instruct",
    accelerator="L4",
    service_account="llmft-pipelines@your-project.iam.gserviceaccount.com",
    params={"max_steps": 300},
)
print(run.run_id, run.url)""",
    ),
    (
        "code",
        "cloud",
        """\
api.status(run.run_id, backend="vertex", project="your-project", region="us-central1")""",
    ),
    (
        "code",
        "cloud",
        """\
# Kubeflow Pipelines on GKE, e.g. after: kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80
kfp_run = api.submit(
    "kfp",
    host="http://localhost:8080",
    bucket="your-bucket",
    data="dataset/sample.jsonl",
    accelerator="L4",
    service_account="pipeline-runner",
)
print(kfp_run.run_id, kfp_run.url)""",
    ),
    (
        "code",
        "cloud",
        """\
# Every weekday at 03:00 Paris time; runs on an unchanged dataset end early as SKIPPED.
schedule = api.schedule(
    "vertex",
    cron="0 3 * * 1-5",
    timezone="Europe/Paris",
    project="your-project",
    bucket="your-bucket",
    data="gs://your-bucket/data/train.jsonl",
    skip_if_unchanged=True,
)
print(schedule.schedule_id, schedule.cron)""",
    ),
]


def build() -> nbformat.NotebookNode:
    """The notebook object (cells, tags, kernel metadata)."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, tag, src) in enumerate(CELLS):
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell["id"] = f"cell-{i:02d}"  # stable ids: rebuilding gives the same file
        if tag:
            cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    return nb


def render() -> str:
    """The notebook as the text written to disk."""
    return nbformat.writes(build()) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
