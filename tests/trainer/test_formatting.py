"""Row -> chat -> ids + labels: exact masks on the tiny tokenizer and on Qwen2.5's template."""

from __future__ import annotations

import pytest

from trainer.formatting import IGNORE_INDEX, FormatError, encode_row, end_token_id, render_prompt

# Qwen2.5's chat template (tokenizer_config.json of the Qwen2.5 family), verbatim.
QWEN25_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.'
    '\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and '
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": '
    '<function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

ROW = {"instruction": "Count the words in the input.", "input": "spoon party egg", "output": "3"}
LONG_ROW = {
    "instruction": "Write the same words again.",
    "input": "result boat kiwi teacher story",
    "output": "result boat kiwi teacher story " * 6,
}


def _tokenizer_like(tiny_model_dir: str, *, eos: str, pad: str, template: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.eos_token = eos
    tok.pad_token = pad
    if template is not None:
        tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def qwen25_base_tokenizer(tiny_model_dir):
    """Qwen2.5 base-model setup: pad == eos == <|endoftext|>, turns end with <|im_end|>."""
    return _tokenizer_like(
        tiny_model_dir, eos="<|endoftext|>", pad="<|endoftext|>", template=QWEN25_TEMPLATE
    )


def _check_exact_mask(tok, row, system_prompt=""):
    enc = encode_row(tok, row, system_prompt=system_prompt)
    prompt_ids = tok(render_prompt(tok, row, system_prompt), add_special_tokens=False)["input_ids"]
    end = end_token_id(tok)
    p = len(prompt_ids)
    assert enc.prompt_len == p
    assert enc.input_ids[:p] == prompt_ids
    assert enc.labels[:p] == [IGNORE_INDEX] * p  # every prompt token masked
    assert enc.labels[p:] == enc.input_ids[p:]  # every response token supervised
    assert enc.labels[-1] == end  # the end-of-turn token is the last supervised token
    assert enc.input_ids[-1] == end  # nothing after it (the template's newline is dropped)
    assert tok.decode(enc.input_ids[p:-1]) == row["output"].strip()
    return enc


def test_tiny_tokenizer_masks_exactly_the_prompt(tiny_tokenizer):
    enc = _check_exact_mask(tiny_tokenizer, ROW)
    assert tiny_tokenizer.convert_ids_to_tokens(enc.labels[-1]) == "<|im_end|>"
    prompt = tiny_tokenizer.decode(enc.input_ids[: enc.prompt_len])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "Count the words in the input.\n\nspoon party egg" in prompt


def test_empty_input_is_left_out_and_system_prompt_only_changes_the_prompt(tiny_tokenizer):
    no_input = {"instruction": "Give the antonym of early.", "input": "", "output": "late"}
    enc = _check_exact_mask(tiny_tokenizer, no_input)
    assert "\n\n" not in tiny_tokenizer.decode(enc.input_ids[: enc.prompt_len])
    with_sys = _check_exact_mask(tiny_tokenizer, no_input, system_prompt="Be brief.")
    assert with_sys.prompt_len > enc.prompt_len
    assert with_sys.input_ids[with_sys.prompt_len :] == enc.input_ids[enc.prompt_len :]


def test_qwen25_template_masks_its_default_system_prompt(qwen25_base_tokenizer):
    tok = qwen25_base_tokenizer
    enc = _check_exact_mask(tok, ROW)
    prompt = tok.decode(enc.input_ids[: enc.prompt_len])
    assert prompt.startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n")
    assert tok.convert_ids_to_tokens(enc.labels[-1]) == "<|im_end|>"
    # An explicit system prompt replaces Qwen's default.
    enc2 = _check_exact_mask(tok, ROW, system_prompt="Answer tersely.")
    assert QWEN_DEFAULT_SYSTEM not in tok.decode(enc2.input_ids)


def test_qwen25_base_pad_equals_eos_keeps_end_token_supervised(qwen25_base_tokenizer):
    tok = qwen25_base_tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    enc = encode_row(tok, ROW)
    assert enc.labels[-1] == end_token_id(tok) != IGNORE_INDEX


def test_end_token_stays_supervised_when_pad_shares_its_id(tiny_model_dir):
    from trainer.batching import collate_padded

    # The common misconfiguration: pad set to the end-of-turn token.
    tok = _tokenizer_like(tiny_model_dir, eos="<|im_end|>", pad="<|im_end|>")
    end = end_token_id(tok)
    assert tok.pad_token_id == end
    short = encode_row(tok, {"instruction": "Say hi.", "output": "hi"})
    long = encode_row(tok, ROW)
    assert short.labels[-1] == end
    batch = collate_padded(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in (short, long)], tok.pad_token_id
    )
    n = len(short.input_ids)
    assert batch.labels[0, n - 1].item() == end  # real end token supervised
    assert (batch.labels[0, n:] == IGNORE_INDEX).all()  # same id on pads is masked
    assert (batch.inputs["input_ids"][0, n:] == end).all()


@pytest.mark.parametrize("output", ["", "   ", "\n"])
def test_row_without_supervised_tokens_is_refused(tiny_tokenizer, output):
    with pytest.raises(FormatError) as err:
        encode_row(tiny_tokenizer, {"instruction": "Say nothing.", "output": output})
    assert err.value.code == "empty-after-format"


def test_truncate_cuts_only_the_response_tail(tiny_tokenizer):
    full = encode_row(tiny_tokenizer, LONG_ROW)
    limit = full.prompt_len + 3
    enc = encode_row(tiny_tokenizer, LONG_ROW, max_seq_len=limit, long_rows="truncate")
    assert enc.truncated
    assert len(enc.input_ids) == limit
    assert enc.input_ids[: enc.prompt_len] == full.input_ids[: full.prompt_len]  # prompt intact
    assert enc.labels == full.labels[:limit]
    assert sum(1 for x in enc.labels if x != IGNORE_INDEX) == 3


def test_long_rows_are_refused_unless_truncating(tiny_tokenizer):
    full = encode_row(tiny_tokenizer, LONG_ROW)
    for policy in ("drop", "fail"):
        with pytest.raises(FormatError) as err:
            encode_row(tiny_tokenizer, LONG_ROW, max_seq_len=full.prompt_len + 3, long_rows=policy)
        assert err.value.code == "too-long"
    # Truncation never cuts the prompt: a prompt that alone fills max_seq_len is refused.
    with pytest.raises(FormatError) as err:
        encode_row(tiny_tokenizer, LONG_ROW, max_seq_len=full.prompt_len, long_rows="truncate")
    assert err.value.code == "empty-after-format"
