"""The chunked loss equals the full-logits definition: values and gradients, every layout.

Reference: the plain definition, ``cross_entropy(model(**inputs).logits[:, :-1], labels[:, 1:])``
summed over supervised positions in fp32, i.e. what evaluation computed before chunking.
Chunks of 7 rows force many pieces (the tiny batches hold ~100 supervised tokens).
"""

from __future__ import annotations

import pytest

from trainer import batching
from trainer.formatting import IGNORE_INDEX
from trainer.loss import chunked_cross_entropy_sum, supervised_loss_sum

ROWS = [
    {"instruction": "Count the words in the text.", "input": "red blue green", "output": "3"},
    {"instruction": "Name the opposite.", "input": "hot", "output": "cold"},
    {"instruction": "Which is bigger?", "input": "4 or 9", "output": "9 is the bigger one"},
    {"instruction": "Say hello.", "input": "", "output": "hello there friend"},
    {"instruction": "Repeat the word twice.", "input": "cat", "output": "cat cat"},
]


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    from trainer.formatting import encode_row

    return [
        {"input_ids": e.input_ids, "labels": e.labels}
        for e in (encode_row(tiny_tokenizer, r) for r in ROWS)
    ]


def _model(tiny_model_dir: str, impl: str, lora: bool):
    from trainer.config import LoraSettings
    from trainer.modeling import build_lora, load_base_model

    model = load_base_model(tiny_model_dir, precision="fp32", attn_implementation=impl)
    if lora:
        import torch

        model = build_lora(model, LoraSettings(lora_r=4, lora_alpha=8))
        with torch.no_grad():  # non-zero B, so the adapter changes the logits
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    return model


def _reference(model, b):
    import torch.nn.functional as F

    logits = model(**b.inputs, use_cache=False).logits[:, :-1].float()
    target = b.labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    ), int((target != IGNORE_INDEX).sum())


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", ["pack", "group"])
def test_chunked_loss_and_gradients_equal_the_full_logits_definition(
    tiny_model_dir, examples, impl, layout
):
    model = _model(tiny_model_dir, impl, lora=True)
    if layout == "pack":
        b = batching.collate_packed(examples, pad_id=0, max_seq_len=64)
    else:
        b = batching.collate_padded(examples, pad_id=0)

    ref, n_ref = _reference(model, b)
    ref.backward()
    g_ref = _grads(model)
    model.zero_grad(set_to_none=True)

    loss, n = supervised_loss_sum(model, b.inputs, b.labels, chunk=7)
    assert int(n) == n_ref > 14  # several chunks
    loss.backward()
    g = _grads(model)
    assert loss.dtype.is_floating_point and str(loss.dtype) == "torch.float32"
    assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    assert g.keys() == g_ref.keys() and g  # the adapter gets gradients either way
    for k in g:
        assert (g[k] - g_ref[k]).abs().max().item() <= 1e-5, k


def test_no_batch_by_length_by_vocabulary_tensor_is_kept(tiny_model_dir, examples):
    """With grad, only one chunk's logits live at a time: saved tensors are chunk-sized."""
    import torch

    model = _model(tiny_model_dir, "sdpa", lora=True)
    b = batching.collate_padded(examples, pad_id=0)
    vocab, hidden = model.get_output_embeddings().weight.shape

    def logit_rows(chunk: int) -> tuple[list[int], int]:
        rows: list[int] = []

        def pack(t):
            # (rows, vocab) activations; the (hidden, vocab) head weight is no activation
            if t.dim() == 2 and t.shape[1] == vocab and t.shape[0] != hidden:
                rows.append(t.shape[0])
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, n = supervised_loss_sum(model, b.inputs, b.labels, chunk=chunk)
        loss.backward()
        return rows, int(n)

    rows, n = logit_rows(7)
    assert n > 7 and all(r <= 7 for r in rows), rows
    rows, n = logit_rows(0)
    assert n in rows  # negative control: unchunked keeps every supervised row's logits


def test_chunked_sum_handles_empty_and_exact_multiples():
    import torch

    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(21, 8, requires_grad=True)
    target = torch.randint(0, 11, (21,))
    full = chunked_cross_entropy_sum(head, hidden, target, chunk=0)
    for chunk in (1, 3, 7, 21, 50):
        assert chunked_cross_entropy_sum(head, hidden, target, chunk=chunk).item() == (
            pytest.approx(full.item(), rel=1e-6)
        )
    empty = chunked_cross_entropy_sum(head, hidden[:0], target[:0], chunk=4)
    assert empty.item() == 0.0 and empty.requires_grad


def test_eval_loss_uses_the_same_definition(tiny_model_dir, tiny_tokenizer):
    """evaluate.loss_sums (no grad, batched, sorted by length) == the training definition."""
    from trainer.evaluate import loss_sums
    from trainer.formatting import encode_row

    model = _model(tiny_model_dir, "sdpa", lora=True)
    total, count = loss_sums(model, tiny_tokenizer, ROWS, batch_size=2, max_seq_len=128)
    exs = [
        {"input_ids": e.input_ids, "labels": e.labels}
        for e in (encode_row(tiny_tokenizer, r) for r in ROWS)
    ]
    ref, n = _reference(model, batching.collate_padded(exs, pad_id=0))
    assert count == n
    assert total == pytest.approx(ref.item(), rel=1e-5)


def test_default_chunk_rows_follow_the_vocabulary():
    from trainer import loss

    assert loss.chunk_rows(151_936) == 2**26 // 151_936 == 441  # Qwen2.5: 256 MiB of logits
    assert loss.chunk_rows(49_152) == 1365  # SmolLM2
    assert loss.chunk_rows(4_096) == 8192  # capped: a small vocabulary needs no chunking
    assert loss.chunk_rows(10**7) == 128  # floored: never thousands of tiny matmuls


def test_default_chunking_reads_the_head_width(monkeypatch):
    import torch

    from trainer import loss

    monkeypatch.setattr(loss, "LOSS_CHUNK_ELEMENTS", 128 * 1000)  # 128 rows of a 1,000 vocab
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 1000, bias=False)
    calls: list[int] = []
    head.register_forward_hook(lambda _m, inp, _out: calls.append(inp[0].shape[0]))
    hidden, target = torch.randn(300, 4), torch.randint(0, 1000, (300,))
    with torch.no_grad():
        chunked = chunked_cross_entropy_sum(head, hidden, target)
        calls_chunked = list(calls)
        whole = chunked_cross_entropy_sum(head, hidden, target, chunk=0)
    assert calls_chunked == [128, 128, 44]
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
