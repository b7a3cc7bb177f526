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


BF16_MIN_CAPABILITY = (8, 0)
"""Native bf16 needs compute capability 8.0 (A100, L4 8.9, H100 9.0). A T4 (7.5) or V100 (7.0)
only emulates it, although ``torch.cuda.is_bf16_supported()`` says True there: it counts
emulation by default (``including_emulation=True``)."""


def gpu_capability(device: str = "cuda") -> tuple[int, int] | None:
    """Compute capability ``(major, minor)`` of a CUDA device, or None off CUDA."""
    import torch

    dev = resolve_device(device)
    if not dev.startswith("cuda") or not torch.cuda.is_available():
        return None
    index = int(dev.split(":", 1)[1]) if ":" in dev else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return int(major), int(minor)


def resolve_precision(precision: str, device: str) -> tuple[Any, Any]:
    """Pick the autocast dtype and the dtype of the frozen base weights.

    ``auto``: bf16 on GPUs that compute it natively (compute capability >= 8.0); fp16
    autocast with a gradient scaler on older GPUs (T4, V100: sm_7x), with the LoRA weights kept
    in fp32 (peft's ``autocast_adapter_dtype``); fp32 on CPU (CPU autocast is slower than fp32
    for small models and changes results).

    Args:
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

    Returns:
        ``(amp_dtype or None, param_dtype)`` as torch dtypes.

    Raises:
        ConfigError: the precision cannot run on the device (fp16 on CPU, bf16 on a GPU that
            only emulates it).
    """
    import torch

    dev = resolve_device(device)
    on_gpu = dev.startswith("cuda")
    cap = gpu_capability(dev) if on_gpu else None
    bf16_ok = cap is not None and cap >= BF16_MIN_CAPABILITY
    if precision == "auto":
        if not on_gpu:
            return None, torch.float32
        precision = "bf16" if bf16_ok else "fp16"
    if precision == "fp32":
        return None, torch.float32
    if precision == "bf16":
        if on_gpu and not bf16_ok:
            shown = f"sm_{cap[0]}{cap[1]}" if cap else "this GPU"
            raise ConfigError(
                f"precision bf16: {shown} has no native bf16 (needs compute capability 8.0+, "
                "e.g. L4, A100, H100); use fp16 or auto"
            )
        # On CPU bf16 autocast runs with fp32 master weights.
        return torch.bfloat16, (torch.bfloat16 if on_gpu else torch.float32)
    if precision == "fp16":
        if not on_gpu:
            raise ConfigError("precision fp16 needs a GPU; use fp32 or bf16 on CPU")
        return torch.float16, torch.float16
    raise ConfigError(f"unknown precision {precision!r}")


