"""Model, tokenizer, LoRA and precision builders: the only place that calls peft/transformers
constructors, so every other module gets models the same way (same dtype rules, same pad rule).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, LoraSettings

# Modules whose weight is shared with the other end of the network when embeddings are tied.
_TIED_NAMES = ("lm_head", "embed_tokens", "wte", "embed_in", "embed_out")


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else is returned as is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str) -> tuple[Any, Any]:
    """Pick the autocast dtype and the dtype of the frozen base weights.

    ``auto``: bf16 on GPUs that support it; fp16 autocast on GPUs without bf16 (T4-class), with
    the LoRA weights kept in fp32 (peft's default) and a grad scaler (accelerate's fp16 mode);
    fp32 on CPU (CPU autocast is slower than fp32 for small models and changes results).

    Args:
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

    Returns:
        ``(amp_dtype or None, param_dtype)`` as torch dtypes.

    Raises:
        ConfigError: the precision cannot run on the device (fp16 on CPU, bf16 on a GPU without it).
    """
    import torch

    dev = resolve_device(device)
    on_gpu = dev.startswith("cuda")
    bf16_ok = on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        if not on_gpu:
            return None, torch.float32
        precision = "bf16" if bf16_ok else "fp16"
    if precision == "fp32":
        return None, torch.float32
    if precision == "bf16":
        if on_gpu and not bf16_ok:
            raise ConfigError("precision bf16 is not supported on this GPU; use fp16 or auto")
        # On CPU bf16 autocast runs with fp32 master weights.
        return torch.bfloat16, (torch.bfloat16 if on_gpu else torch.float32)
    if precision == "fp16":
        if not on_gpu:
            raise ConfigError("precision fp16 needs a GPU; use fp32 or bf16 on CPU")
        return torch.float16, torch.float16
    raise ConfigError(f"unknown precision {precision!r}")


def accelerate_mixed_precision(amp_dtype: Any) -> str:
    """The ``Accelerator(mixed_precision=...)`` value for an autocast dtype."""
    import torch

    return {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


def load_tokenizer(model_name_or_path: str) -> Any:
    """Load the model's tokenizer; a missing pad token falls back to EOS.

    Labels are built from positions (never by comparing ids with pad), so pad == eos is safe.

    Args:
        model_name_or_path: Anything ``trainer.models.resolve_model`` accepts.

    Returns:
        The tokenizer.
    """
    from transformers import AutoTokenizer

    from trainer.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model_name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def default_attn_implementation(device: str) -> str:
    """``flash_attention_2`` on CUDA when the package is installed, else ``sdpa``."""
    if resolve_device(device).startswith("cuda"):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def load_base_model(
    model_name_or_path: str,
    *,
    precision: str = "auto",
    device: str = "cpu",
    attn_implementation: str | None = None,
    tie_word_embeddings: bool | None = None,
) -> Any:
    """Load a causal LM for training or evaluation (weights in the precision's param dtype).

    Args:
        model_name_or_path: Anything ``trainer.models.resolve_model`` accepts.
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32`` (see ``resolve_precision``).
        device: Where to put it (``cpu``, ``cuda``, ``auto``); accelerate may move it later.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``; ``None`` picks
            ``default_attn_implementation(device)``.
        tie_word_embeddings: Override the config's tying (``False`` unties for merging).

    Returns:
        A ``transformers`` causal LM.
    """
    from transformers import AutoModelForCausalLM

    from trainer.models import resolve_model

    _, param_dtype = resolve_precision(precision, device)
    kwargs: dict[str, Any] = {
        "dtype": param_dtype,
        "attn_implementation": attn_implementation or default_attn_implementation(device),
    }
    if tie_word_embeddings is not None:
        kwargs["tie_word_embeddings"] = tie_word_embeddings
    model = AutoModelForCausalLM.from_pretrained(resolve_model(model_name_or_path), **kwargs)
    return model.to(resolve_device(device))


def _target_modules(spec: str) -> str | list[str]:
    spec = spec.strip()
    if spec == "all-linear":
        return "all-linear"
    return [m.strip() for m in spec.split(",") if m.strip()]


def build_lora(model: Any, settings: LoraSettings) -> Any:
    """Wrap ``model`` with a fresh LoRA adapter; only adapter weights are trainable.

    Args:
        model: A causal LM from ``load_base_model``.
        settings: Rank, alpha, dropout and target modules (``all-linear`` = every linear
            projection except the output head, peft's rule).

    Returns:
        A ``peft.PeftModel``.
    """
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=_target_modules(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as exc:
        raise ConfigError(f"target_modules {settings.target_modules!r}: {exc}") from None


def load_adapter(base: Any, adapter_dir: str, *, trainable: bool = False) -> Any:
    """Attach a saved LoRA adapter to ``base``.

    Args:
        base: A causal LM from ``load_base_model``.
        adapter_dir: Local directory holding ``adapter_config.json`` and the weights.
        trainable: Keep the adapter weights trainable.

    Returns:
        A ``peft.PeftModel``.
    """
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a LoRA adapter)")
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)


def _adapter_touches_tied(adapter_dir: str) -> bool:
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    names: list[str] = []
    tm = cfg.get("target_modules") or []
    names += [tm] if isinstance(tm, str) else list(tm)
    names += list(cfg.get("modules_to_save") or [])
    return any(n.split(".")[-1] in _TIED_NAMES for n in names)


def merge_and_save(
    base_model: str, adapter_dir: str, out_dir: str, *, tokenizer: Any = None
) -> str:
    """Merge a LoRA adapter into fp32 base weights and save a plain ``from_pretrained`` model.

    Tied embeddings: when the adapter touches the input embedding or the output head of a
    model that ties them, the base is loaded untied (head cloned from the embedding) so the
    merge changes only the module it was trained on; otherwise the tie is kept.

    Args:
        base_model: Anything ``trainer.models.resolve_model`` accepts.
        adapter_dir: Local adapter directory.
        out_dir: Destination directory (created).
        tokenizer: Saved next to the weights when given.

    Returns:
        ``out_dir``.
    """
    untie = _adapter_touches_tied(adapter_dir)
    base = load_base_model(
        base_model, precision="fp32", device="cpu", tie_word_embeddings=False if untie else None
    )
    if untie:
        emb, head = base.get_input_embeddings(), base.get_output_embeddings()
        if head is not None and emb is not None and head.weight.shape == emb.weight.shape:
            head.weight.data = emb.weight.data.clone()
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    os.makedirs(out_dir, exist_ok=True)
    merged.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
