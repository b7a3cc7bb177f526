"""Preflight: will a LoRA run fit? Peak accelerator memory estimated from ``config.json`` alone.

``estimate`` models what ``trainer.train`` allocates on one device for one optimizer step,
from the architecture numbers in the model's ``config.json`` (no weights are read) and the
``TrainConfig``. It is an upper-bound style estimate: every choice below that could go
either way is taken on the larger side, and each is written down here.

Notation: ``T = batch_size * max_seq_len`` tokens in a micro-batch (the worst case of both
batching modes: length-grouped padding pads to the longest row, packing fills rows of at most
``max_seq_len``; a length-grouped micro-batch split into pieces by ``micro_batch_tokens``, as
on the CPU by default, counts one piece: ``min(T, max(cap, max_seq_len))``), ``h``
hidden size, ``q = heads * head_dim``, ``kv = kv_heads * head_dim``,
``i`` intermediate size, ``V`` vocabulary, ``n`` layers, ``r`` LoRA rank, ``p`` bytes of the
activation dtype (2 under bf16/fp16 autocast, 4 in fp32).

Persistent (whole run)
    * Base weights in the parameter dtype (bf16/fp16 on GPU, fp32 on CPU or ``precision
      fp32``). Quantized linears (bitsandbytes): ``4bit`` NF4 with double quantization is
      0.5 byte/param + ~0.127 bit/param of quantization constants (Dettmers et al. 2023,
      "QLoRA", section 3: one fp32 absmax per 64 weights quantized to 8 bits with a second
      level per 256 blocks); ``8bit`` LLM.int8 is 1 byte/param + one fp32 scale per output
      row (Dettmers et al. 2022). Embeddings, the LM head, norms and biases are never
      quantized by bitsandbytes: they stay in the compute dtype and are counted apart.
    * LoRA adapters on every linear layer but the head (peft ``all-linear``), kept in fp32
      (peft's default): weights 4 + gradient 4 + AdamW ``exp_avg``/``exp_avg_sq`` 8 =
      16 bytes per trainable parameter, plus the autocast cache of their half copies (p).
    * DDP (``accelerator_count > 1``): gradient buckets, another 4 bytes per trainable
      parameter. DDP replicates the model: per-GPU memory does not shrink with more GPUs.

Activations saved for backward, per token per decoder layer (Llama/Qwen/Mistral layout:
RMSNorm, attention, RMSNorm, SwiGLU MLP). Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", eq. 1) give ``s*b*h*(34 + 5*a*s/h)`` bytes per
layer for a GPT layer in 16-bit without recomputation; the ``5*a*s/h`` term is the L x L
attention matrix, which memory-efficient attention (SDPA / flash) never stores (it keeps the
output and a log-sum-exp per head instead), leaving ``34*s*b*h``. Adapted to this code path
(peft LoRA on frozen base weights, measured tensor by tensor with
``torch.autograd.graph.saved_tensors_hooks`` on transformers 5 + peft 0.21; see
``bench/plan_accuracy.py --saved``):

    * 2 RMSNorms, each saving its input upcast to fp32 and a rsqrt: ``2 * (4h + 4)``
    * attention: q, k, v, output (``p`` each) + fp32 log-sum-exp per head. With a padding or
      packing mask, transformers' SDPA path repeats k/v to all heads (``repeat_kv``), so k and
      v count at ``q`` width (conservative; flash-attention varlen keeps ``kv``):
      ``4 * q * p + 4 * heads`` (``eager`` adds the ``heads * L`` scores and probabilities)
    * MLP: gate output, up output, SiLU output: ``3 * i * p``
    * LoRA: frozen linears save nothing for their own weight, but ``lora_A`` needs its input.
      Under autocast peft first casts the input to the adapter's fp32 and autocast casts it back,
      so every adapted module keeps its own half copy: ``sum(in_features) * p`` over the
      adapted modules (``5h + q + i`` for all-linear), plus ``r * p`` per module for the
      ``lora_A`` output. Without autocast (fp32, and 4-bit layers under autocast) the copies
      are shared: one per distinct input (``2h + q + i``).
    * ``8bit``: LLM.int8 also keeps each quantized linear's input (p) and its int8 transpose.
    * ``lora_dropout > 0``: a 1-byte mask per adapted input element.
    For a Qwen2.5-0.5B layer (h 896, q 896, kv 128, i 4864) under bf16 autocast this gives
    64,288 bytes per token (~72*h; 64,800 counted by the hooks), fp32 110,592 (108,032
    counted): the SwiGLU width (i = 5.4h) and LoRA's input copies are what double
    Korthikanti's 34*h.

    Without gradient checkpointing every layer keeps all of it; with it (non-reentrant
    ``torch.utils.checkpoint``) each layer keeps only its input (``h * p``) and one layer is
    recomputed at a time during backward. The final norm keeps ``4h + 4``.

Transient peaks (only the larger of the two is added: they happen at different times)
    * Loss: the output head runs only on supervised positions (worst case: all ``T``), or on
      ``loss_chunk_tokens`` rows at a time when the trainer chunks the loss. Per logit: the
      half head output (p), its fp32 copy feeding log-softmax, the saved log-softmax, and in
      backward the fp32 gradient of log-softmax's output and of its input: ``3 * 4 + p``
      bytes (``12`` in fp32), times ``rows * V``.
    * Backward through one layer: the recomputed layer (checkpointing only) plus its gradient
      buffers, ``3 * i * p + 4 * h * p`` per token; with 4-bit weights one dequantized weight.
    Plus the post-training eval-loss pass inside ``train()`` (same batch size, no gradients):
    ``T * V * (p + 8)`` for full logits, at most ``loss_chunk_tokens`` rows when chunked.

Margins
    * CUDA context: ~0.3-0.4 GiB with lazy module loading (PyTorch >= 1.13, CUDA >= 11.7:
      287 MB measured in pytorch/pytorch#86509, "around 400MB" in pytorch/pytorch#109888),
      plus cuBLAS/cuDNN workspaces: 0.5 GiB is counted.
    * Caching-allocator fragmentation: 10 % of the activations and transients.
    * Capacity is what PyTorch reports as total capacity (cudaMemGetInfo), not the marketing
      size: L4 22.03 GiB (ArcInstitute/evo2#190), T4 14.56 GiB on GCP with ECC
      (Zheng-Chong/CatVTON#133; 14.75 GiB on Colab, hpcaitech/Open-Sora#697), A100-40GB
      39.50 GiB (TianheWu/CoSeR#10), A100-80GB 79.25 GiB (levihsu/OOTDiffusion#235), H100
      79.11 GiB (vllm-project/vllm#27508).

CPU (``device='cpu'``): fp32 weights and activations, no CUDA context or caching allocator;
a fixed runtime term covers Python, torch and the libraries, and a glibc heap-retention term
(both measured by ``bench/plan_accuracy.py``).

Accuracy (``bench/plan_accuracy.py``, CPU, measured with the earlier fixed 1,024-row loss chunk;
with today's vocabulary-sized chunk the Qwen-shaped cases come out 0-3 % under the glibc RSS
and 7-12 % under the live tensors: a recomputed chunk keeps one more logits copy than the
loss term counts): the per-layer formula is
within 2 % of the bytes autograd saves (fp32 and bf16 autocast); peak RSS of ``train()`` on a
Qwen2.5-0.5B-shaped 2-layer model is within +1-4 % of the tensor terms (live allocator) and the
CPU estimate with the retention term is 11-14 % above the default-glibc RSS; on the built-in tiny
model a fixed ~0.1 GiB first-step growth dominates (-34 % to +4 %). 7B figures: 0.84-1.01 of
the LitGPT / torchtune / LLaMA-Factory published peaks (``tests/trainer/test_plan.py``).

Precision: ``auto`` is bf16 on compute capability >= 8.0 (L4 8.9, A100 8.0, H100 9.0) and fp16
on a T4 (7.5): never bf16 there (``torch.cuda.is_bf16_supported()`` counts emulation and says
True on a T4; see REFERENCE.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer.batching import choose_batching, resolve_micro_batch_tokens
from trainer.config import ConfigError, TrainConfig

GIB = 1024**3
MIB = 1024**2

LOSS_CHUNK_TOKENS = 1024
"""Rows of fp32 logits the chunked loss materialises at a time (the trainer's constant once the
loss is chunked: ``trainer.train`` should import it from here). The estimate follows the
trainer: chunked when ``trainer.train`` defines ``LOSS_CHUNK_TOKENS``, full logits otherwise."""

AUTO_EFFECTIVE_BATCH = 16
"""``batch_size auto`` keeps an effective batch per device of this times ``grad_accum``."""

CUDA_CONTEXT_BYTES = GIB // 2
"""CUDA context + cuBLAS/cuDNN workspaces per process (see the module docstring)."""

ALLOCATOR_FRACTION = 0.10
"""Caching-allocator fragmentation, as a share of activations and transient buffers."""

CPU_RUNTIME_BYTES = 512 * MIB
"""Resident memory of a CPU training process before the model loads: Python, torch,
transformers, peft, accelerate, datasets, tokenizer and tokenised data (``bench/plan_accuracy.py``
measured 0.34-0.39 GiB here; rounded up)."""

CPU_MALLOC_FIXED_BYTES = 256 * MIB
CPU_MALLOC_FRACTION = 0.10
"""glibc keeps freed heap blocks (tensors under its dynamic mmap threshold, up to 32 MiB): peak
RSS of ``llmft train`` exceeded the live tensor bytes by 0.2-1.1 GiB in the bench. Counted as
this fixed amount plus this share of the activations and transients."""

NF4_BYTES_PER_PARAM = 0.5 + 0.127 / 8
"""NF4 + double-quantized absmax (QLoRA paper: 0.127 bits/param of constants)."""

INT8_BYTES_PER_PARAM = 1.0
"""LLM.int8 weights (the per-row fp32 scales are added per output row)."""

QUANTIZATIONS = ("none", "4bit", "8bit")


@dataclass(frozen=True)
class Accelerator:
    """One accelerator type: its usable capacity and what precisions it runs."""

    name: str
    capacity_gib: float
    """Total capacity as PyTorch reports it (cudaMemGetInfo total), GiB."""
    compute_capability: tuple[int, int] | None
    bf16: bool
    vertex_type: str = ""

    @property
    def capacity_bytes(self) -> int:
        return int(self.capacity_gib * GIB)


ACCELERATORS: dict[str, Accelerator] = {
    "T4": Accelerator("T4", 14.56, (7, 5), False, "NVIDIA_TESLA_T4"),
    "L4": Accelerator("L4", 22.03, (8, 9), True, "NVIDIA_L4"),
    "A100": Accelerator("A100", 39.50, (8, 0), True, "NVIDIA_TESLA_A100"),
    "A100-80GB": Accelerator("A100-80GB", 79.25, (8, 0), True, "NVIDIA_A100_80GB"),
    "H100": Accelerator("H100", 79.11, (9, 0), True, "NVIDIA_H100_80GB"),
}
"""GPUs by the name ``--accelerator`` takes (case-insensitive); ``cpu`` is the host."""

_ALIASES = {
    "NVIDIA_TESLA_T4": "T4",
    "NVIDIA-TESLA-T4": "T4",
    "NVIDIA_L4": "L4",
    "NVIDIA-L4": "L4",
    "A100-40GB": "A100",
    "NVIDIA_TESLA_A100": "A100",
    "NVIDIA-TESLA-A100": "A100",
    "NVIDIA_A100_80GB": "A100-80GB",
    "NVIDIA-A100-80GB": "A100-80GB",
    "H100-80GB": "H100",
    "NVIDIA_H100_80GB": "H100",
    "NVIDIA-H100-80GB": "H100",
}


class PlanError(ConfigError):
    """The model's config.json cannot be planned (missing keys, unsupported architecture).

    A usage error (exit 2) for ``llmft plan``, whose exit 1 means "does not fit"."""


class DoesNotFit(RuntimeError):
    """Raised by :func:`check_fits`; the message carries the rendered estimate."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        super().__init__(summary_line(plan) + "\n" + render(plan))


