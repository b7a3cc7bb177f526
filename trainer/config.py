"""Typed configuration: the single source for CLI flags and pipeline parameters.

Every knob is a dataclass field with a default and help text (``metadata["help"]``) and is
checked in ``__post_init__``. The CLI builds its options from these fields and the pipeline
tests compare the pipeline's parameters against them, so a new knob is added here once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TINY_MODEL = "llmft-tiny"
"""Name of the built-in tiny model (built locally, never downloaded); the default model."""

SAMPLE_DATASET = "dataset/sample.jsonl"
"""The bundled sample dataset, relative to the repository root."""


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent (a usage error, exit code 2)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_finite(obj: Any) -> None:
    """Every float field is a finite number (NaN and infinity pass most range checks)."""
    import math

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")


@dataclass
class ValidateConfig:
    """How `validate` checks, splits and measures an Alpaca JSONL file."""

    eval_fraction: float = field(
        default=0.1, metadata=_help("Fraction of rows assigned to eval by a stable content hash.")
    )
    on_error: str = field(
        default="fail",
        metadata=_help(
            "fail: any rejected row makes the data invalid; skip: rejected rows go to rejects.jsonl."
        ),
    )
    max_error_fraction: float = field(
        default=0.05,
        metadata=_help(
            "With on_error=skip, the data is still invalid above this rejected fraction."
        ),
    )
    max_line_bytes: int = field(
        default=1_000_000, metadata=_help("Lines longer than this many bytes are refused unread.")
    )
    unknown_fields: str = field(
        default="warn", metadata=_help("Keys other than instruction/input/output: warn or error.")
    )
    duplicates: str = field(
        default="error",
        metadata=_help(
            "Rows equal once each field is stripped of leading/trailing whitespace (inner "
            "whitespace compared exactly): error, warn or allow."
        ),
    )
    schema_only: bool = field(
        default=False, metadata=_help("Skip the token-level checks (no tokenizer is loaded).")
    )
    model: str = field(
        default=TINY_MODEL,
        metadata=_help("Model whose tokenizer and chat template measure the rows."),
    )
    max_seq_len: int = field(
        default=512, metadata=_help("Rows longer than this many tokens are 'too long'.")
    )
    long_rows: str = field(
        default="drop",
        metadata=_help(
            "Policy for too-long rows: drop (reported), truncate (only the response tail is cut), fail."
        ),
    )
    system_prompt: str = field(
        default="", metadata=_help("Optional system prompt rendered before every row.")
    )

    def __post_init__(self) -> None:
        _check_finite(self)
        _check(0.0 <= self.eval_fraction < 1.0, "eval_fraction must be in [0, 1)")
        _check(self.on_error in ("fail", "skip"), "on_error must be 'fail' or 'skip'")
        _check(0.0 <= self.max_error_fraction <= 1.0, "max_error_fraction must be in [0, 1]")
        _check(self.max_line_bytes >= 64, "max_line_bytes must be >= 64")
        _check(self.unknown_fields in ("warn", "error"), "unknown_fields must be 'warn' or 'error'")
        _check(
            self.duplicates in ("error", "warn", "allow"),
            "duplicates must be 'error', 'warn' or 'allow'",
        )
        _check(self.max_seq_len >= 16, "max_seq_len must be >= 16")
        _check(
            self.long_rows in ("drop", "truncate", "fail"),
            "long_rows must be 'drop', 'truncate' or 'fail'",
        )


@dataclass
class LoraSettings:
    """The LoRA adapter (peft)."""

    lora_r: int = field(default=16, metadata=_help("LoRA rank."))
    lora_alpha: int = field(default=32, metadata=_help("LoRA alpha (scaling = alpha / r)."))
    lora_dropout: float = field(default=0.0, metadata=_help("Dropout on the LoRA branch."))
    target_modules: str = field(
        default="all-linear",
        metadata=_help("Comma-separated module names, or all-linear for every linear projection."),
    )

    def __post_init__(self) -> None:
        _check_finite(self)
        _check(self.lora_r >= 1, "lora_r must be >= 1")
        _check(self.lora_alpha >= 1, "lora_alpha must be >= 1")
        _check(0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)")
        _check(bool(self.target_modules.strip()), "target_modules must not be empty")


@dataclass
class TrainConfig(LoraSettings):
    """LoRA fine-tuning of a causal LM on validated Alpaca JSONL."""

    model: str = field(
        default=TINY_MODEL,
        metadata=_help(
            "Base model: llmft-tiny or smollm2-135m (built in), a local or gs:// directory, "
            "or a Hugging Face id."
        ),
    )
    # Defaults for pretrained models, as the QLoRA paper (Dettmers et al. 2023: LoRA lr 2e-4
    # for 7B-13B, warm-up ratio 0.03) and trl's LoRA examples use; one pass over the data
    # (torchtune's LoRA recipes: epochs 1). The tiny random model needs far more (make demo
    # passes --max-steps 1500 --learning-rate 1e-3).
    max_steps: int = field(
        default=0, metadata=_help("Optimizer steps; 0 means use epochs instead.")
    )
    epochs: float = field(default=1.0, metadata=_help("Epochs, used only when max_steps is 0."))
    learning_rate: float = field(default=2e-4, metadata=_help("Peak AdamW learning rate."))
    warmup_ratio: float = field(default=0.03, metadata=_help("Linear warm-up share of steps."))
    lr_schedule: str = field(
        default="linear",
        metadata=_help("Decay after warm-up: linear (to 0), cosine (to 0) or constant."),
    )
    max_grad_norm: float = field(
        default=1.0, metadata=_help("Clip the gradient norm to this value (0 disables clipping).")
    )
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    batch_size: int = field(
        default=16,
        metadata=_help(
            "Examples per device per micro-batch; 0 = auto: the largest that llmft plan "
            "estimates fits the device, grad_accum raised to keep 16 x grad_accum per device."
        ),
    )
    grad_accum: int = field(default=1, metadata=_help("Micro-batches per optimizer step."))
    micro_batch_tokens: int = field(
        default=0,
        metadata=_help(
            "Run each length-grouped micro-batch in pieces of at most this many padded tokens "
            "(gradients accumulate: the same step, less padding and memory); 0 = auto (1024 "
            "on CPU, where large matmuls run ~1.6x slower per token; no split on GPU); -1 = "
            "never split."
        ),
    )
    max_seq_len: int = field(default=512, metadata=_help("Maximum tokens per example."))
    long_rows: str = field(
        default="drop",
        metadata=_help(
            "Rows longer than max_seq_len: drop (counted), truncate (only the response tail is "
            "cut) or fail."
        ),
    )
    batching: str = field(
        default="auto",
        metadata=_help(
            "pack (block-diagonal masks), group (length-grouped padding) or auto (group on CPU)."
        ),
    )
    precision: str = field(
        default="auto", metadata=_help("auto, bf16, fp16 or fp32 (auto: bf16/fp16/fp32 by device).")
    )
    attn_implementation: str = field(
        default="auto",
        metadata=_help(
            "Attention backend: auto (flash_attention_2 on CUDA when installed, else sdpa), "
            "sdpa, eager or flash_attention_2."
        ),
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("Recompute activations to save memory.")
    )
    quantization: str = field(
        default="none",
        metadata=_help(
            "Base weights while training and evaluating: none, 4bit (QLoRA: NF4 with double "
            "quantization) or 8bit (LLM.int8); adapters stay fp32."
        ),
    )
    save_every: int = field(default=250, metadata=_help("Checkpoint every this many steps."))
    keep_checkpoints: int = field(default=2, metadata=_help("Checkpoints kept after pruning."))
    seed: int = field(default=42, metadata=_help("Random seed (data order, init, dropout)."))
    merge: bool = field(
        default=False, metadata=_help("Also write the adapter merged into the base weights.")
    )
    system_prompt: str = field(
        default="",
        metadata=_help("Optional system prompt rendered before every row (train and eval)."),
    )
    log_every: int = field(default=10, metadata=_help("Log the loss every this many steps."))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_finite(self)
        _check(self.max_steps >= 0, "max_steps must be >= 0")
        _check(self.max_steps > 0 or self.epochs > 0, "set max_steps > 0 or epochs > 0")
        _check(self.learning_rate > 0, "learning_rate must be > 0")
        _check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)")
        _check(self.batch_size >= 0, "batch_size must be >= 1, or 0 for auto")
        _check(self.grad_accum >= 1, "grad_accum must be >= 1")
        _check(self.max_seq_len >= 16, "max_seq_len must be >= 16")
        _check(self.batching in ("auto", "pack", "group"), "batching must be auto, pack or group")
        _check(self.micro_batch_tokens >= -1, "micro_batch_tokens must be >= -1")
        _check(
            self.lr_schedule in ("linear", "cosine", "constant"),
            "lr_schedule must be linear, cosine or constant",
        )
        _check(self.max_grad_norm >= 0, "max_grad_norm must be >= 0")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(
            self.long_rows in ("drop", "truncate", "fail"),
            "long_rows must be 'drop', 'truncate' or 'fail'",
        )
        _check(
            self.attn_implementation in ("auto", "sdpa", "eager", "flash_attention_2"),
            "attn_implementation must be auto, sdpa, eager or flash_attention_2",
        )
        _check(
            self.precision in ("auto", "bf16", "fp16", "fp32"),
            "precision must be auto, bf16, fp16 or fp32",
        )
        _check(
            self.quantization in ("none", "4bit", "8bit"),
            "quantization must be none, 4bit or 8bit",
        )
        _check(self.save_every >= 1, "save_every must be >= 1")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        _check(self.log_every >= 1, "log_every must be >= 1")


@dataclass
class EvalConfig:
    """Base-vs-tuned evaluation on the held-out split."""

    max_new_tokens: int = field(default=64, metadata=_help("Greedy decoding budget per row."))
    eval_batch_size: int = field(
        default=32, metadata=_help("Rows per batch, for the eval loss and for generation.")
    )
    max_eval_samples: int = field(
        default=200, metadata=_help("Rows used for generation metrics (0 = all).")
    )
    gate_metric: str = field(
        default="eval_loss",
        metadata=_help(
            "Metric the gate compares: eval_loss, perplexity, exact_match, rouge_l, bleu."
        ),
    )
    gate_min_improvement: float = field(
        default=0.0,
        metadata=_help(
            "Tuned must beat base by at least this much on gate_metric (lower-is-better metrics "
            "count a decrease as improvement); negative disables the gate."
        ),
    )

    def __post_init__(self) -> None:
        _check_finite(self)
        _check(self.max_new_tokens >= 1, "max_new_tokens must be >= 1")
        _check(self.eval_batch_size >= 1, "eval_batch_size must be >= 1")
        _check(self.max_eval_samples >= 0, "max_eval_samples must be >= 0")
        _check(
            self.gate_metric in ("eval_loss", "perplexity", "exact_match", "rouge_l", "bleu"),
            "gate_metric must be eval_loss, perplexity, exact_match, rouge_l or bleu",
        )


def field_help(cls: type) -> dict[str, str]:
    """Return ``{field name: help text}`` for a config dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def field_defaults(cls: type) -> dict[str, Any]:
    """Return ``{field name: default}`` for a config dataclass."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from the keys of ``values`` that are its fields (others are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def args_doc(*classes: type, extra: dict[str, str] | None = None, indent: str = "    ") -> str:
    """Return a Google-style ``Args:`` block documenting every field of ``classes``.

    Used as the ``Args:`` section of the pipeline and init-run docstrings, which KFP turns
    into the input descriptions of the compiled YAML, so the help text is written once, here.
    Entries come in order: ``extra`` first, then each class's fields; a name documented
    earlier is skipped later (first definition wins), so the class order decides whose help
    a shared field (e.g. ``model``) gets. Each entry is one line so the description is the
    help text exactly (docstring_parser keeps a wrapped entry's line breaks).

    Args:
        *classes: Config dataclasses whose fields are documented.
        extra: ``{name: description}`` for parameters that are no config field.
        indent: Indentation of each entry under ``Args:``.

    Returns:
        ``"Args:\\n"`` followed by one ``{indent}name: help`` line per name.

    Raises:
        ValueError: A field has no help text.
    """
    entries = dict(extra or {})
    for cls in classes:
        for name, text in field_help(cls).items():
            if not text:
                raise ValueError(f"{cls.__name__}.{name} has no help text")
            entries.setdefault(name, text)
    lines = [f"{indent}{name}: {text}" for name, text in entries.items()]
    return "\n".join(["Args:", *lines]) + "\n"
