"""QLoRA: the quantized base (bitsandbytes) and its preparation for training adapters.

The only module that calls ``BitsAndBytesConfig`` and peft's k-bit preparation. ``4bit`` is
QLoRA's recipe (Dettmers et al. 2023): NF4 weights with double quantization of the absmax
constants, matmuls in the training precision's compute dtype. ``8bit`` is LLM.int8. Both run on
the CPU too (bitsandbytes >= 0.50 has CPU kernels), which is how the tests exercise them.
"""

from __future__ import annotations

from typing import Any

QUANTIZATIONS = ("none", "4bit", "8bit")
"""Values of ``TrainConfig.quantization``."""


def is_quantized(quantization: str | None) -> bool:
    """Whether ``quantization`` asks for a bitsandbytes base (``4bit`` or ``8bit``)."""
    return (quantization or "none") != "none"


def bnb_config(quantization: str, compute_dtype: Any) -> Any:
    """The ``BitsAndBytesConfig`` for ``quantization``, or ``None`` for ``none``.

    Args:
        quantization: ``none``, ``4bit`` or ``8bit``.
        compute_dtype: dtype of the 4-bit matmuls (the training precision: bf16/fp16 on GPU,
            fp32 on CPU).

    Raises:
        ValueError: an unknown value.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def prepare_for_training(model: Any, *, gradient_checkpointing: bool) -> Any:
    """peft's k-bit preparation: frozen base, fp32 norms and other small params, input grads.

    ``prepare_model_for_kbit_training`` upcasts the non-quantized parameters to fp32 and, with
    gradient checkpointing, makes the embedding output require grad so the checkpointed blocks
    have something to backpropagate through (the quantized weights never do).
    """
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