def accelerator_spec(name: str) -> Accelerator:
    """The :class:`Accelerator` for ``name`` (``L4``, ``T4``, ``A100``, ``A100-80GB``, ``H100``,
    Vertex/GKE spellings too, or ``cpu``/``none`` for the host's memory).

    Raises:
        ConfigError: unknown name.
    """
    key = name.strip()
    if key.lower() in ("cpu", "none"):  # "none": the pipeline's CPU-only placement
        return Accelerator("cpu", _host_memory_bytes() / GIB, None, True)
    upper = key.upper()
    upper = _ALIASES.get(upper, upper)
    for acc in ACCELERATORS.values():
        if acc.name.upper() == upper:
            return acc
    choices = ", ".join([*ACCELERATORS, "cpu"])
    raise ConfigError(f"unknown accelerator {name!r} (choose from {choices})")


def _host_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * GIB


# ---------------------------------------------------------------------------------------------
# Model shape


@dataclass(frozen=True)
class Shape:
    """The numbers of a decoder-only transformer that decide its training memory."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    gated_mlp: bool = True
    qkv_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """``{module name: (in_features, out_features)}`` of one decoder layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        mods = {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        if self.gated_mlp:
            mods["gate_proj"] = (h, i)
        return mods

    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    def layer_other_params(self) -> int:
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return 2 * self.hidden + bias

    def embedding_params(self) -> int:
        """Input embedding plus the LM head when it is not tied, plus the final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def total_params(self) -> int:
        per_layer = self.layer_linear_params() + self.layer_other_params()
        return self.layers * per_layer + self.embedding_params()


# Families whose MLP is gate/up/down (SwiGLU/GeGLU); others have up/down only.
_UNGATED = {
    "gpt2",
    "gpt_neox",
    "gptj",
    "opt",
    "phi",
    "falcon",
    "bloom",
    "starcoder2",
    "gpt_bigcode",
}
# config.json without tie_word_embeddings: the class default of these families.
_TIED_DEFAULT = {"gemma": True, "gemma2": True, "gemma3_text": True, "gpt2": True, "phi": False}
_QKV_BIAS = {"qwen2"}

_KEYS = {
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "heads": ("num_attention_heads", "n_head"),
    "intermediate": ("intermediate_size", "n_inner", "ffn_dim"),
    "vocab": ("vocab_size",),
}


def _first(cfg: dict[str, Any], names: tuple[str, ...]) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return None


def model_shape(model_config: dict[str, Any], source: str = "config.json") -> Shape:
    """Read the architecture numbers from a ``config.json`` dict.

    Args:
        model_config: The parsed ``config.json`` (a nested ``text_config`` is used when the
            top level has no ``hidden_size``, as in multimodal configs).
        source: Name used in error messages.

    Returns:
        The :class:`Shape`.

    Raises:
        PlanError: a required key is missing, or the model is a mixture of experts.
    """
    cfg = dict(model_config)
    if _first(cfg, _KEYS["hidden"]) is None and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    mt = str(cfg.get("model_type", "unknown"))
    for moe in ("num_local_experts", "num_experts", "n_routed_experts"):
        if (cfg.get(moe) or 0) > 1:
            raise PlanError(f"{source}: mixture-of-experts models ({moe}) are not modelled")
    vals: dict[str, int] = {}
    for key, names in _KEYS.items():
        v = _first(cfg, names)
        if v is None and key == "intermediate":
            v = 4 * vals["hidden"]
        if v is None:
            raise PlanError(f"{source}: no {names[0]} (needed to estimate memory)")
        try:
            vals[key] = int(v)
        except (TypeError, ValueError):
            raise PlanError(f"{source}: {names[0]} is not a number ({v!r})") from None
        if vals[key] < 1:
            raise PlanError(f"{source}: {names[0]} must be >= 1 (got {v!r})")
    kv = int(cfg.get("num_key_value_heads") or cfg.get("num_kv_heads") or vals["heads"])
    head_dim = int(cfg.get("head_dim") or vals["hidden"] // vals["heads"])
    tied = cfg.get("tie_word_embeddings")
    if tied is None:
        tied = _TIED_DEFAULT.get(mt, False)  # unknown: untied, the larger estimate
    return Shape(
        model_type=mt,
        hidden=vals["hidden"],
        layers=vals["layers"],
        heads=vals["heads"],
        kv_heads=kv,
        head_dim=head_dim,
        intermediate=vals["intermediate"],
        vocab=vals["vocab"],
        tied=bool(tied),
        gated_mlp=mt not in _UNGATED,
        qkv_bias=mt in _QKV_BIAS or bool(cfg.get("attention_bias")),
    )


def load_model_config(model: str) -> dict[str, Any]:
    """Read only ``config.json`` of ``model`` (no weights, no tokenizer).

    Args:
        model: a built-in name (``llmft-tiny``; built once if missing), a local directory (one holding only
            ``config.json`` works), a ``file://`` or ``/gcs/`` path, a ``gs://`` directory
            (only ``config.json`` is fetched), a ``config.json`` file itself, or a Hugging Face
            id (fetched from the hub when it is reachable).

    Returns:
        The parsed ``config.json``.

    Raises:
        FileNotFoundError: no config.json there (a one-line message naming the place).
        PlanError: config.json is not valid JSON.
    """
    from trainer import models, storage

    name = model.strip()
    builtin = getattr(models, "builtin_name", None)
    if models.is_tiny(name) or (builtin is not None and builtin(name)):
        uri = os.path.join(models.resolve_model(name), "config.json")
    elif name.startswith("gs://"):
        uri = name if name.endswith(".json") else storage.join(name, "config.json")
    else:
        path = name[len("file://") :] if name.startswith("file://") else name
        if os.path.isfile(path):
            uri = path
        elif os.path.isdir(path):
            uri = os.path.join(path, "config.json")
            if not os.path.isfile(uri):
                raise FileNotFoundError(f"{path}: no config.json in this directory")
        elif path.startswith(("/", "./", "../", "~")) or path.count("/") != 1:
            raise FileNotFoundError(f"{path}: no such model directory")
        else:
            uri = _hub_config(path)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no config.json") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{uri}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(cfg, dict):
        raise PlanError(f"{uri}:1: config.json is not a JSON object")
    return cfg


def _hub_config(repo_id: str) -> str:
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id, "config.json")
    except Exception as exc:  # offline, gated, missing: all mean "not at hand"
        raise FileNotFoundError(
            f"{repo_id}: not a local or gs:// directory and its config.json could not be "
            f"fetched from the hub ({type(exc).__name__}); pass a directory holding config.json"
        ) from None


# ---------------------------------------------------------------------------------------------
# The estimate


@dataclass
class Plan:
    """An estimate of one device's peak memory for a training configuration."""

    model: str
    accelerator: str
    accelerator_count: int
    device: str
    precision: str
    quantization: str
    batch_size: int
    grad_accum: int
    max_seq_len: int
    gradient_checkpointing: bool
    loss_chunk_tokens: int
    """0: the full logits of the supervised positions at once (today's loss)."""
    components: dict[str, int]
    """Bytes per component; they add up to ``peak_bytes``."""
    not_at_peak: dict[str, int]
    """Transient terms that happen at another moment than the peak (not added)."""
    peak_bytes: int
    capacity_bytes: int
    fits: bool
    peak_phase: str
    """``train step`` or ``eval loss`` (the pass over eval data at the end of ``train``)."""
    params: dict[str, int]
    auto_batch: bool = False
    advice: list[str] = field(default_factory=list)
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def capacity_gib(self) -> float:
        return self.capacity_bytes / GIB

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.accelerator_count

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: ``fits``, ``peak_gib``, ``precision``, ``advice`` and the rest."""
        return {
            "fits": self.fits,
            "peak_gib": round(self.peak_gib, 2),
            "capacity_gib": round(self.capacity_gib, 2),
            "headroom_gib": round(self.capacity_gib - self.peak_gib, 2),
            "precision": self.precision,
            "advice": list(self.advice),
            "model": self.model,
            "accelerator": self.accelerator,
            "accelerator_count": self.accelerator_count,
            "device": self.device,
            "quantization": self.quantization,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "effective_batch": self.effective_batch,
            "auto_batch": self.auto_batch,
            "max_seq_len": self.max_seq_len,
            "gradient_checkpointing": self.gradient_checkpointing,
            "loss_chunk_tokens": self.loss_chunk_tokens,
            "peak_phase": self.peak_phase,
            "breakdown_gib": {k: round(v / GIB, 3) for k, v in self.components.items()},
            "not_at_peak_gib": {k: round(v / GIB, 3) for k, v in self.not_at_peak.items()},
            "params": dict(self.params),
            "suggestions": list(self.suggestions),
            "notes": list(self.notes),
        }


def resolve_loss_chunk(loss_chunk_tokens: int | None = None, vocab: int | None = None) -> int:
    """The loss chunk the trainer uses (``trainer.loss.chunk_rows`` of the vocabulary, train and
    eval alike). An explicit value wins (0 = full logits of the supervised positions).
    """
    if loss_chunk_tokens is not None:
        return max(0, int(loss_chunk_tokens))
    from trainer import loss

    return loss.chunk_rows(vocab) if vocab else int(loss.LOSS_CHUNK_TOKENS)


def resolve_precision(precision: str, acc: Accelerator, device: str) -> str:
    """``bf16``, ``fp16`` or ``fp32``: what ``trainer.modeling.resolve_precision`` would pick.

    Raises:
        ConfigError: bf16 on a GPU without it (T4), fp16 on the CPU, or an unknown value.
    """
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError("precision must be auto, bf16, fp16 or fp32")
    if device == "cpu":
        if precision == "fp16":
            raise ConfigError("precision fp16 needs a GPU; use fp32 or bf16 on CPU")
        return "fp32" if precision == "auto" else precision
    if precision == "auto":
        return "bf16" if acc.bf16 else "fp16"
    if precision == "bf16" and not acc.bf16:
        cc = ".".join(map(str, acc.compute_capability or ()))
        raise ConfigError(
            f"precision bf16 is not supported on {acc.name} (compute capability {cc}; bf16 "
            "needs 8.0+): use auto or fp16"
        )
    return precision


def _parse_batch(value: Any) -> int | None:
    """``None`` for auto (``0``, ``"0"``, ``"auto"``), else the int."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("auto", "0", ""):
            return None
        try:
            value = int(v)
        except ValueError:
            raise ConfigError(
                f"batch_size must be a positive integer or auto (got {value!r})"
            ) from None
    if int(value) == 0:
        return None
    if int(value) < 0:
        raise ConfigError("batch_size must be >= 1 or auto")
    return int(value)


def _targets(spec: str, shape: Shape, notes: list[str]) -> dict[str, tuple[int, int]]:
    mods = shape.linears()
    spec = (spec or "").strip()
    if spec == "all-linear":
        return mods
    aliases = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj"),
        "c_attn": ("q_proj", "k_proj", "v_proj"),
        "query_key_value": ("q_proj", "k_proj", "v_proj"),
        "wqkv": ("q_proj", "k_proj", "v_proj"),
        "gate_up_proj": ("gate_proj", "up_proj"),
        "w1": ("gate_proj",),
        "w3": ("up_proj",),
        "w2": ("down_proj",),
        "wo": ("o_proj",),
        "dense": ("o_proj",),
        "c_fc": ("up_proj",),
        "fc1": ("up_proj",),
        "fc2": ("down_proj",),
        "c_proj": ("o_proj", "down_proj"),
        "out_proj": ("o_proj",),
    }
    chosen: dict[str, tuple[int, int]] = {}
    for name in (n.strip() for n in spec.split(",") if n.strip()):
        base = name.split(".")[-1]
        names = (base,) if base in mods else aliases.get(base, ())
        hit = [n for n in names if n in mods]
        if not hit:
            notes.append(f"target module {name!r} is not a layer the plan models (no LoRA counted)")
        for n in hit:
            chosen[n] = mods[n]
    return chosen


