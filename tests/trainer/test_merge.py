"""Streaming LoRA merge: stored dtype kept, shards and index rewritten, logits of base+adapter."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from trainer import modeling
from trainer.config import ConfigError
from trainer.modeling import merge_and_save

VOCAB = 512


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def qwen_bf16(tmp_path_factory) -> str:
    """A 2-layer Qwen2-shaped random model (GQA, qkv biases, tied) saved in bf16, 2 shards."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    d = tmp_path_factory.mktemp("qwen-bf16")
    model.save_pretrained(d, max_shard_size=total * 6 // 10)
    assert len(list(d.glob("model-*.safetensors"))) == 2
    return str(d)


def _adapter(base_dir: str, out: Path, **lora_kwargs) -> str:
    """A saved LoRA with random non-zero factors (a fresh LoRA's B is zero: nothing to merge)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = LoraConfig(**{"r": 4, "lora_alpha": 8, "init_lora_weights": False, **lora_kwargs})
        model = get_peft_model(base, cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n or "modules_to_save" in n:
                    p.add_(torch.randn_like(p) * 0.05)
        model.save_pretrained(str(out))
    return str(out)


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def _reference(base_dir: str, adapter: str, ids):
    """Base (upcast to fp32, exact) + adapter through peft, unmerged; and the plain base."""
    import torch
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        plain = _logits(base, ids)
        peft_model = modeling.load_adapter(base, adapter).eval()
        return _logits(peft_model, ids), plain


def _merge(base_dir: str, adapter: str, out: Path, **kw) -> tuple[str, list[str]]:
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merge_and_save(base_dir, adapter, str(out), log=lines.append, **kw)
    return str(out), lines


def _tensors(d: str) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


CASES = {
    "all-linear": {"target_modules": "all-linear"},
    "head": {"target_modules": ["q_proj", "v_proj", "lm_head"]},
    "embedding": {"target_modules": ["embed_tokens", "o_proj"]},
    "rslora-patterns": {
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "use_rslora": True,
        "lora_alpha": 16,
    },
    "patterns": {
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "rank_pattern": {"q_proj": 2},
        "alpha_pattern": {"v_proj": 32},
    },
    "lora-bias": {"target_modules": ["q_proj", "k_proj", "v_proj"], "lora_bias": True},
    "modules-to-save": {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
}


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_merge_matches_base_plus_adapter_in_bf16(qwen_bf16, tmp_path, case):
    import torch
    from transformers import AutoModelForCausalLM

    adapter = _adapter(qwen_bf16, tmp_path / "adapter", **CASES[case])
    merged_dir, lines = _merge(qwen_bf16, adapter, tmp_path / "merged")
    assert any("streaming 2 safetensors file(s)" in x and "BF16" in x for x in lines), lines

    # Same layout as the base: two shards and an index naming every tensor, bf16 throughout.
    shards = sorted(p.name for p in Path(merged_dir).glob("*.safetensors"))
    assert shards == sorted(p.name for p in Path(qwen_bf16).glob("*.safetensors"))
    index = json.loads((Path(merged_dir) / "model.safetensors.index.json").read_text())
    tensors = _tensors(merged_dir)
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype="auto").eval()
    assert merged.dtype == torch.bfloat16

    ids = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))
    want, plain = _reference(qwen_bf16, adapter, ids)
    got = _logits(merged.float(), ids)
    effect = (plain - want).abs().max().item()
    err = (got - want).abs().max().item()
    assert effect > 0.05  # the adapter changes the model
    assert err < 0.1 * effect  # only bf16 rounding of the merged weights is left

    base = _tensors(qwen_bf16)
    emb, head = "model.embed_tokens.weight", "lm_head.weight"
    cfg = json.loads((Path(merged_dir) / "config.json").read_text())
    if case in ("head", "modules-to-save"):
        # Untied: the embedding keeps the base weights, the head took the change.
        assert torch.equal(tensors[emb], base[emb])
        assert not torch.equal(tensors[head], base[emb])
        assert cfg["tie_word_embeddings"] is False
    elif case == "embedding":
        assert not torch.equal(tensors[emb], base[emb])
        assert torch.equal(tensors[head], base[emb])  # the head starts from the base embedding
        assert cfg["tie_word_embeddings"] is False
    else:
        assert head not in tensors and cfg["tie_word_embeddings"] is True  # tie kept
        assert torch.equal(tensors[emb], base[emb])


def test_merged_weight_is_the_fp32_sum_rounded_once(qwen_bf16, tmp_path):
    """Each targeted weight is bf16(W + scale * B @ A) computed in fp32 (not a bf16 sum)."""
    import torch
    from safetensors.torch import load_file

    adapter = _adapter(qwen_bf16, tmp_path / "adapter", target_modules=["q_proj"], use_rslora=True)
    merged_dir, _ = _merge(qwen_bf16, adapter, tmp_path / "merged")
    lora = load_file(Path(adapter) / "adapter_model.safetensors")
    a = lora["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    b = lora["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    name = "model.layers.1.self_attn.q_proj.weight"
    w = _tensors(qwen_bf16)[name].float()
    want = w + (8 / 4**0.5) * (b @ a)  # rslora: alpha / sqrt(r)
    got = _tensors(merged_dir)[name]
    assert got.dtype == torch.bfloat16
    assert (want - w).abs().max() > 0.05  # a real change, far above bf16 rounding
    torch.testing.assert_close(got.float(), want, rtol=2**-7, atol=1e-6)
    wrong = w + (8 / 4) * (b @ a)  # alpha / r: the scale a bug would use
    assert not torch.allclose(got.float(), wrong, rtol=2**-7, atol=1e-6)


def test_merging_a_few_rows_at_a_time_gives_the_whole_tensor_merge(
    qwen_bf16, tmp_path, monkeypatch
):
    adapter = _adapter(
        qwen_bf16, tmp_path / "adapter", target_modules=["embed_tokens", "lm_head", "q_proj"]
    )
    whole, _ = _merge(qwen_bf16, adapter, tmp_path / "whole")
    monkeypatch.setattr(modeling, "MERGE_CHUNK_ELEMENTS", 100)  # ~2 rows per step
    chunked, _ = _merge(qwen_bf16, adapter, tmp_path / "chunked")
    a, b = _tensors(whole), _tensors(chunked)
    assert a.keys() == b.keys()
    import torch

    for k in a:
        # Blocks of other sizes may sum in another order: at most one bf16 rounding step apart.
        torch.testing.assert_close(b[k].float(), a[k].float(), rtol=2**-7, atol=1e-6)
        assert (a[k] != b[k]).float().mean() < 1e-3, k


def test_fan_in_fan_out_conv1d_merges_transposed(tmp_path):
    """GPT-2 stores Conv1D weights in x out; peft's delta there is (B @ A).T."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=VOCAB,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    ).save_pretrained(base_dir)
    adapter = _adapter(
        str(base_dir), tmp_path / "adapter", target_modules=["c_attn", "c_fc"], fan_in_fan_out=True
    )
    merged_dir, lines = _merge(str(base_dir), adapter, tmp_path / "merged")
    assert any("streaming" in x for x in lines), lines
    ids = torch.randint(3, VOCAB, (1, 16), generator=torch.Generator().manual_seed(3))
    want, plain = _reference(str(base_dir), adapter, ids)
    got = _logits(AutoModelForCausalLM.from_pretrained(merged_dir).eval(), ids)
    assert (plain - want).abs().max().item() > 0.05
    assert (got - want).abs().max().item() < 1e-4


def test_adapters_streaming_cannot_express_fall_back_to_peft(qwen_bf16, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    adapter = _adapter(qwen_bf16, tmp_path / "adapter", target_modules=["q_proj"], use_dora=True)
    merged_dir, lines = _merge(qwen_bf16, adapter, tmp_path / "merged")
    assert any("in memory with peft (adapter uses use_dora)" in x for x in lines), lines
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype="auto").eval()
    assert merged.dtype == torch.bfloat16  # loaded in its stored dtype, not fp32
    ids = torch.randint(3, VOCAB, (1, 16), generator=torch.Generator().manual_seed(4))
    want, plain = _reference(qwen_bf16, adapter, ids)
    got = _logits(merged.float(), ids)
    assert (got - want).abs().max().item() < 0.1 * (plain - want).abs().max().item()


def test_quantized_training_merges_the_unquantized_weights_and_says_so(qwen_bf16, tmp_path):
    adapter = _adapter(qwen_bf16, tmp_path / "adapter", target_modules=["q_proj"])
    _, lines = _merge(qwen_bf16, adapter, tmp_path / "merged", quantization="4bit")
    assert any("4bit" in x and "unquantized" in x for x in lines), lines


def test_a_quantized_checkpoint_is_refused(qwen_bf16, tmp_path):
    import shutil

    base = tmp_path / "gptq"
    shutil.copytree(qwen_bf16, base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (base / "config.json").write_text(json.dumps(cfg))
    adapter = _adapter(qwen_bf16, tmp_path / "adapter", target_modules=["q_proj"])
    with pytest.raises(ConfigError, match=r"config.json: the base checkpoint is gptq-quantized"):
        merge_and_save(str(base), adapter, str(tmp_path / "merged"))


def test_merge_refuses_to_overwrite_its_base(qwen_bf16, tmp_path):
    adapter = _adapter(qwen_bf16, tmp_path / "adapter", target_modules=["q_proj"])
    with pytest.raises(ValueError, match="cannot overwrite its base"):
        merge_and_save(qwen_bf16, adapter, qwen_bf16)


def test_adapter_touches_tied_reads_lists_and_regexes(tmp_path):
    def touches(**cfg) -> bool:
        (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
        return modeling._adapter_touches_tied(str(tmp_path))

    assert touches(target_modules=["q_proj", "lm_head"])
    assert touches(target_modules=["q_proj"], modules_to_save=["embed_tokens"])
    assert touches(target_modules=r".*\.(q_proj|lm_head)")
    assert not touches(target_modules="all-linear")
    assert not touches(target_modules=["q_proj", "v_proj"])
