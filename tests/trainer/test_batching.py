"""Batching: packing isolation, masks, padding, determinism and resumable data positions."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer import batching
from trainer.batching import IGNORE_INDEX

ROWS = [
    {"instruction": "Count the words in the input.", "input": "a b c d", "output": "4"},
    {"instruction": "Give the antonym of the word early.", "input": "", "output": "late"},
    {
        "instruction": "Write the same words again.",
        "input": "boat kiwi teacher story",
        "output": "boat kiwi teacher story",
    },
    {
        "instruction": "Give the word that comes last.",
        "input": "fact milk cloud",
        "output": "cloud",
    },
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    from trainer.formatting import encode_row

    out = []
    for r in ROWS:
        e = encode_row(tiny_tokenizer, r)
        out.append({"input_ids": e.input_ids, "labels": e.labels})
    return out


def _random_lengths(n: int = 500, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice([rng.randint(10, 40), rng.randint(60, 200)]) for _ in range(n)]


# ----- plans ---------------------------------------------------------------------------------


def test_group_batches_cover_every_example_once_and_are_deterministic():
    lens = _random_lengths()
    a = batching.group_batches(lens, 8, seed=3, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(len(lens)))
    assert a == batching.group_batches(lens, 8, seed=3, epoch=0)
    assert a != batching.group_batches(lens, 8, seed=3, epoch=1)
    assert a != batching.group_batches(lens, 8, seed=4, epoch=0)
    # Longest batch first (an out-of-memory shows at step 1), lengths sorted inside a batch.
    assert lens[a[0][0]] == max(lens)
    for b in a:
        assert [lens[i] for i in b] == sorted((lens[i] for i in b), reverse=True)


def test_grouping_pads_far_less_than_random_batches():
    lens = _random_lengths()
    grouped = batching.padding_fraction("group", lens, 8, max_seq_len=512)
    packed = batching.padding_fraction("pack", lens, 8, max_seq_len=512)
    slots = sum(
        8 * max(lens[i : i + 8]) if len(lens[i : i + 8]) == 8 else len(lens[i:]) * max(lens[i:])
        for i in range(0, len(lens), 8)
    )
    random_pad = 1 - sum(lens) / slots
    assert random_pad > 0.3
    assert grouped < 0.05
    assert packed < 0.1


def test_pack_rows_fit_balance_and_cover():
    lens = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    rows = batching.pack_rows(lens, 200)
    assert sorted(i for r in rows for i in r) == list(range(len(lens)))
    loads = [sum(lens[i] for i in r) for r in rows]
    assert max(loads) <= 200
    assert len(rows) == 3  # ceil(550 / 200)
    assert max(loads) - min(loads) <= 20
    with pytest.raises(ValueError, match="max_seq_len"):
        batching.pack_rows([300], 200)


@pytest.mark.parametrize("mode", ["group", "pack"])
def test_iterate_batches_resumes_from_a_data_position(mode):
    lens = _random_lengths(50)
    it = batching.iterate_batches(mode, lens, 8, seed=1)
    straight = [next(it) for _ in range(20)]  # crosses two epoch boundaries (7 batches each)
    epoch, b, _ = straight[9]
    resumed = batching.iterate_batches(mode, lens, 8, seed=1, start_epoch=epoch, start_batch=b + 1)
    assert [next(resumed) for _ in range(10)] == straight[10:]
    assert {e for e, _, _ in straight} == {0, 1, 2}


@pytest.mark.parametrize("mode", ["group", "pack"])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_n_processes_step_on_the_examples_of_one_process_with_n_times_the_batch(mode, world):
    lens = _random_lengths(101)  # the last global batch is short
    one = batching.iterate_batches(mode, lens, 4 * world, seed=3)
    ranks = [
        batching.iterate_batches(mode, lens, 4, seed=3, rank=r, world_size=world)
        for r in range(world)
    ]
    for _ in range(40):  # several epochs
        e, b, want = next(one)
        got = [next(it) for it in ranks]
        assert {(ge, gb) for ge, gb, _ in got} == {(e, b)}
        assert [i for _, _, share in got for i in share] == want
        assert all(share for _, _, share in got)


def test_shards_differ_in_size_by_at_most_one():
    for n in range(1, 20):
        for world in (1, 2, 3, 8):
            parts = [batching.shard(list(range(n)), r, world) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_iterate_batches_shards_over_processes():
    lens = _random_lengths(64)
    r0 = batching.iterate_batches("group", lens, 4, seed=0, rank=0, world_size=2)
    r1 = batching.iterate_batches("group", lens, 4, seed=0, rank=1, world_size=2)
    a = [next(r0)[2] for _ in range(8)]
    b = [next(r1)[2] for _ in range(8)]
    assert sorted(i for x in a + b for i in x) == list(range(64))


def test_auto_picks_grouping_on_cpu_and_packing_with_flash_or_flex_attention():
    assert batching.choose_batching("auto", "cpu", "sdpa") == "group"
    assert batching.choose_batching("auto", "cuda", "sdpa") == "group"
    assert batching.choose_batching("auto", "cuda:0", "flash_attention_2") == "pack"
    assert batching.choose_batching("auto", "cuda", "flex_attention") == "pack"
    assert batching.choose_batching("auto", "cpu", "flex_attention") == "group"
    assert batching.choose_batching("pack", "cpu", "sdpa") == "pack"
    assert batching.choose_batching("group", "cuda", "flex_attention") == "group"


@pytest.mark.parametrize(
    ("cuda", "capability", "flash", "flex", "attn", "mode"),
    [
        (False, None, True, True, "sdpa", "group"),  # CPU: never flex (no CPU backward)
        (True, (9, 0), True, True, "flash_attention_2", "pack"),
        (True, (9, 0), False, True, "flex_attention", "pack"),  # H100
        (True, (8, 9), False, True, "flex_attention", "pack"),  # L4
        (True, (7, 5), False, True, "sdpa", "group"),  # T4: flex kernels not tuned for sm_75
        (True, (9, 0), False, False, "sdpa", "group"),  # torch without flex attention
    ],
    ids=["cpu", "flash", "flex-h100", "flex-l4", "t4", "old-torch"],
)
def test_auto_attention_and_batching_on_a_faked_gpu(
    monkeypatch, cuda, capability, flash, flex, attn, mode
):
    import importlib.util

    import torch

    from trainer import modeling

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "flash_attn":
            return object() if flash else None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(modeling, "_flex_attention_available", lambda: flex)
    device = modeling.resolve_device("auto")
    assert modeling.default_attn_implementation(device) == attn
    assert batching.choose_batching("auto", device, attn) == mode


def test_flex_attention_ships_with_this_torch():
    from trainer import modeling

    assert modeling._flex_attention_available()


# ----- collation ------------------------------------------------------------------------------


def test_padded_batch_masks_pads_but_keeps_an_end_token_that_shares_the_pad_id():
    end = 7
    ex = [
        {"input_ids": [5, 6, end], "labels": [IGNORE_INDEX, 6, end]},
        {"input_ids": [5, end], "labels": [IGNORE_INDEX, end]},
    ]
    b = batching.collate_padded(ex, pad_id=end)
    assert b.inputs["input_ids"].tolist() == [[5, 6, end], [5, end, end]]
    assert b.labels.tolist() == [[IGNORE_INDEX, 6, end], [IGNORE_INDEX, end, IGNORE_INDEX]]
    assert b.inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert (b.n_tokens, b.n_slots, b.n_supervised) == (5, 6, 3)


def test_packed_batch_has_block_diagonal_causal_mask_and_restarted_positions():
    import torch

    ex = [
        {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]},
        {"input_ids": [4, 5], "labels": [4, 5]},  # first label would cross the boundary
    ]
    b = batching.collate_packed(ex, pad_id=0, max_seq_len=8)
    assert b.inputs["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert b.inputs["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b.labels.tolist() == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]]
    m = b.inputs["attention_mask"]
    assert m.shape == (1, 1, 5, 5) and m.dtype == torch.float32
    allowed = (m[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    assert float(m.min()) == torch.finfo(torch.float32).min


def test_packed_rows_pad_to_the_longest_row_and_pads_see_only_themselves():
    ex = [{"input_ids": [1] * n, "labels": [IGNORE_INDEX] + [1] * (n - 1)} for n in (6, 5, 3)]
    b = batching.collate_packed(ex, pad_id=0, max_seq_len=8)
    assert b.inputs["input_ids"].shape == (2, 8)  # rows of 6 and 5+3 -> padded to 8
    assert b.n_pad == 2
    allowed = b.inputs["attention_mask"][0, 0] == 0
    # Padded positions 6 and 7 of the first row attend to themselves only.
    assert allowed[6].nonzero().flatten().tolist() == [6]
    assert allowed[7].nonzero().flatten().tolist() == [7]
    assert b.labels[0, 6:].tolist() == [IGNORE_INDEX, IGNORE_INDEX]


def test_varlen_batch_is_one_padding_free_row_with_cumulative_lengths():
    ex = [
        {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]},
        {"input_ids": [4, 5], "labels": [4, 5]},
    ]
    b = batching.collate_varlen(ex)
    assert b.inputs["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert b.inputs["cu_seq_lens_q"].tolist() == [0, 3, 5]
    assert b.inputs["max_length_q"] == 3
    assert b.labels.tolist() == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]]
    assert b.n_pad == 0


def test_flex_batch_has_no_mask_and_positions_that_transformers_reads_as_documents():
    from transformers.masking_utils import find_packed_sequence_indices

    ex = [{"input_ids": [1] * n, "labels": [IGNORE_INDEX] + [1] * (n - 1)} for n in (6, 5, 2)]
    b = batching.collate(ex, "pack", pad_id=0, max_seq_len=8, attn_implementation="flex_attention")
    assert set(b.inputs) == {"input_ids", "position_ids"}  # any attention_mask disables it
    assert b.inputs["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0], [0, 1, 2, 3, 4, 0, 1]]
    # Rows of 6 (+1 pad) and 5+2: each example and each pad is its own document.
    docs = find_packed_sequence_indices(b.inputs["position_ids"]).tolist()
    assert docs == [[0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1, 1]]
    assert b.labels.tolist()[1][5] == IGNORE_INDEX  # no label across the boundary
    assert (b.n_examples, b.n_tokens, b.n_slots) == (3, 13, 14)
    # Negative control: positions that do not restart read as one document.
    flat = b.inputs["position_ids"].new_tensor([list(range(7))] * 2)
    assert find_packed_sequence_indices(flat) is None


def test_collate_dispatches_on_the_attention_backend():
    ex = [
        {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]},
        {"input_ids": [4], "labels": [4]},
    ]
    kw = {"pad_id": 0, "max_seq_len": 8}
    keys = {
        impl: set(batching.collate(ex, "pack", attn_implementation=impl, **kw).inputs)
        for impl in ("sdpa", "eager", "flex_attention", "flash_attention_2")
    }
    assert keys["sdpa"] == keys["eager"] == {"input_ids", "attention_mask", "position_ids"}
    assert keys["flex_attention"] == {"input_ids", "position_ids"}
    assert "cu_seq_lens_q" in keys["flash_attention_2"]
    grouped = batching.collate(ex, "group", attn_implementation="flex_attention", **kw)
    assert grouped.inputs["attention_mask"].dim() == 2


# ----- isolation on the real model ------------------------------------------------------------


def _per_example_losses(logits, labels, spans):
    import torch.nn.functional as F

    out = []
    for row, start, n in spans:
        lg = logits[row, start : start + n - 1].float()
        tg = labels[row, start + 1 : start + n]
        out.append(F.cross_entropy(lg, tg, ignore_index=IGNORE_INDEX, reduction="sum").item())
    return out


def _spans(batch, examples):
    """(row, start, length) of each example inside a packed batch, found by its ids."""
    ids = batch.inputs["input_ids"].tolist()
    spans = []
    for e in examples:
        n = len(e["input_ids"])
        for r, row in enumerate(ids):
            hits = [s for s in range(len(row) - n + 1) if row[s : s + n] == e["input_ids"]]
            if hits:
                spans.append((r, hits[0], n))
                break
    assert len(spans) == len(examples)
    return spans


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir):
    from trainer.modeling import load_base_model

    return {
        impl: load_base_model(tiny_model_dir, precision="fp32", attn_implementation=impl).eval()
        for impl in ("sdpa", "eager")
    }


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_packed_losses_equal_each_example_alone(tiny_models, examples, impl, use_cache):
    import torch

    model = tiny_models[impl]
    b = batching.collate_packed(examples, pad_id=0, max_seq_len=56)
    assert b.inputs["input_ids"].shape[0] >= 2  # several rows, several examples per row
    assert all(sum(1 for s in _spans(b, examples) if s[0] == r) == 2 for r in range(2))
    with torch.no_grad():
        packed_logits = model(**b.inputs, use_cache=use_cache).logits
        packed = _per_example_losses(packed_logits, b.labels, _spans(b, examples))
        alone = []
        for e in examples:
            ids = torch.tensor([e["input_ids"]])
            logits = model(input_ids=ids, use_cache=use_cache).logits
            labels = torch.tensor([e["labels"]])
            alone += _per_example_losses(logits, labels, [(0, 0, len(e["input_ids"]))])
    assert packed == pytest.approx(alone, abs=1e-5, rel=1e-5)


def test_without_the_block_mask_packed_examples_leak(tiny_models, examples):
    """Negative control: the isolation test above can fail (REFERENCE.md's trap)."""
    import torch

    model = tiny_models["sdpa"]
    b = batching.collate_packed(examples, pad_id=0, max_seq_len=56)
    with torch.no_grad():
        leaky = model(
            input_ids=b.inputs["input_ids"], position_ids=b.inputs["position_ids"], use_cache=True
        ).logits
        isolated = model(**b.inputs, use_cache=True).logits
    assert (leaky - isolated).abs().max().item() > 1e-3


def test_training_loss_is_the_same_packed_grouped_or_alone(tiny_models, examples):
    import torch

    from trainer.train import supervised_loss_sum

    model = tiny_models["sdpa"]
    with torch.no_grad():
        results = []
        for b in (
            batching.collate_packed(examples, pad_id=0, max_seq_len=56),
            batching.collate_padded(examples, pad_id=0),
        ):
            loss, n = supervised_loss_sum(model, b.inputs, b.labels)
            results.append((loss.item(), int(n)))
        total, count = 0.0, 0
        for e in examples:
            b = batching.collate_padded([e], pad_id=0)
            loss, n = supervised_loss_sum(model, b.inputs, b.labels)
            total, count = total + loss.item(), count + int(n)
    assert (
        results[0][1]
        == results[1][1]
        == count
        == sum(sum(1 for x in e["labels"] if x != IGNORE_INDEX) for e in examples)
    )
    assert results[0][0] == pytest.approx(total, rel=1e-5)
    assert results[1][0] == pytest.approx(total, rel=1e-5)


def _packed_vs_alone(model, examples, attn, *, use_cache=False, device="cpu"):
    """Per-example loss sums of the packed micro-batch, and of each example run alone."""
    import torch

    b = batching.collate(examples, "pack", pad_id=0, max_seq_len=56, attn_implementation=attn)
    assert b.inputs["input_ids"].shape[0] >= 2  # several rows, several examples per row
    inputs = {k: v.to(device) for k, v in b.inputs.items()}
    with torch.no_grad():
        logits = model(**inputs, use_cache=use_cache).logits.cpu()
        packed = _per_example_losses(logits, b.labels, _spans(b, examples))
        alone = []
        for e in examples:
            ids = torch.tensor([e["input_ids"]], device=device)
            one = model(input_ids=ids, use_cache=False).logits.cpu()
            alone += _per_example_losses(
                one, torch.tensor([e["labels"]]), [(0, 0, len(e["input_ids"]))]
            )
    return packed, alone


@pytest.mark.slow
def test_flex_attention_packing_isolates_examples_on_cpu(tiny_model_dir, examples):
    """Forward only: torch 2.13 has no flex-attention backward on CPU (training needs CUDA).

    The first call compiles flex attention (~25 s on one core), hence slow.
    """
    from trainer.modeling import load_base_model

    model = load_base_model(
        tiny_model_dir, precision="fp32", attn_implementation="flex_attention"
    ).eval()
    assert model.config._attn_implementation == "flex_attention"
    packed, alone = _packed_vs_alone(model, examples, "flex_attention")
    assert packed == pytest.approx(alone, abs=1e-5, rel=1e-5)
    # Negative control: with a cache transformers builds no document mask and rows leak.
    leaky, _ = _packed_vs_alone(model, examples, "flex_attention", use_cache=True)
    assert max(abs(x - y) for x, y in zip(leaky, alone, strict=True)) > 1e-3


@pytest.mark.gpu
def test_flex_attention_packing_isolates_examples_on_cuda(tiny_model_dir, examples):
    """fp32 on the GPU: the tiny model's leak is only ~0.05-0.4 % of a loss, below bf16 noise."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from trainer import modeling
    from trainer.loss import supervised_loss_sum

    if not modeling._flex_attention_available():
        pytest.skip("this torch has no flex attention")
    model = modeling.load_base_model(
        tiny_model_dir, precision="fp32", device="cuda", attn_implementation="flex_attention"
    ).eval()
    packed, alone = _packed_vs_alone(model, examples, "flex_attention", device="cuda")
    assert packed == pytest.approx(alone, rel=1e-4)
    leaky, _ = _packed_vs_alone(model, examples, "flex_attention", use_cache=True, device="cuda")
    assert max(abs(x - y) / abs(y) for x, y in zip(leaky, alone, strict=True)) > 1e-3
    # Training runs there: flex attention has a CUDA backward.
    model.train()
    b = batching.collate(
        examples, "pack", pad_id=0, max_seq_len=56, attn_implementation="flex_attention"
    )
    loss, n = supervised_loss_sum(
        model, {k: v.cuda() for k, v in b.inputs.items()}, b.labels.cuda()
    )
    (loss / n).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.gpu
def test_flash_attention_varlen_isolation(tiny_model_dir, examples):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("flash_attn")
    from trainer.modeling import load_base_model
    from trainer.train import supervised_loss_sum

    model = load_base_model(
        tiny_model_dir, precision="bf16", device="cuda", attn_implementation="flash_attention_2"
    ).eval()
    with torch.no_grad():
        b = batching.collate_varlen(examples)
        inputs = {k: (v.cuda() if hasattr(v, "cuda") else v) for k, v in b.inputs.items()}
        packed, _ = supervised_loss_sum(model, inputs, b.labels.cuda())
        alone = 0.0
        for e in examples:
            one = batching.collate_varlen([e])
            inputs = {k: (v.cuda() if hasattr(v, "cuda") else v) for k, v in one.inputs.items()}
            alone += supervised_loss_sum(model, inputs, one.labels.cuda())[0].item()
    assert packed.item() == pytest.approx(alone, rel=2e-2)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=40),
    st.integers(-1, 2000),
)
def test_pieces_cover_the_batch_and_respect_the_cap(lengths, cap):
    idx = list(range(len(lengths)))[::-1]
    pieces = batching.split_by_tokens(idx, lengths, cap)
    assert sorted(i for p in pieces for i in p) == sorted(idx)
    if cap <= 0:
        assert pieces == [idx]
        return
    for p in pieces:
        padded = len(p) * max(lengths[i] for i in p)
        assert padded <= cap or len(p) == 1  # a row longer than the cap stands alone
    # Longest first, so each piece pads to its own longest row and no piece could take the
    # next piece's first row without passing the cap.
    flat = [i for p in pieces for i in p]
    assert [lengths[i] for i in flat] == sorted((lengths[i] for i in flat), reverse=True)
    for p, _ in itertools.pairwise(pieces):
        assert (len(p) + 1) * lengths[p[0]] > cap


def test_piece_size_is_1024_tokens_on_cpu_and_off_on_gpu_by_default():
    assert batching.resolve_micro_batch_tokens(0, "cpu") == batching.CPU_MICRO_BATCH_TOKENS
    assert batching.resolve_micro_batch_tokens(0, "cuda:0") == 0
    assert batching.resolve_micro_batch_tokens(-1, "cpu") == 0
    assert batching.resolve_micro_batch_tokens(300, "cuda:0") == 300
