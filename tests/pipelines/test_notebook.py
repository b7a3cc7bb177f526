"""The quickstart notebook: its local part runs headless (nbclient); cloud cells are never run."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"

pytestmark = pytest.mark.timeout(600)


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def test_notebook_is_built_from_its_script():
    sys.path.insert(0, str(NOTEBOOK.parent))
    try:
        import build_notebook
    finally:
        sys.path.remove(str(NOTEBOOK.parent))
    assert NOTEBOOK.read_text(encoding="utf-8") == build_notebook.render(), (
        "notebooks/quickstart.ipynb is stale: run python notebooks/build_notebook.py"
    )


def test_every_code_cell_is_tagged_ci_or_cloud_and_cloud_comes_last():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(len(tags(c)) == 1 and tags(c)[0] in ("ci", "cloud") for c in code)
    kinds = [tags(c)[0] for c in code]
    assert "cloud" in kinds and kinds == sorted(kinds)  # every ci cell before the cloud ones
    cloud_src = "\n".join(c.source for c in code if tags(c) == ["cloud"])
    for call in ("api.submit(", "api.status(", "api.schedule("):
        assert call in cloud_src
    assert all(not c.get("outputs") for c in code)  # committed without outputs


def test_local_cells_execute_headless(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    ci = copy.deepcopy(nb)
    ci.cells = [c for c in nb.cells if c.cell_type == "code" and tags(c) == ["ci"]]
    monkeypatch.setenv("LLMFT_NOTEBOOK_OUTPUT", str(tmp_path / "runs"))
    monkeypatch.setenv("LLMFT_NOTEBOOK_BUILD", str(tmp_path / "build"))
    client = NotebookClient(
        ci, timeout=540, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in ci.cells
        for o in c.get("outputs", [])
    )
    assert "SUCCESS" in text
    assert "eval_loss" in text
    assert (tmp_path / "build" / "pipeline-vertex.yaml").is_file()
    runs = list((tmp_path / "runs" / "experiments").glob("finetune_job_*"))
    assert len(runs) == 1 and (runs[0] / "status.txt").read_text().startswith("SUCCESS")
    # the last ci cell shows api.status of the run folder
    assert "RunStatus" in text and "succeeded=True" in text