def _components(
    shape: Shape,
    cfg: TrainConfig,
    *,
    batch: int,
    seq: int,
    checkpointing: bool,
    quantization: str,
    precision: str,
    device: str,
    count: int,
    chunk: int,
    attn: str,
    targets: dict[str, tuple[int, int]],
    eval_pass: bool,
) -> tuple[dict[str, int], dict[str, int], str, dict[str, int]]:
    """Bytes per component for one configuration (see the module docstring for every term)."""
    on_gpu = device != "cpu"
    half = precision in ("bf16", "fp16")
    p = 2 if half else 4  # activation bytes (autocast when half)
    w = 2 if (on_gpu and half) else 4  # parameter dtype of the frozen base
    autocast = half
    T = batch * seq
    h, q, i, V, n, r = (
        shape.hidden,
        shape.q_dim,
        shape.intermediate,
        shape.vocab,
        shape.layers,
        int(cfg.lora_r),
    )

    # -- persistent
    lin = shape.layer_linear_params() * n
    other = shape.layer_other_params() * n
    emb = shape.embedding_params()
    if quantization == "4bit":
        base_w = lin * NF4_BYTES_PER_PARAM
    elif quantization == "8bit":
        rows = n * sum(o for _, o in shape.linears().values())
        base_w = lin * INT8_BYTES_PER_PARAM + 4 * rows
    else:
        base_w = lin * w
    base_w += other * w
    emb_w = emb * w
    lora_params = n * sum(r * (a + b) for a, b in targets.values())
    lora = lora_params * (16 + (p if autocast else 0))
    ddp = lora_params * 4 if count > 1 else 0

    # -- activations saved for backward, bytes per token per layer
    norms = 2 * (4 * h + 4)
    kv_width = shape.kv_dim if (attn == "flash_attention_2" or shape.kv_heads == shape.heads) else q
    attn_b = 2 * q * p + 2 * kv_width * p + 4 * shape.heads
    if attn == "eager":
        attn_b += 2 * shape.heads * seq * p
    mlp_b = (3 if shape.gated_mlp else 2) * i * p
    ins = {name: a for name, (a, _) in targets.items()}
    if autocast and quantization != "4bit":
        lora_in = sum(ins.values()) * p  # one half copy per adapted module
    else:
        groups = {"attn": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj")}
        seen = set()
        lora_in = 0
        for name, a in ins.items():
            g = next((k for k, v in groups.items() if name in v), name)
            if g not in seen:
                seen.add(g)
                lora_in += a * p
    lora_in += len(targets) * r * p
    if cfg.lora_dropout > 0:
        lora_in += sum(ins.values())
    int8_b = 0
    if quantization == "8bit":
        int8_b = sum(a for a, _ in shape.linears().values()) * (1 + p)
    per_layer = norms + attn_b + mlp_b + lora_in + int8_b
    # A length-grouped micro-batch runs in pieces of at most max(cap, seq) padded tokens
    # (trainer.batching.split_by_tokens: a row longer than the cap is a piece of its own).
    mode = choose_batching(cfg.batching, device if on_gpu else "cpu", attn)
    cap = 0 if mode == "pack" else resolve_micro_batch_tokens(cfg.micro_batch_tokens, device)
    Tt = min(T, max(cap, seq)) if cap else T
    final_norm = Tt * (4 * h + 4)
    # Padded rows of a piece are at most seq long: rows x L x L <= Tt x seq.
    mask = Tt * seq * (p if mode == "pack" else 1) if attn != "flash_attention_2" else 0
    if checkpointing:
        acts = n * Tt * h * p + final_norm + mask
        layer_bwd = Tt * per_layer
    else:
        acts = n * Tt * per_layer + final_norm + mask
        layer_bwd = 0
    layer_bwd += Tt * (3 * i * p + 4 * h * p)
    if quantization == "4bit":
        layer_bwd += max(a * b for a, b in shape.linears().values()) * p
    rows = min(Tt, chunk) if chunk else Tt
    loss = rows * V * (12 + (p if p < 4 else 0)) + rows * h * p

    # -- the eval-loss pass at the end of train(): no gradients, full logits unless chunked
    eval_rows = min(T, chunk) if chunk else T
    eval_transient = eval_rows * V * (p + 8) + T * (4 * h + 3 * i) * p

    fixed = CUDA_CONTEXT_BYTES if on_gpu else CPU_RUNTIME_BYTES
    persistent = {
        "base weights" + (f" ({quantization})" if quantization != "none" else ""): int(base_w),
        "embeddings + lm_head" + (" (tied)" if shape.tied else ""): int(emb_w),
        "LoRA weights + grads + AdamW (fp32)": int(lora),
    }
    if ddp:
        persistent["DDP gradient buckets"] = int(ddp)
    comps = dict(persistent)
    not_at_peak: dict[str, int] = {}
    loss_name = f"loss: logits of {rows:,} rows x {V:,} vocab + grads"
    bwd_name = "backward of one layer" + (" (recomputed)" if checkpointing else "")
    train_dyn = acts + max(loss, layer_bwd)
    eval_dyn = eval_transient
    if eval_pass and eval_dyn > train_dyn:
        phase = "eval loss"
        comps[f"eval loss pass: logits of {eval_rows:,} rows (no grads)"] = int(eval_transient)
        not_at_peak["train step (activations + loss)"] = int(train_dyn)
        dyn = eval_dyn
    else:
        phase = "train step"
        comps["activations saved for backward" + (" (checkpointed)" if checkpointing else "")] = (
            int(acts)
        )
        big, small = ((loss_name, loss), (bwd_name, layer_bwd))
        if layer_bwd > loss:
            big, small = small, big
        comps[big[0]] = int(big[1])
        not_at_peak[small[0]] = int(small[1])
        if eval_pass:
            not_at_peak["eval loss pass (after training)"] = int(eval_dyn)
        dyn = train_dyn
    if on_gpu:
        comps["allocator fragmentation (10 %)"] = int(ALLOCATOR_FRACTION * dyn)
        comps["CUDA context + workspaces"] = fixed
    else:
        comps["malloc retention (glibc heap)"] = int(
            CPU_MALLOC_FIXED_BYTES + CPU_MALLOC_FRACTION * dyn
        )
        comps["process runtime (python, torch, libraries)"] = fixed
    params = {
        "total": shape.total_params(),
        "trainable": lora_params,
        "layers": n,
        "per_token_per_layer_activation_bytes": per_layer,
    }
    return comps, not_at_peak, phase, params


def estimate(
    model_config: dict[str, Any],
    cfg: TrainConfig,
    *,
    accelerator: str,
    accelerator_count: int = 1,
    quantization: str | None = None,
    device: str = "auto",
    batch_size: int | str | None = None,
    loss_chunk_tokens: int | None = None,
    eval_pass: bool = True,
    model_name: str | None = None,
    advise: bool = True,
) -> Plan:
    """Estimate one device's peak memory for training ``cfg`` on ``accelerator``.

    Args:
        model_config: The model's parsed ``config.json`` (see :func:`load_model_config`).
        cfg: The training configuration (batch size, length, LoRA, precision, checkpointing).
        accelerator: ``L4``, ``T4``, ``A100``, ``A100-80GB``, ``H100`` or ``cpu``.
        accelerator_count: GPUs under DDP; per-GPU memory is estimated (DDP replicates).
        quantization: ``none``, ``4bit`` or ``8bit``; default ``cfg.quantization`` if it exists.
        device: ``cuda``, ``cpu`` or ``auto`` (``cpu`` for the ``cpu`` accelerator).
        batch_size: Override of ``cfg.batch_size``; ``auto`` or 0 picks the largest
            micro-batch that fits and raises ``grad_accum`` to keep the effective batch.
        loss_chunk_tokens: Rows of logits the loss materialises at a time; 0 = all supervised
            positions at once; ``None`` follows the trainer (:func:`resolve_loss_chunk`).
        eval_pass: Include the eval-loss pass ``train`` runs at the end when given eval data.
        model_name: Shown in the output (default ``cfg.model``).
        advise: Compute the advice (what single change or combination makes it fit).

    Returns:
        The :class:`Plan`.

    Raises:
        ConfigError: unknown accelerator/quantization, or a precision the device cannot run.
        PlanError: config.json lacks the numbers needed.
    """
    acc = accelerator_spec(accelerator)
    dev = "cpu" if acc.name == "cpu" else ("cuda" if device in ("auto", "", None) else device)
    if dev.startswith("cuda"):
        dev = "cuda"
    if accelerator_count < 1:
        raise ConfigError("accelerator_count must be >= 1")
    quant = quantization if quantization is not None else getattr(cfg, "quantization", "none")
    quant = (quant or "none").lower()
    if quant not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)} (got {quant!r})")
    precision = resolve_precision(cfg.precision, acc, dev)
    shape = model_shape(model_config)
    chunk = resolve_loss_chunk(loss_chunk_tokens, shape.vocab)
    notes: list[str] = []
    targets = _targets(cfg.target_modules, shape, notes)
    attn = cfg.attn_implementation
    if attn == "auto":
        attn = "sdpa"  # flash-attn is not in the images (REFERENCE.md); sdpa is the default
    bs = _parse_batch(batch_size if batch_size is not None else cfg.batch_size)
    auto = bs is None

    def build(b: int, ga: int, **over: Any) -> Plan:
        ckpt = over.get("gradient_checkpointing", cfg.gradient_checkpointing)
        q = over.get("quantization", quant)
        seq = over.get("max_seq_len", cfg.max_seq_len)
        comps, nap, phase, params = _components(
            shape,
            cfg,
            batch=b,
            seq=seq,
            checkpointing=ckpt,
            quantization=q,
            precision=precision,
            device=dev,
            count=accelerator_count,
            chunk=chunk,
            attn=attn,
            targets=targets,
            eval_pass=eval_pass,
        )
        peak = sum(comps.values())
        return Plan(
            model=model_name or cfg.model,
            accelerator=acc.name,
            accelerator_count=accelerator_count,
            device=dev,
            precision=precision,
            quantization=q,
            batch_size=b,
            grad_accum=ga,
            max_seq_len=seq,
            gradient_checkpointing=ckpt,
            loss_chunk_tokens=chunk,
            components=comps,
            not_at_peak=nap,
            peak_bytes=peak,
            capacity_bytes=acc.capacity_bytes,
            fits=peak <= acc.capacity_bytes,
            peak_phase=phase,
            params=params,
            auto_batch=auto,
            notes=list(notes),
        )

    if auto:
        effective = AUTO_EFFECTIVE_BATCH * cfg.grad_accum
        b, ga = auto_batch_size(lambda b, ga: build(b, ga), effective)
        plan = build(b, ga)
        plan.advice.append(
            f"batch_size auto: {b} with grad_accum {ga} (effective batch {b * ga} per device"
            + (
                f", {b * ga * accelerator_count} over {accelerator_count} GPUs"
                if accelerator_count > 1
                else ""
            )
            + ")"
        )
    else:
        plan = build(bs, cfg.grad_accum)
    if precision == "fp16" and dev == "cuda":
        plan.notes.append(
            f"{acc.name} has no bf16: fp16 autocast with fp32 LoRA weights and loss scaling"
        )
    if chunk == 0:
        plan.notes.append(
            "loss: full logits of every supervised position at once (the trainer does not chunk the loss)"
        )
    plan.notes.append(
        f"worst case assumed: every micro-batch holds {plan.batch_size} x {plan.max_seq_len} tokens, all supervised"
    )
    if cfg.merge:
        plan.notes.append(
            f"merge: the fp32 merge runs on the host and needs ~{shape.total_params() * 4 / GIB:.1f} GiB of RAM"
        )
    if advise:
        _advise(plan, build, cfg, acc, accelerator_count, quant, auto)
    return plan


