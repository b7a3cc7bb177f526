"""QLoRA on the CPU: a 4-bit / 8-bit bitsandbytes base, fp32 adapters, training, eval, merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer import modeling
from trainer.config import ConfigError, EvalConfig, TrainConfig

SAMPLE = Path(__file__).resolve().parents[2] / "dataset" / "sample.jsonl"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("qdata")
    lines = SAMPLE.read_text().splitlines()
    (d / "train.jsonl").write_text("\n".join(lines[:96]) + "\n")
    (d / "eval.jsonl").write_text("\n".join(lines[-24:]) + "\n")
    return str(d / "train.jsonl"), str(d / "eval.jsonl")


def _cfg(**kw) -> TrainConfig:
    base = {
        "max_steps": 8,
        "batch_size": 8,
        "lora_r": 4,
        "lora_alpha": 8,
        "learning_rate": 5e-3,
        "warmup_ratio": 0.0,
        "log_every": 1,
        "seed": 3,
        "quantization": "4bit",
    }
    return TrainConfig(**{**base, **kw})


def test_config_refuses_unknown_quantization() -> None:
    with pytest.raises(ConfigError, match="quantization must be none, 4bit or 8bit"):
        TrainConfig(quantization="nf4")


def test_4bit_base_is_nf4_with_double_quantization(tiny_model_dir: str) -> None:
    import bitsandbytes as bnb

    model = modeling.load_base_model(tiny_model_dir, device="cpu", quantization="4bit")
    q = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert q, "no Linear4bit layer"
    state = q[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # nested = double quantization
    assert model.config.quantization_config.bnb_4bit_use_double_quant


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_lora_on_a_quantized_base_trains_fp32_adapters_only(
    tiny_model_dir: str, quantization: str
) -> None:
    import torch

    from trainer.quantization import prepare_for_training

    model = modeling.load_base_model(tiny_model_dir, device="cpu", quantization=quantization)
    model = prepare_for_training(model, gradient_checkpointing=True)
    model = modeling.build_lora(model, _cfg())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    ids = torch.randint(0, 200, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    # lora_B starts at zero, so on the first step only the B factors receive gradient.
    b = [p for n, p in trainable.items() if "lora_B" in n]
    assert b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in b)


def test_qlora_training_lowers_the_loss_and_leaves_the_base_alone(
    data, tmp_path, tiny_model_dir: str
) -> None:
    from safetensors.torch import load_file

    from trainer.train import train

    before = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    out = tmp_path / "out"
    lines: list[str] = []
    m = train(_cfg(merge=True), data[0], data[1], str(out), log=lines.append)
    losses = m["loss_per_step"]
    assert sum(losses[-3:]) < sum(losses[:3])
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all(str(t.dtype) == "torch.float32" for t in adapter.values())
    after = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert all((before[k] == after[k]).all() for k in before)
    # merge says it merges into the unquantized weights from disk.
    assert any("training loaded the base 4bit" in line for line in lines)
    assert (out / "merged" / "config.json").exists()
    cfg = json.loads((out / "merged" / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert json.loads((out / "train_config.json").read_text())["quantization"] == "4bit"


def test_evaluate_compares_base_and_tuned_on_the_same_quantized_base(
    data, tmp_path, tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import evaluate as ev
    from trainer.train import train

    out = tmp_path / "adapter"
    train(_cfg(max_steps=4), data[0], None, str(out), log=lambda _: None)
    seen: list[str] = []
    real = modeling.load_base_model

    def spy(*a, **kw):
        seen.append(kw.get("quantization", "none"))
        return real(*a, **kw)

    monkeypatch.setattr(modeling, "load_base_model", spy)
    result = ev.evaluate(
        EvalConfig(
            max_new_tokens=4, eval_batch_size=8, max_eval_samples=4, gate_min_improvement=-1
        ),
        tiny_model_dir,
        str(out),
        data[1],
        str(tmp_path / "eval"),
        quantization="4bit",
        log=lambda _: None,
    )
    assert seen == ["4bit"]  # one quantized base; tuned = that base + the adapter
    assert set(result.metrics) == {"base", "tuned"}


def test_cli_trains_with_quantization(data, tmp_path, tiny_model_dir: str) -> None:
    import subprocess
    import sys

    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("llmft")),
            "train",
            "--data",
            data[0],
            "--output",
            str(out),
            "--model",
            tiny_model_dir,
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--lora-r",
            "4",
            "--quantization",
            "4bit",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "train_config.json").read_text())["quantization"] == "4bit"
