"""The built-in tiny model: a random-init Qwen2 causal LM and a locally trained tokenizer.

Nothing is downloaded. The tokenizer is a byte-level BPE trained with Qwen's pre-tokenisation
regex (so ``AutoTokenizer``, which returns ``Qwen2Tokenizer`` for ``model_type: qwen2``, gives
the same ids), with a Qwen-style ChatML template and a pad token distinct from the end token.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

BUILD_VERSION = "3"
"""Bumped whenever the architecture, corpus or tokenizer recipe changes (invalidates caches)."""

QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

ARCH = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
VOCAB_SIZE = 4096
EMBED_STD = 0.1


def cache_root() -> Path:
    """Directory for built models and other caches (``$LLMFT_CACHE`` or ``~/.cache/llmft``)."""
    return Path(os.environ.get("LLMFT_CACHE", Path.home() / ".cache" / "llmft"))


def _train_tokenizer(out_dir: Path, seed: int) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainer.sample_data import tokenizer_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    bpe = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(seed), trainer=bpe)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        model_max_length=ARCH["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def build_tiny_model(out_dir: str | os.PathLike[str], seed: int = 0) -> str:
    """Build the tiny model and tokenizer into ``out_dir`` (Hugging Face format).

    Args:
        out_dir: Destination directory (created).
        seed: Seed for the weights and the tokenizer corpus; same seed, same files.

    Returns:
        ``out_dir`` as a string.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(out, seed)
    tok = AutoTokenizer.from_pretrained(str(out))
    cfg = Qwen2Config(
        vocab_size=len(tok),
        tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids(IM_END),
        pad_token_id=tok.convert_tokens_to_ids(PAD_TOKEN),
        bos_token_id=None,
        rope_theta=10000.0,
        **ARCH,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    # LoRA never trains the tied embedding/lm_head or the final norm. With the default init
    # (std 0.02) a 128-wide model's logits span only about +-2.5, which caps how confident any
    # adapter can make it (loss floor ~5.6 nats). std EMBED_STD lets the frozen head express
    # confident predictions while random inputs still start near uniform (~8.5 nats).
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, EMBED_STD)
    model.generation_config = GenerationConfig(
        eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, do_sample=False
    )
    model.save_pretrained(str(out))
    # Qwen2's config would otherwise make AutoTokenizer pick Qwen2Tokenizer with its own defaults;
    # rewrite tokenizer_config so the saved special tokens are the ones that load.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc.update(
        {
            "eos_token": IM_END,
            "pad_token": PAD_TOKEN,
            "bos_token": None,
            "chat_template": CHAT_TEMPLATE,
        }
    )
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True))
    (out / "llmft_tiny.json").write_text(
        json.dumps({"build_version": BUILD_VERSION, "seed": seed, **ARCH}, indent=2)
    )
    return str(out)


def tiny_model_dir(seed: int = 0) -> str:
    """Return the cached tiny model directory, building it once (atomically) if missing."""
    key = hashlib.sha256(f"{BUILD_VERSION}:{seed}:{sorted(ARCH.items())}".encode()).hexdigest()[:12]
    final = cache_root() / "models" / f"llmft-tiny-{key}"
    if (final / "llmft_tiny.json").exists():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        build_tiny_model(tmp, seed=seed)
        try:
            tmp.rename(final)
        except OSError:
            # Another process finished first; its copy is identical for the same key.
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)