def precision_name(amp_dtype: Any) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for an autocast dtype (None = fp32)."""
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


def grad_scaler(amp_dtype: Any, device: str) -> Any:
    """The loss scaler for fp16 autocast (enabled only then: bf16 and fp32 need none).

    fp16's 5-bit exponent underflows small gradients; the scaler multiplies the loss before
    backward, unscales before clipping, skips the optimizer step when a gradient overflowed
    and halves the scale (``torch.amp.GradScaler``'s dynamic scaling).
    """
    import torch

    kind = "cuda" if resolve_device(device).startswith("cuda") else "cpu"
    return torch.amp.GradScaler(kind, enabled=amp_dtype is torch.float16)


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
    # Long rows are measured on purpose (the long_rows policy decides): mark the "sequence is
    # longer than the model maximum" warning as already shown so it never floods the log.
    if isinstance(getattr(tok, "deprecation_warnings", None), dict):
        tok.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tok


FLEX_MIN_CAPABILITY = (8, 0)
"""torch's flex-attention kernels have tuned block sizes from sm_80 on (A100, L4, H100); on
sm_7x (T4, V100: 64 KiB shared memory) its generic 64 x 64, 3-stage forward config risks
Triton's "out of resource: shared memory", so ``auto`` keeps sdpa there."""


def _flex_attention_available() -> bool:
    """torch >= 2.5 with ``torch.nn.attention.flex_attention`` importable."""
    import torch

    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if (major, minor) < (2, 5):
        return False
    try:
        import torch.nn.attention.flex_attention
    except ImportError:
        return False
    return True


def default_attn_implementation(device: str) -> str:
    """The attention backend ``auto`` picks: one that packs without an L x L mask on CUDA.

    ``flash_attention_2`` on CUDA when the package is installed (varlen packing); else
    ``flex_attention`` on CUDA GPUs of compute capability >= ``FLEX_MIN_CAPABILITY`` when
    torch ships it (document masks built from restarted position_ids, no materialised mask;
    compiled by transformers on first use); else ``sdpa``. Never flex on CPU: torch 2.13's
    flex attention has no CPU backward ("FlexAttention does not support backward on CPU").

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.

    Returns:
        ``flash_attention_2``, ``flex_attention`` or ``sdpa``.
    """
    dev = resolve_device(device)
    if not dev.startswith("cuda"):
        return "sdpa"
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    cap = gpu_capability(dev)
    if cap is not None and cap >= FLEX_MIN_CAPABILITY and _flex_attention_available():
        return "flex_attention"
    return "sdpa"


def load_base_model(
    model_name_or_path: str,
    *,
    precision: str = "auto",
    device: str = "cpu",
    attn_implementation: str | None = None,
    tie_word_embeddings: bool | None = None,
    quantization: str = "none",
) -> Any:
    """Load a causal LM for training or evaluation (weights in the precision's param dtype).

    Args:
        model_name_or_path: Anything ``trainer.models.resolve_model`` accepts.
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32`` (see ``resolve_precision``).
        device: Where to put it (``cpu``, ``cuda``, ``auto``); accelerate may move it later.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``; ``None`` picks
            ``default_attn_implementation(device)``.
        tie_word_embeddings: Override the config's tying (``False`` unties for merging).
        quantization: ``none``, ``4bit`` or ``8bit``: linear layers as bitsandbytes layers
            (``trainer.quantization``), placed on ``device`` at load time.

    Returns:
        A ``transformers`` causal LM.
    """
    from transformers import AutoModelForCausalLM

    from trainer import quantization as q
    from trainer.models import resolve_model

    amp_dtype, param_dtype = resolve_precision(precision, device)
    kwargs: dict[str, Any] = {
        "dtype": param_dtype,
        "attn_implementation": attn_implementation or default_attn_implementation(device),
    }
    if tie_word_embeddings is not None:
        kwargs["tie_word_embeddings"] = tie_word_embeddings
    dev = resolve_device(device)
    if q.is_quantized(quantization):
        import torch

        # bitsandbytes quantizes while loading onto the target device; such a model cannot
        # be moved with .to() afterwards.
        kwargs["quantization_config"] = q.bnb_config(quantization, amp_dtype or torch.float32)
        kwargs["device_map"] = {"": dev}
        return AutoModelForCausalLM.from_pretrained(resolve_model(model_name_or_path), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(model_name_or_path), **kwargs)
    return model.to(dev)


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
    if isinstance(tm, str):
        # A regex (peft matches it against full module names); "all-linear" never takes the head.
        if tm != "all-linear" and any(n in tm for n in _TIED_NAMES):
            return True
    else:
        names += list(tm)
    names += list(cfg.get("modules_to_save") or [])
    return any(n.split(".")[-1] in _TIED_NAMES for n in names)


MERGE_CHUNK_ELEMENTS = 1 << 22
"""Weight elements merged per step (fp32 temporaries of 16 MiB), so the merge's memory does
not grow with the largest tensor (a 152k-token output head alone is 136 M elements)."""

_COPY_CHUNK_BYTES = 16 << 20
_PEFT_PREFIX = "base_model.model."

# adapter_config.json fields that make a LoRA compute more than W + s * B @ A (DoRA, aLoRA,
# routing, replicated layers, parameter targets, trainable tokens, adapters tied across the
# embedding and the head): peft merges those in memory.
_NOT_STREAMABLE = (
    "use_dora",
    "use_qalora",
    "use_bdlora",
    "alora_invocation_tokens",
    "arrow_config",
    "ensure_weight_tying",
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "kasa_config",
    "monteclora_config",
    "velora_config",
)


class _NotStreamable(Exception):
    """The adapter or checkpoint needs peft's in-memory merge (the message says why)."""


def _st_dtype(name: str) -> Any:
    import torch

    table = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
    }
    if name not in table:
        raise _NotStreamable(f"safetensors dtype {name} not handled")
    return table[name]


