"""Next-token cross-entropy over supervised positions, without full-vocabulary logits.

The decoder runs once; the output head then runs only on the positions whose next label is
supervised (``labels[:, 1:] != -100``), and on those in chunks of :func:`chunk_rows` rows (256 MiB of fp32 logits).
In training each chunk is wrapped in ``torch.utils.checkpoint``: its logits are freed after
the forward and recomputed in the backward, so at most one chunk of ``rows x vocabulary`` fp32
logits (and its gradient) exists at any time, instead of ``B x L x V`` (25 GB for a
151,936-token vocabulary at 32 x 512 in fp32). The extra cost is one more head matmul per chunk
in the backward. Logits are upcast to fp32 before the softmax and the sum is accumulated in
fp32, so the numbers equal the plain definition (sum of per-token cross-entropy, count) up to
float summation order.

Training (``trainer.train``) and evaluation (``trainer.evaluate``) use this one definition.
"""

from __future__ import annotations

import os
from typing import Any

IGNORE_INDEX = -100

_CHUNK_ENV = os.environ.get("LLMFT_LOSS_CHUNK_TOKENS", "")

LOSS_CHUNK_TOKENS = int(_CHUNK_ENV or 1024)
"""A fixed number of supervised positions per chunk, used when ``LLMFT_LOSS_CHUNK_TOKENS`` is
set (``0`` computes every position at once: the baseline of bench/loss_memory.py); otherwise
the rows follow the vocabulary (:func:`chunk_rows`)."""

LOSS_CHUNK_ELEMENTS = 2**26
"""Logits per chunk by default: 64 Mi fp32 values = 256 MiB (and as much again for the
log-softmax and the gradient), whatever the vocabulary: 441 rows of Qwen2.5's 151,936, 1,365
of SmolLM2's 49,152, 2,097 of Llama 2's 32,000. A fixed 1,024 rows cost 0.6 GiB per copy on a
151,936-token vocabulary, the largest term of a CPU training step on the Qwen-shaped model."""


def chunk_rows(vocab: int) -> int:
    """Supervised positions per head/cross-entropy chunk for a vocabulary of ``vocab`` tokens.

    Args:
        vocab: The output head's width.

    Returns:
        ``LLMFT_LOSS_CHUNK_TOKENS`` when set, else ``LOSS_CHUNK_ELEMENTS // vocab`` within
        [128, 8192] (a chunk too small makes many tiny matmuls).
    """
    if _CHUNK_ENV:
        return max(0, int(_CHUNK_ENV))
    return max(128, min(8192, LOSS_CHUNK_ELEMENTS // max(1, int(vocab))))


def unwrap(model: Any) -> Any:
    """The Hugging Face causal LM inside DDP / peft wrappers (LoRA layers stay injected)."""
    m = getattr(model, "module", model)
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    lm = unwrap(model)
    try:
        return lm.get_decoder(), lm.get_output_embeddings()
    except (AttributeError, NotImplementedError, ValueError):
        return None, None


def _logits(head: Any, hidden: Any, cfg: Any) -> Any:
    logits = head(hidden).float()
    scale = getattr(cfg, "logit_scale", None)
    if isinstance(scale, (int, float)):
        logits = logits * scale
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = (logits / cap).tanh() * cap
    return logits


def chunked_cross_entropy_sum(
    head: Any, hidden: Any, target: Any, cfg: Any = None, *, chunk: int | None = None
) -> Any:
    """``sum_i CE(head(hidden_i), target_i)`` over ``chunk``-row pieces, in fp32.

    Args:
        head: The output projection (an ``nn.Module``, possibly LoRA-wrapped).
        hidden: ``(N, H)`` hidden states of the supervised positions.
        target: ``(N,)`` token ids they predict.
        cfg: The model config (``logit_scale``, ``final_logit_softcapping``), or None.
        chunk: Rows per piece (<= 0: all at once; None: :func:`chunk_rows` of the head's width).

    Returns:
        A 0-d fp32 tensor; differentiable when ``hidden`` (or the head) requires grad.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    def piece(h: Any, t: Any) -> Any:
        return F.cross_entropy(_logits(head, h, cfg), t, reduction="sum")

    if chunk is None:
        width = (
            getattr(head, "out_features", None)
            or getattr(getattr(head, "weight", None), "shape", (0,))[0]
        )
        chunk = chunk_rows(width) if width else LOSS_CHUNK_TOKENS
    n = hidden.shape[0]
    if n == 0:
        return hidden.sum(dtype=torch.float32) * 0.0  # keeps the graph (DDP sees every param)
    if chunk <= 0 or n <= chunk:
        return piece(hidden, target)
    grad = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, n, chunk):
        h, t = hidden[start : start + chunk], target[start : start + chunk]
        if grad:
            # Recompute this chunk's logits in the backward instead of keeping them.
            total = total + checkpoint(piece, h, t, use_reentrant=False)
        else:
            total = total + piece(h, t)
    return total


def supervised_loss_sum(
    model: Any, inputs: dict[str, Any], labels: Any, *, chunk: int | None = None
) -> tuple[Any, Any]:
    """Sum of next-token cross-entropy over supervised positions, and their count.

    Runs the decoder, then the output head on the positions whose next label is supervised
    only, chunked (see the module docstring).

    Args:
        model: A causal LM, possibly peft- or DDP-wrapped.
        inputs: Forward kwargs (input_ids, attention_mask, position_ids...).
        labels: (B, L) labels aligned with input_ids (-100 where not supervised).
        chunk: Rows per head/cross-entropy chunk (None: :func:`chunk_rows`).

    Returns:
        ``(loss_sum, n_supervised)`` as tensors.
    """
    import torch.nn.functional as F

    decoder, head = _decoder_and_head(model)
    if decoder is None or head is None:
        # Architectures without the decoder/head split: full logits, then select.
        logits = model(**inputs, use_cache=False).logits
        target = labels[:, 1:].to(logits.device)
        sel = target != IGNORE_INDEX
        loss = F.cross_entropy(logits[:, :-1][sel].float(), target[sel], reduction="sum")
        return loss, sel.sum()
    out = decoder(**inputs, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    target = labels[:, 1:].to(hidden.device)
    sel = target != IGNORE_INDEX
    loss = chunked_cross_entropy_sum(
        head, hidden[:, :-1][sel], target[sel], unwrap(model).config, chunk=chunk
    )
    return loss, sel.sum()