def device_accelerator(device: str) -> str:
    """The ``ACCELERATORS`` name of the GPU ``device`` is (``cpu`` for the host).

    An unlisted GPU is planned as the largest listed one whose capacity it has (and whose
    bf16 support matches), so the estimate errs small; failing that, as a T4.
    """
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    props = torch.cuda.get_device_properties(torch.device(device))
    name = props.name.upper()
    for key in ("T4", "L4", "H100", "A100"):
        if key in name:
            return "A100-80GB" if key == "A100" and props.total_memory > 60 * GIB else key
    bf16 = (props.major, props.minor) >= (8, 0)
    fitting = [
        a
        for a in ACCELERATORS.values()
        if a.capacity_bytes <= props.total_memory and a.bf16 == bf16
    ]
    return max(fitting, key=lambda a: a.capacity_gib).name if fitting else "T4"


def resolve_auto_batch(
    cfg: TrainConfig, device: str, *, log: Callable[[str], None] = print
) -> TrainConfig:
    """``cfg`` with ``batch_size`` 0 (auto) replaced by the largest micro-batch that fits.

    ``grad_accum`` is raised so ``batch_size * grad_accum`` stays ``AUTO_EFFECTIVE_BATCH *
    grad_accum`` (the effective batch of the default batch size). When the model cannot be
    planned (no config.json keys the planner knows), 1 x that many micro-batches is used: slow,
    but it cannot run out of memory for lack of a guess.

    Args:
        cfg: The training configuration (returned unchanged unless ``batch_size`` is 0).
        device: ``cpu`` or ``cuda[:N]``, where training runs.
        log: Where the choice is reported.

    Returns:
        The configuration to train with.
    """
    import dataclasses

    if cfg.batch_size != 0:
        return cfg
    effective = AUTO_EFFECTIVE_BATCH * cfg.grad_accum
    name = device_accelerator(device)
    try:
        est = estimate(
            load_model_config(cfg.model),
            cfg,
            accelerator=name,
            device="cpu" if name == "cpu" else "cuda",
            advise=False,
        )
        b, ga = est.batch_size, est.grad_accum
        why = f"llmft plan on {name}: peak {est.peak_gib:.1f} of {est.capacity_gib:.1f} GiB"
    except (PlanError, FileNotFoundError) as exc:
        b, ga, why = 1, effective, f"no estimate ({exc})"
    log(f"batch_size auto: {b} x grad_accum {ga} (effective {b * ga}; {why})")
    return dataclasses.replace(cfg, batch_size=b, grad_accum=ga)


