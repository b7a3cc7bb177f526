"""Model/LoRA/precision builders: only adapters train, merge round trip, precision rules."""

from __future__ import annotations

import pytest

from trainer.config import ConfigError, LoraSettings
from trainer.modeling import (
    build_lora,
    load_adapter,
    load_base_model,
    load_tokenizer,
    merge_and_save,
    resolve_precision,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_precision_on_cpu():
    import torch

    assert resolve_precision("auto", "cpu") == (None, torch.float32)
    assert resolve_precision("fp32", "cpu") == (None, torch.float32)
    assert resolve_precision("bf16", "cpu") == (torch.bfloat16, torch.float32)
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((7, 5), ("float16", "float16")),  # T4
        ((7, 0), ("float16", "float16")),  # V100
        ((8, 0), ("bfloat16", "bfloat16")),  # A100
        ((8, 9), ("bfloat16", "bfloat16")),  # L4
        ((9, 0), ("bfloat16", "bfloat16")),  # H100
    ],
    ids=["t4", "v100", "a100", "l4", "h100"],
)
def test_precision_auto_follows_compute_capability(monkeypatch, capability, expected):
    """bf16 only where it is native: torch's is_bf16_supported() says True on a T4 (it counts
    emulation), so it must not decide."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    amp, param = resolve_precision("auto", "cuda")
    assert (str(amp).split(".")[-1], str(param).split(".")[-1]) == expected
    if capability < (8, 0):
        with pytest.raises(ConfigError, match="no native bf16"):
            resolve_precision("bf16", "cuda")
        from trainer.modeling import grad_scaler

        assert grad_scaler(amp, "cuda").is_enabled()
    else:
        assert resolve_precision("bf16", "cuda")[0] is torch.bfloat16
    assert resolve_precision("fp16", "cuda")[0] is torch.float16


def test_fp16_keeps_adapter_weights_in_fp32(tiny_model_dir):
    """T4 recipe: base weights fp16, LoRA weights fp32 (peft's autocast_adapter_dtype)."""
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float16)
    model = build_lora(base, LoraSettings(lora_r=4))
    dtypes = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert dtypes and set(dtypes.values()) == {torch.float32}
    assert model.get_base_model().lm_head.weight.dtype == torch.float16


def test_all_linear_targets_every_projection_but_not_the_head(tiny_model_dir):
    model = build_lora(load_base_model(tiny_model_dir, precision="fp32"), LoraSettings())
    targeted = {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in n and "lora" in n for n, _ in model.named_parameters())


def test_bad_target_modules_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="nope"):
        build_lora(load_base_model(tiny_model_dir), LoraSettings(target_modules="nope"))


def _train_a_few_steps(model, tok, steps=3):
    import torch

    from trainer.batching import collate_padded
    from trainer.formatting import encode_row
    from trainer.train import supervised_loss_sum

    rows = [
        {"instruction": "Count the words.", "input": "a b c", "output": "3"},
        {"instruction": "Repeat.", "input": "kiwi boat", "output": "kiwi boat"},
    ]
    ex = [
        {"input_ids": e.input_ids, "labels": e.labels} for e in (encode_row(tok, r) for r in rows)
    ]
    batch = collate_padded(ex, tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss, n = supervised_loss_sum(model, batch.inputs, batch.labels)
        (loss / n).backward()
        opt.step()
        opt.zero_grad()
    return batch


def test_only_adapter_weights_train(tiny_model_dir, tiny_tokenizer):
    import torch

    model = build_lora(load_base_model(tiny_model_dir, precision="fp32"), LoraSettings(lora_r=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train_a_few_steps(model, tiny_tokenizer)
    after = dict(model.named_parameters())
    for n, p in before.items():
        if n in trainable:
            continue
        assert torch.equal(p, after[n].detach()), f"base weight changed: {n}"
    changed = [n for n in trainable if not torch.equal(before[n], after[n].detach())]
    assert len(changed) == len(trainable)  # lora_A and lora_B everywhere moved


@pytest.mark.parametrize("targets", ["all-linear", "q_proj,v_proj,lm_head"])
def test_merge_round_trip_matches_base_plus_adapter(
    tiny_model_dir, tiny_tokenizer, tmp_path, targets
):
    import warnings

    import torch
    from transformers import AutoModelForCausalLM

    model = build_lora(
        load_base_model(tiny_model_dir, precision="fp32"),
        LoraSettings(lora_r=4, target_modules=targets),
    )
    batch = _train_a_few_steps(model, tiny_tokenizer)
    adapter = tmp_path / "adapter"
    model.save_pretrained(str(adapter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged_dir = merge_and_save(
            tiny_model_dir, str(adapter), str(tmp_path / "merged"), tokenizer=tiny_tokenizer
        )
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
        reloaded = load_adapter(load_base_model(tiny_model_dir, precision="fp32"), str(adapter))
    base = load_base_model(tiny_model_dir, precision="fp32").eval()
    with torch.no_grad():
        want = reloaded.eval()(**batch.inputs).logits
        got = merged(**batch.inputs).logits
        plain = base(**batch.inputs).logits
    assert (got - want).abs().max().item() < 1e-4
    assert (plain - want).abs().max().item() > 1e-3  # the adapter did something
    emb = merged.get_input_embeddings().weight
    head = merged.get_output_embeddings().weight
    if "lm_head" in targets:
        # Untied for the merge: the embedding keeps the base weights, the head took the delta.
        assert torch.equal(emb, base.get_input_embeddings().weight)
        assert not torch.equal(emb, head)
    else:
        assert torch.equal(emb, head)  # tie kept
    assert load_tokenizer(merged_dir).chat_template == tiny_tokenizer.chat_template


def test_load_tokenizer_falls_back_to_eos_for_pad(tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, d)
    import json

    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["pad_token"] = None
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(str(d))
    assert tok.pad_token_id == tok.eos_token_id
