"""Rows to chats to token ids with supervised-only-on-the-response labels.

A row becomes ``[system?, user, assistant]`` rendered by the model's own chat template. The
prompt (everything up to and including the assistant header) is masked with -100; the response
tokens and the end-of-turn token are supervised. Labels come from positions, never from comparing
ids with the pad id, so an end token that shares its id with pad stays supervised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100


class FormatError(ValueError):
    """A row cannot be turned into a training example (``code`` names the reason)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Encoded:
    """One tokenised example."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool = False

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def build_messages(row: dict[str, Any], system_prompt: str = "") -> list[dict[str, str]]:
    """Turn an Alpaca row into chat messages (user = instruction + input when non-empty)."""
    user = row["instruction"].strip()
    extra = (row.get("input") or "").strip()
    if extra:
        user = f"{user}\n\n{extra}"
    msgs = []
    if system_prompt.strip():
        msgs.append({"role": "system", "content": system_prompt.strip()})
    msgs.append({"role": "user", "content": user})
    if "output" in row:
        msgs.append({"role": "assistant", "content": row["output"].strip()})
    return msgs


def render_prompt(tokenizer: Any, row: dict[str, Any], system_prompt: str = "") -> str:
    """The prompt text (with the assistant header) used for both training and generation."""
    msgs = build_messages({**row, "output": ""}, system_prompt)[:-1]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def end_token_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn: ChatML's ``<|im_end|>`` if known, else EOS."""
    # convert_tokens_to_ids, not get_vocab(): the latter copies the whole vocabulary per call.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and tokenizer.convert_ids_to_tokens(im_end) == "<|im_end|>":
        return int(im_end)
    if tokenizer.eos_token_id is None:
        raise FormatError("no-end-token", "tokenizer has neither <|im_end|> nor an eos token")
    return int(tokenizer.eos_token_id)


def encode_row(
    tokenizer: Any,
    row: dict[str, Any],
    *,
    system_prompt: str = "",
    max_seq_len: int | None = None,
    long_rows: str = "drop",
) -> Encoded:
    """Tokenise one row into ids and labels.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        row: An Alpaca row (``instruction``, optional ``input``, ``output``).
        system_prompt: Optional system message.
        max_seq_len: Maximum length; ``None`` disables the check.
        long_rows: ``drop`` or ``fail`` raise ``FormatError("too-long")`` for a long row;
            ``truncate`` cuts the response tail (never the prompt).

    Returns:
        The encoded example.

    Raises:
        FormatError: ``too-long`` or ``empty-after-format`` (no supervised token would remain).
    """
    prompt = render_prompt(tokenizer, row, system_prompt)
    full = tokenizer.apply_chat_template(
        build_messages(row, system_prompt), tokenize=False, add_generation_prompt=False
    )
    if not full.startswith(prompt):
        raise FormatError(
            "template-mismatch", "chat template renders the prompt differently with a response"
        )
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    end = end_token_id(tokenizer)
    if end in r_ids:
        # Drop what the template puts after the end token (a newline): never predicted.
        r_ids = r_ids[: len(r_ids) - r_ids[::-1].index(end)]
    else:
        r_ids = [*r_ids, end]
    if len(r_ids) <= 1:
        raise FormatError("empty-after-format", "response is empty after formatting")
    truncated = False
    if max_seq_len is not None and len(p_ids) + len(r_ids) > max_seq_len:
        room = max_seq_len - len(p_ids)
        if long_rows != "truncate":
            raise FormatError(
                "too-long",
                f"{len(p_ids) + len(r_ids)} tokens > max_seq_len {max_seq_len} "
                f"(prompt {len(p_ids)}, response {len(r_ids)})",
            )
        if room < 1:
            raise FormatError(
                "empty-after-format",
                f"prompt alone is {len(p_ids)} tokens >= max_seq_len {max_seq_len}: "
                "the whole response would be cut",
            )
        r_ids = r_ids[:room]
        truncated = True
    ids = p_ids + r_ids
    labels = [IGNORE_INDEX] * len(p_ids) + list(r_ids)
    return Encoded(input_ids=ids, labels=labels, prompt_len=len(p_ids), truncated=truncated)