def auto_batch_size(build: Callable[[int, int], Plan], effective: int) -> tuple[int, int]:
    """Largest micro-batch that fits while ``batch_size * grad_accum == effective``.

    Candidates are the divisors of ``effective``, largest first, so the effective batch is kept
    exactly; when even 1 does not fit, 1 is returned (the plan then says it does not fit).

    Args:
        build: ``build(batch_size, grad_accum) -> Plan``.
        effective: The effective batch per device to keep.

    Returns:
        ``(batch_size, grad_accum)``.
    """
    effective = max(1, int(effective))
    for b in sorted((d for d in range(1, effective + 1) if effective % d == 0), reverse=True):
        if build(b, effective // b).fits:
            return b, effective // b
    return 1, effective


def _gib(x: int) -> str:
    return f"{x / GIB:.1f} GiB"


def _describe(change: dict[str, Any], effective: int) -> str:
    parts = []
    if change.get("gradient_checkpointing"):
        parts.append("gradient_checkpointing")
    if "batch_size" in change:
        parts.append(
            f"batch_size {change['batch_size']} with grad_accum {change['grad_accum']} keeps the "
            f"effective batch of {effective}"
        )
    if change.get("quantization") == "4bit":
        parts.append("quantization 4bit (NF4 base weights, QLoRA)")
    if "max_seq_len" in change:
        parts.append(f"max_seq_len {change['max_seq_len']} (longer rows are dropped or truncated)")
    return " + ".join(parts)


def _advise(
    plan: Plan,
    build: Callable[..., Plan],
    cfg: TrainConfig,
    acc: Accelerator,
    count: int,
    quant: str,
    auto: bool,
) -> None:
    """Fill ``plan.advice``/``plan.suggestions``: which change makes a non-fitting run fit."""
    if plan.fits:
        return
    eff = plan.batch_size * plan.grad_accum

    def smaller_batch(**over: Any) -> dict[str, Any] | None:
        for b in sorted((d for d in range(1, plan.batch_size) if eff % d == 0), reverse=True):
            if build(b, eff // b, **over).fits:
                return {"batch_size": b, "grad_accum": eff // b}
        return None

    def shorter(**over: Any) -> dict[str, Any] | None:
        seq = plan.max_seq_len // 2
        while seq >= 128:
            if build(plan.batch_size, plan.grad_accum, max_seq_len=seq, **over).fits:
                return {"max_seq_len": seq}
            seq //= 2
        return None

    singles: list[dict[str, Any]] = []
    if not plan.gradient_checkpointing:
        singles.append({"gradient_checkpointing": True})
    sb = smaller_batch()
    if sb:
        singles.append(sb)
    if quant != "4bit":
        singles.append({"quantization": "4bit"})
    sh = shorter()
    if sh:
        singles.append(sh)

    def evaluate(change: dict[str, Any]) -> Plan:
        b = change.get("batch_size", plan.batch_size)
        ga = change.get("grad_accum", plan.grad_accum)
        over = {k: v for k, v in change.items() if k not in ("batch_size", "grad_accum")}
        return build(b, ga, **over)

    fitting = []
    for change in singles:
        p = evaluate(change)
        plan.suggestions.append(
            {"change": change, "peak_gib": round(p.peak_gib, 2), "fits": p.fits}
        )
        if p.fits:
            fitting.append((change, p))
    for change, p in fitting:
        plan.advice.append(f"{_describe(change, eff)}: peak {_gib(p.peak_bytes)}, fits")
    if not fitting:
        combo: dict[str, Any] = {}
        steps: list[dict[str, Any]] = []
        if not plan.gradient_checkpointing:
            steps.append({"gradient_checkpointing": True})
        if quant != "4bit":
            steps.append({"quantization": "4bit"})
        found = None
        for step in [*steps, {}]:
            combo.update(step)
            over = {k: v for k, v in combo.items()}
            p = build(plan.batch_size, plan.grad_accum, **over)
            if p.fits:
                found = (dict(combo), p)
                break
            sb = smaller_batch(**over)
            if sb:
                c = {**combo, **sb}
                found = (c, evaluate(c))
                break
        if found is None:
            sh = shorter(**combo)
            if sh:
                c = {**combo, **sh}
                found = (c, evaluate(c))
            else:
                for b in (1,):
                    for seq in (plan.max_seq_len // 2, plan.max_seq_len // 4, 256, 128):
                        if seq < 128:
                            continue
                        c = {**combo, "batch_size": b, "grad_accum": eff, "max_seq_len": seq}
                        if evaluate(c).fits:
                            found = (c, evaluate(c))
                            break
                    if found:
                        break
        if found:
            change, p = found
            plan.suggestions.append(
                {"change": change, "peak_gib": round(p.peak_gib, 2), "fits": True}
            )
            plan.advice.append(
                f"combined: {_describe(change, eff)}: peak {_gib(p.peak_bytes)}, fits"
            )
        else:
            plan.advice.append(
                f"no combination of gradient_checkpointing, smaller batches, 4bit and shorter rows "
                f"fits {acc.name}; use a GPU with more memory"
            )
    bigger = [
        a.name
        for a in sorted(ACCELERATORS.values(), key=lambda a: a.capacity_gib)
        if a.capacity_bytes > acc.capacity_bytes and a.capacity_bytes >= plan.peak_bytes
    ]
    if bigger and acc.name != "cpu":
        plan.advice.append(
            f"or, unchanged, a GPU with more memory: {bigger[0]} ({ACCELERATORS[bigger[0]].capacity_gib:.1f} GiB)"
        )
    plan.advice.append(
        "more GPUs do not lower per-GPU memory: DDP keeps a full copy of the model on each GPU; "
        "sharding it (FSDP) would be needed" + (f" (you asked for {count})" if count > 1 else "")
    )


def check_fits(
    model_config: dict[str, Any], cfg: TrainConfig, *, accelerator: str, **kwargs: Any
) -> Plan:
    """:func:`estimate`, raising :class:`DoesNotFit` (message = summary + table) when it does not fit.

    For the pipeline's CPU preflight step: the exception text goes to error.log as is.
    """
    plan = estimate(model_config, cfg, accelerator=accelerator, **kwargs)
    if not plan.fits:
        raise DoesNotFit(plan)
    return plan


# ---------------------------------------------------------------------------------------------
# Output


def summary_line(plan: Plan) -> str:
    """One line: verdict, peak vs capacity, precision."""
    verdict = "fits" if plan.fits else "does NOT fit"
    return (
        f"{plan.model} on {plan.accelerator_count} x {plan.accelerator}: {verdict}: peak "
        f"{plan.peak_gib:.1f} GiB of {plan.capacity_gib:.1f} GiB per device ({plan.precision}"
        f"{', ' + plan.quantization if plan.quantization != 'none' else ''}, batch {plan.batch_size}"
        f" x grad_accum {plan.grad_accum}, max_seq_len {plan.max_seq_len}"
        f"{', gradient checkpointing' if plan.gradient_checkpointing else ''})"
    )


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def render(plan: Plan) -> str:
    """A readable table: the breakdown, peak vs capacity, precision, verdict, advice and notes."""
    width = max(len(k) for k in [*plan.components, *plan.not_at_peak, "peak"]) + 2
    lines = [
        f"model        {plan.model} ({_count(plan.params['total'])} params, "
        f"{_count(plan.params['trainable'])} trainable LoRA)",
        f"accelerator  {plan.accelerator_count} x {plan.accelerator}"
        + (f" ({plan.device})" if plan.device == "cpu" else ""),
        f"precision    {plan.precision}"
        + (f", base weights {plan.quantization}" if plan.quantization != "none" else ""),
        f"batch        {plan.batch_size} x grad_accum {plan.grad_accum}"
        + (f" x {plan.accelerator_count} GPUs" if plan.accelerator_count > 1 else "")
        + f" = effective {plan.effective_batch}{' (auto)' if plan.auto_batch else ''}, "
        f"max_seq_len {plan.max_seq_len}, gradient_checkpointing "
        f"{'on' if plan.gradient_checkpointing else 'off'}",
        f"loss         {'chunks of ' + str(plan.loss_chunk_tokens) + ' rows' if plan.loss_chunk_tokens else 'full logits'}",
        "",
        f"{'component':<{width}}{'GiB':>8}",
    ]
    for k, v in plan.components.items():
        lines.append(f"{k:<{width}}{v / GIB:>8.2f}")
    lines.append(f"{'peak (' + plan.peak_phase + ')':<{width}}{plan.peak_gib:>8.2f}")
    lines.append(f"{'capacity':<{width}}{plan.capacity_gib:>8.2f}")
    if plan.not_at_peak:
        lines.append("")
        lines.append("not at the peak (happen at another time):")
        for k, v in plan.not_at_peak.items():
            lines.append(f"  {k:<{width - 2}}{v / GIB:>8.2f}")
    lines.append("")
    lines.append(
        ("FITS" if plan.fits else "DOES NOT FIT")
        + f": {plan.peak_gib:.1f} of {plan.capacity_gib:.1f} GiB"
        + (f" ({plan.capacity_gib - plan.peak_gib:.1f} GiB headroom)" if plan.fits else "")
    )
    for a in plan.advice:
        lines.append(f"advice: {a}")
    for n in plan.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


__all__ = [
    "ACCELERATORS",
    "AUTO_EFFECTIVE_BATCH",
    "LOSS_CHUNK_TOKENS",
    "Accelerator",
    "DoesNotFit",
    "Plan",
    "PlanError",
    "Shape",
    "accelerator_spec",
    "auto_batch_size",
    "check_fits",
    "estimate",
    "load_model_config",
    "model_shape",
    "render",
    "resolve_loss_chunk",
    "resolve_precision",
    "summary_line",
]