def _st_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Tensor entries (dtype, shape, absolute byte range) and metadata of a safetensors file.

    Read by hand rather than with ``safe_open``: safe_open memory-maps the file, and every page
    a merge reads stays resident (counted in the process's RSS) until the file is closed.
    """
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    entries = {
        k: {
            "dtype": v["dtype"],
            "shape": list(v["shape"]),
            "start": base + v["data_offsets"][0],
            "end": base + v["data_offsets"][1],
        }
        for k, v in header.items()
    }
    return entries, meta


def _row_layout(entry: dict[str, Any]) -> tuple[int, int]:
    """(rows, bytes per row) of a tensor entry; a 0-d tensor is one row."""
    shape = entry["shape"]
    rows = shape[0] if shape else 1
    row_bytes = (entry["end"] - entry["start"]) // rows if rows else 0
    return rows, row_bytes


def _read_rows(f: Any, entry: dict[str, Any], i: int, j: int) -> Any:
    """Rows ``i:j`` of a tensor stored at ``entry`` of the open file ``f`` (a fresh tensor)."""
    import torch

    _, row_bytes = _row_layout(entry)
    buf = torch.empty((j - i) * row_bytes, dtype=torch.uint8)
    f.seek(entry["start"] + i * row_bytes)
    if f.readinto(memoryview(buf.numpy())) != buf.numel():
        raise ValueError(f"{f.name}: truncated safetensors file")
    t = buf.view(_st_dtype(entry["dtype"]))
    return t.reshape(j - i, *entry["shape"][1:]) if entry["shape"] else t.reshape(())


def _read_tensor(path: Path, entry: dict[str, Any]) -> Any:
    rows, _ = _row_layout(entry)
    with open(path, "rb") as f:
        return _read_rows(f, entry, 0, rows)


def _checkpoint_files(base_dir: Path) -> tuple[list[str], dict[str, Any] | None]:
    """Safetensors file names of a checkpoint, and its index json (None when unsharded)."""
    index_path = base_dir / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        return sorted(set(index["weight_map"].values())), index
    if (base_dir / "model.safetensors").exists():
        return ["model.safetensors"], None
    raise _NotStreamable("the base has no safetensors weights")


def _local_model_dir(base_model: str) -> Path:
    from trainer.models import resolve_model

    resolved = resolve_model(base_model)
    if Path(resolved).is_dir():
        return Path(resolved)
    try:  # A hub id: the files training downloaded are in the Hugging Face cache.
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(resolved, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # any failure: let from_pretrained try
        raise _NotStreamable(f"no local copy of {resolved} ({type(exc).__name__})") from None


def _meta_modules(base_dir: Path) -> tuple[dict[str, str], str | None, str | None, bool]:
    """Module types by name, input-embedding and output-head names, and whether they are tied.

    Built on the meta device: the module tree without any weight memory.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(base_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except Exception as exc:  # e.g. remote code: the peft path handles it
        raise _NotStreamable(f"cannot build the module tree ({type(exc).__name__})") from None
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    types, emb_name, head_name = {}, None, None
    for name, mod in model.named_modules():
        types[name] = type(mod).__name__
        if mod is emb:
            emb_name = name
        if mod is head:
            head_name = name
    tied = emb is not None and head is not None and head.weight is emb.weight
    return types, emb_name, head_name, tied


def _module_matches(module: str, entries: list[str]) -> bool:
    return any(module == e or module.endswith("." + e) for e in entries)


def _plan_adapter(adapter_dir: Path, types: dict[str, str]) -> dict[str, Any]:
    """Parse a saved LoRA into per-weight deltas, bias additions and whole replacements.

    Returns:
        ``deltas``: weight name -> list of ``(A, B, scale, transposed)`` (fp32; transposed
        when the weight's rows follow A's columns: embeddings and fan-in-fan-out Conv1D);
        ``biases``: bias name -> fp32 addition; ``replace``: param name -> adapter entry
        (modules_to_save); ``saved_base``: weight name -> shape of a base layer peft saved
        with the adapter; ``touched``: module names the adapter changes.
    """
    import math

    from peft.utils.other import get_pattern_key

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        raise _NotStreamable(f"peft_type {cfg.get('peft_type')}")
    flags = [k for k in _NOT_STREAMABLE if cfg.get(k)]
    if flags:
        raise _NotStreamable(f"adapter uses {', '.join(flags)}")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        raise _NotStreamable("the adapter has no adapter_model.safetensors")
    entries, _ = _st_header(weights)
    alpha = cfg.get("lora_alpha", 8)
    alpha_pattern = cfg.get("alpha_pattern") or {}
    to_save = list(cfg.get("modules_to_save") or [])

    lora: dict[str, dict[str, str]] = {}
    replace: dict[str, tuple[Path, dict[str, Any]]] = {}
    for key in entries:
        name = key.removeprefix(_PEFT_PREFIX)
        for suffix, part in (
            (".lora_A.weight", "A"),
            (".lora_B.weight", "B"),
            (".lora_B.bias", "bias"),
            (".lora_embedding_A", "A"),
            (".lora_embedding_B", "B"),
            (".base_layer.weight", "base"),
            (".base_layer.bias", "base"),
        ):
            if name.endswith(suffix):
                lora.setdefault(name.removesuffix(suffix), {})[part] = key
                break
        else:
            module = name.rpartition(".")[0]
            if ".lora_" in name or not _module_matches(module, to_save):
                raise _NotStreamable(f"adapter tensor {key} is not a plain LoRA weight")
            replace[name] = (weights, entries[key])

    deltas: dict[str, list[tuple[Any, Any, float, bool]]] = {}
    biases: dict[str, Any] = {}
    saved_base: dict[str, list[int]] = {}
    for module, parts in lora.items():
        if "base" in parts:
            # peft saves the embedding layers it wraps: frozen, so the checkpoint's own copy
            # (same values, stored dtype) is used; a different shape means a resized vocabulary.
            saved_base[f"{module}.weight"] = entries[parts.pop("base")]["shape"]
            if not parts:
                continue
        if "A" not in parts or "B" not in parts:
            raise _NotStreamable(f"{module}: incomplete LoRA weights")
        kind = types.get(module)
        if kind not in ("Linear", "Embedding", "Conv1D"):
            raise _NotStreamable(f"adapter on {module} ({kind or 'unknown module'}), not Linear")
        a = _read_tensor(weights, entries[parts["A"]]).float()
        b = _read_tensor(weights, entries[parts["B"]]).float()
        if a.ndim != 2 or b.ndim != 2:
            raise _NotStreamable(f"{module}: LoRA weights of {a.ndim}-d")
        r = a.shape[0]
        mod_alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), alpha)
        scale = mod_alpha / math.sqrt(r) if cfg.get("use_rslora") else mod_alpha / r
        # peft's Embedding uses (B @ A).T, and forces fan_in_fan_out on Conv1D (weights stored
        # in x out); nn.Linear is out x in whatever the config says.
        transposed = kind in ("Embedding", "Conv1D")
        deltas.setdefault(f"{module}.weight", []).append((a, b, scale, transposed))
        if "bias" in parts:
            lb = _read_tensor(weights, entries[parts["bias"]]).float()
            biases[f"{module}.bias"] = lb * scale
    touched = {n.rpartition(".")[0] for n in (*deltas, *biases, *replace)}
    return {
        "deltas": deltas,
        "biases": biases,
        "replace": replace,
        "saved_base": saved_base,
        "touched": touched,
    }


