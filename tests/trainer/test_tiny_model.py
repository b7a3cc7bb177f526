"""The built-in tiny model: deterministic build, loads with from_pretrained, generates."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from trainer.tiny_model import IM_END, PAD_TOKEN, build_tiny_model


def _digest(d: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((d / name).read_bytes()).hexdigest()
        for name in ("model.safetensors", "tokenizer.json", "config.json")
    }


def test_build_is_deterministic_for_a_seed(tmp_path: Path, tiny_model_dir: str) -> None:
    again = Path(build_tiny_model(tmp_path / "again", seed=0))
    assert _digest(again) == _digest(Path(tiny_model_dir))
    other = Path(build_tiny_model(tmp_path / "other", seed=1))
    assert _digest(other)["model.safetensors"] != _digest(again)["model.safetensors"]


def test_loads_with_auto_classes_and_generates(tiny_model_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 5_000_000
    assert model.config.model_type == "qwen2"
    assert tok.eos_token == IM_END and tok.pad_token == PAD_TOKEN
    assert tok.pad_token_id != tok.eos_token_id
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "Copy the text below.\n\ncat dog"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_tokenizer_ids_match_the_trained_tokenizer(tiny_model_dir: str) -> None:
    """AutoTokenizer (Qwen2Tokenizer for qwen2) must not re-split text differently."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(str(Path(tiny_model_dir) / "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in [
        "Reverse the order of the words.\n\ncat dog horse",
        "Give me three tips for staying healthy, please! 12345 it's",
        "  spaces\tand\r\nnewlines  ",
        "中文 и кириллица ✓",
    ]:
        assert tok(text, add_special_tokens=False)["input_ids"] == raw.encode(text).ids
        assert tok.decode(raw.encode(text).ids) == text


def test_chat_template_is_chatml(tiny_tokenizer) -> None:
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_resolve_model(tmp_path: Path, tiny_model_dir: str) -> None:
    from trainer.models import resolve_model

    assert resolve_model("llmft-tiny") == tiny_model_dir
    assert resolve_model("") == tiny_model_dir
    assert resolve_model(tiny_model_dir) == tiny_model_dir
    assert resolve_model(f"file://{tiny_model_dir}") == tiny_model_dir
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_model(str(tmp_path / "missing"))