def _merge_rows(
    rows: Any, i: int, deltas: list[tuple[Any, Any, float, bool]], bias_add: Any
) -> Any:
    """Rows ``i:i+len(rows)`` of ``W + sum(scale * delta)`` in fp32."""
    w = rows.float()
    j = i + w.shape[0]
    for a, b, scale, transposed in deltas:
        if transposed:
            w.addmm_(a[:, i:j].T, b.T, alpha=scale)  # rows of (B @ A).T
        else:
            w.addmm_(b[i:j], a, alpha=scale)
    if bias_add is not None:
        w += bias_add[i:j]
    return w


def _write_merged_file(
    out_path: Path,
    tensors: list[dict[str, Any]],
    metadata: dict[str, str],
) -> int:
    """Stream one output safetensors file; returns its tensor bytes.

    Each item has ``name``, ``dtype``, ``shape``, ``src`` (path, entry) and optionally
    ``deltas`` / ``bias_add``. Untouched tensors are copied byte for byte; changed ones are
    merged ``MERGE_CHUNK_ELEMENTS`` at a time in fp32 and cast back to their stored dtype.
    """
    import math

    import torch

    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for t in tensors:
        n = math.prod(t["shape"]) * _st_dtype(t["dtype"]).itemsize
        header[t["name"]] = {
            "dtype": t["dtype"],
            "shape": t["shape"],
            "data_offsets": [offset, offset + n],
        }
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the spec's padding: tensor data starts 8-byte aligned
    with open(out_path, "wb") as out:
        out.write(len(blob).to_bytes(8, "little"))
        out.write(blob)
        for t in tensors:
            src_path, entry = t["src"]
            with open(src_path, "rb") as f:
                if not t.get("deltas") and t.get("bias_add") is None and not t.get("cast"):
                    f.seek(entry["start"])
                    left = entry["end"] - entry["start"]
                    while left:
                        chunk = f.read(min(left, _COPY_CHUNK_BYTES))
                        out.write(chunk)
                        left -= len(chunk)
                    continue
                dtype = _st_dtype(t["dtype"])
                rows, row_bytes = _row_layout(entry)
                elems = max(1, row_bytes // _st_dtype(entry["dtype"]).itemsize)
                step = max(1, MERGE_CHUNK_ELEMENTS // elems)
                for i in range(0, rows, step):
                    merged = _merge_rows(
                        _read_rows(f, entry, i, min(rows, i + step)),
                        i,
                        t.get("deltas") or [],
                        t.get("bias_add"),
                    )
                    if not torch.isfinite(merged).all():
                        raise ValueError(f"merged {t['name']} has NaN/inf: the adapter is broken")
                    out.write(merged.to(dtype).reshape(-1).view(torch.uint8).numpy())
    return offset


def _stream_merge(base_dir: Path, adapter_dir: Path, out_dir: Path, log: Any) -> None:
    """Merge tensor by tensor from the checkpoint files to new ones (see ``merge_and_save``)."""
    files, index = _checkpoint_files(base_dir)
    types, emb_name, head_name, tied = _meta_modules(base_dir)
    plan = _plan_adapter(adapter_dir, types)
    layout = {f: _st_header(base_dir / f) for f in files}
    where = {name: f for f, (entries, _) in layout.items() for name in entries}

    untie = tied and bool(plan["touched"] & {emb_name, head_name})
    extra: dict[str, str] = {}  # output name -> checkpoint name it starts from
    if untie:
        emb_key, head_key = f"{emb_name}.weight", f"{head_name}.weight"
        if head_key not in where:
            # A tied checkpoint stores only the embedding: the head starts as its copy.
            extra[head_key] = emb_key
            where[head_key] = where[emb_key]

    def entry_of(name: str) -> dict[str, Any]:
        real = extra.get(name, name)
        return layout[where[real]][0][real]

    changes = {**plan["deltas"], **plan["biases"], **plan["replace"]}
    for name in changes:
        if name not in where:
            raise _NotStreamable(f"{name} is not in the checkpoint")
    for name, items in plan["deltas"].items():
        shape = entry_of(name)["shape"]
        for a, b, _, transposed in items:
            want = [a.shape[1], b.shape[0]] if transposed else [b.shape[0], a.shape[1]]
            if shape != want:
                raise _NotStreamable(f"{name}: checkpoint shape {shape} != LoRA's {want}")
    for name, (_, e) in plan["replace"].items():
        if e["shape"] != entry_of(name)["shape"]:
            raise _NotStreamable(f"{name}: modules_to_save shape differs from the checkpoint")
        _st_dtype(e["dtype"])
    for name, shape in plan["saved_base"].items():
        if name in where and shape != entry_of(name)["shape"]:
            raise _NotStreamable(f"{name}: the adapter carries a resized base layer {shape}")
    for entries, _ in layout.values():
        for e in entries.values():
            _st_dtype(e["dtype"])  # refuse unknown dtypes before any file is written

    dtypes = sorted({e["dtype"] for entries, _ in layout.values() for e in entries.values()})
    log(
        f"merge: streaming {len(files)} safetensors file(s) of {base_dir} in their stored dtype "
        f"({', '.join(dtypes)}); {len(plan['deltas'])} LoRA weights"
        + (f", {len(plan['replace'])} saved modules" if plan["replace"] else "")
        + (f"; untied {head_name} from {emb_name}" if untie else "")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    for f in files:
        entries, meta = layout[f]
        names = sorted(entries, key=lambda k: entries[k]["start"])
        names += [h for h, src in extra.items() if where[src] == f]
        items = []
        for name in names:
            e = entry_of(name)
            item: dict[str, Any] = {
                "name": name,
                "dtype": e["dtype"],
                "shape": e["shape"],
                "src": (base_dir / f, e),
                "deltas": plan["deltas"].get(name),
                "bias_add": plan["biases"].get(name),
            }
            if name in plan["replace"]:
                path, re_entry = plan["replace"][name]
                item["src"], item["cast"] = (path, re_entry), True
            items.append(item)
        # Largest element size first keeps every tensor aligned (as safetensors orders them).
        items.sort(key=lambda t: -_st_dtype(t["dtype"]).itemsize)
        total += _write_merged_file(out_dir / f, items, meta)
        weight_map.update({t["name"]: f for t in items})
    if index is not None:
        new_index = dict(index)
        new_index["metadata"] = {**(index.get("metadata") or {}), "total_size": total}
        new_index["weight_map"] = dict(sorted(weight_map.items()))
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(new_index, indent=2))
    cfg = json.loads((base_dir / "config.json").read_text())
    if untie:
        cfg["tie_word_embeddings"] = False
        if isinstance(cfg.get("text_config"), dict):
            cfg["text_config"]["tie_word_embeddings"] = False
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if (base_dir / "generation_config.json").exists():
        import shutil

        shutil.copyfile(base_dir / "generation_config.json", out_dir / "generation_config.json")


def _merge_in_memory(base_model: str, adapter_dir: str, out_dir: str) -> None:
    """peft's merge of the whole model, loaded in its stored dtype (adapters streaming can't do)."""
    from transformers import AutoModelForCausalLM

    from trainer.models import resolve_model

    untie = _adapter_touches_tied(adapter_dir)
    kwargs: dict[str, Any] = {"dtype": "auto"}
    if untie:
        kwargs["tie_word_embeddings"] = False
    base = AutoModelForCausalLM.from_pretrained(resolve_model(base_model), **kwargs)
    if untie:
        emb, head = base.get_input_embeddings(), base.get_output_embeddings()
        if head is not None and emb is not None and head.weight.shape == emb.weight.shape:
            head.weight.data = emb.weight.data.clone()
    merged = load_adapter(base, adapter_dir).merge_and_unload()
    os.makedirs(out_dir, exist_ok=True)
    merged.save_pretrained(out_dir)


def merge_and_save(
    base_model: str,
    adapter_dir: str,
    out_dir: str,
    *,
    tokenizer: Any = None,
    quantization: str = "none",
    log: Any = None,
) -> str:
    """Merge a LoRA adapter into the base weights and save a plain ``from_pretrained`` model.

    The base's safetensors files are streamed tensor by tensor: untouched tensors are copied
    byte for byte, each LoRA-targeted weight gets ``W + scale * B @ A`` computed in fp32 a
    block of rows at a time and cast back to the weight's stored dtype (bf16 stays bf16, an
    fp32 checkpoint stays fp32). Peak memory is a few blocks plus the LoRA factors, not the
    model (``bench/merge_memory.py``). The output keeps the base's file layout (same shard
    names, index json) and its config.json / generation_config.json. ``scale`` is
    ``lora_alpha / r`` (``/ sqrt(r)`` with rslora; ``alpha_pattern`` honoured); embeddings and
    fan-in-fan-out Conv1D take the transposed product as in peft; ``lora_B`` biases and
    ``modules_to_save`` are applied. Adapters streaming cannot express (DoRA, LoRA on
    convolutions, ...) or bases without local safetensors fall back to peft's in-memory merge
    of the model in its stored dtype, with a log line saying why.

    Tied embeddings: when the adapter touches the input embedding or the output head of a
    model that ties them, the result is untied (the head starts as a copy of the embedding)
    so the merge changes only the module it was trained on; otherwise the tie is kept.

    Quantized training (``quantization`` ``4bit``/``8bit``) changes nothing here: the merge
    uses the unquantized weights on disk, which is what the adapter was trained against up to
    quantization error.

    Args:
        base_model: Anything ``trainer.models.resolve_model`` accepts.
        adapter_dir: Local adapter directory.
        out_dir: Destination directory (created; must not be the base's directory).
        tokenizer: Saved next to the weights when given.
        quantization: How training loaded the base (``none``, ``4bit``, ``8bit``): logged.
        log: Called with progress lines (None: silent).

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: the base checkpoint itself is quantized (no full-precision weights).
        ValueError: ``out_dir`` is the base directory, or the adapter produces NaN/inf.
    """
    say = log or (lambda _msg: None)
    adapter = Path(adapter_dir)
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a LoRA adapter)")
    if quantization not in (None, "none"):
        say(
            f"merge: training loaded the base {quantization}; merging into its unquantized "
            "weights from disk, not the quantized ones"
        )
    try:
        base_dir = _local_model_dir(base_model)
        cfg = json.loads((base_dir / "config.json").read_text())
        if cfg.get("quantization_config"):
            method = cfg["quantization_config"].get("quant_method", "quantized")
            raise ConfigError(
                f"{base_dir}/config.json: the base checkpoint is {method}-quantized; merging "
                "needs its full-precision weights (merge=false keeps the adapter only)"
            )
        if base_dir.resolve() == Path(out_dir).resolve():
            raise ValueError(f"{out_dir}: the merged model cannot overwrite its base")
        _stream_merge(base_dir, adapter, Path(out_dir), say)
    except _NotStreamable as why:
        say(f"merge: in memory with peft ({why})")
        _merge_in_memory(base_model, adapter_dir, out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
