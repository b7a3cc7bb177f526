"""Micro-batches: sequence packing with block-diagonal masks, or length-grouped padding.

Both modes put the same number of examples (``batch_size``) in a micro-batch, so the optimiser
sees the same examples per step whichever mode runs; they differ only in how the examples
are laid out:

* ``group``: examples are shuffled, sorted by length inside mega-batches of
  ``batch_size * mega_batch_mult``, cut into batches, and the batch order shuffled; a batch is
  right-padded to its longest example (labels -100 and attention_mask 0 on pads).
* ``pack``: the examples of a shuffled batch are packed into as few rows of at most
  ``max_seq_len`` tokens as fit, balanced so the rows have similar lengths. Each row carries an
  explicit 4D block-diagonal causal mask (B x 1 x L x L, 0 allowed, dtype-min elsewhere) and
  position_ids that restart at every example, so no example attends to another whatever the
  backend or the KV-cache setting (the trap in REFERENCE.md). On flash-attention the
  micro-batch is instead flattened into one row and isolated by ``cu_seq_lens`` (varlen).
  On flex attention the same rows carry no mask at all, only the restarted position_ids:
  transformers (``masking_utils.find_packed_sequence_indices``) turns them into a document
  BlockMask, block-sparse, never an L x L tensor. It does so only when the forward runs with
  no cache (``use_cache=False``, as ``trainer.loss.supervised_loss_sum`` does) and no
  attention_mask; with a cache the examples of a row see each other.

Epoch ``e`` is a pure function of ``(seed, e)``, so a run resumes at ``(epoch, batch index)``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100

MEGA_BATCH_MULT = 50
"""Length grouping sorts within windows of this many batches (as transformers' sampler)."""

PACKING_KERNELS = ("flash_attention_2", "flex_attention")
"""Attention backends that isolate packed examples without a materialised L x L mask."""


@dataclass
class Batch:
    """A collated micro-batch and its token accounting."""

    inputs: dict[str, Any]
    """Keyword arguments for the model forward (input_ids, attention_mask, position_ids, ...)."""
    labels: Any
    """(B, L) long tensor, -100 where no loss is taken; aligned with ``input_ids`` (unshifted)."""
    n_examples: int
    n_tokens: int
    """Real (non-pad) tokens."""
    n_slots: int
    """Token slots in the tensors (B x L): real tokens plus padding."""
    n_supervised: int
    """Tokens that contribute to the loss (labels != -100 after the causal shift)."""

    @property
    def n_pad(self) -> int:
        return self.n_slots - self.n_tokens


def choose_batching(batching: str, device: str, attn_implementation: str | None = None) -> str:
    """Resolve ``auto`` to ``pack`` or ``group``.

    Rule, from measurement: on CPU the masked-out blocks of a packed row are still computed
    (L x L per row instead of sum of l x l per example) and sdpa with an arbitrary 4D mask
    loses its causal fast path, while length grouping already pads < 1 %. Measured with
    ``llmft train --data <validated sample train.jsonl> --max-steps 60 --batching group|pack``
    (tiny model, batch 16, 1 thread, 3 interleaved repeats, medians): group 7.26 steps/s,
    322 supervised tok/s, padding 0.64 %; pack 6.11 steps/s, 286 supervised tok/s, padding
    0 %: grouping is 1.13-1.27x faster per repeat. With flash-attention varlen or flex
    attention (CUDA) packing has no L x L mask to build or apply (masked-out blocks are
    skipped), so ``auto`` packs there.

    Args:
        batching: ``auto``, ``pack`` or ``group``.
        device: ``cpu`` or ``cuda[:N]``.
        attn_implementation: The model's attention backend.

    Returns:
        ``pack`` or ``group``.
    """
    if batching != "auto":
        return batching
    if device.startswith("cuda") and attn_implementation in PACKING_KERNELS:
        return "pack"
    return "group"


def _rng(seed: int, epoch: int) -> Any:
    import numpy as np

    return np.random.default_rng([seed, epoch])


def group_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    mega_batch_mult: int = MEGA_BATCH_MULT,
) -> list[list[int]]:
    """Length-grouped batches of example indices for one epoch (deterministic in seed, epoch).

    The batch holding the longest example comes first, so an out-of-memory shows at step 1.
    """
    import numpy as np

    rng = _rng(seed, epoch)
    lens = np.asarray(lengths)
    order = rng.permutation(len(lens))
    window = batch_size * mega_batch_mult
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    perm = rng.permutation(len(batches)).tolist()
    batches = [batches[i] for i in perm]
    if batches:
        longest = max(range(len(batches)), key=lambda i: lens[batches[i][0]])
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def random_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int
) -> list[list[int]]:
    """Shuffled batches of example indices (the packing mode's batches)."""
    order = _rng(seed, epoch).permutation(len(lengths)).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def plan_epoch(
    mode: str, lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int
) -> list[list[int]]:
    """The micro-batches (lists of example indices) of one epoch for ``mode``."""
    if mode == "group":
        return group_batches(lengths, batch_size, seed=seed, epoch=epoch)
    if mode == "pack":
        return random_batches(lengths, batch_size, seed=seed, epoch=epoch)
    raise ValueError(f"unknown batching mode {mode!r}")


def iterate_batches(
    mode: str,
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    start_epoch: int = 0,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[int, int, list[int]]]:
    """Endless ``(epoch, batch index, example indices)`` from a data position onwards.

    With several processes the epoch is planned in global batches of
    ``batch_size * world_size`` examples and process ``rank`` takes the ``rank``-th share of
    each, so a step of N processes sees exactly the examples of a one-process step with
    ``batch_size * N`` (same order, same length grouping). The position counts global batches.
    A global batch too small to give every process an example (the epoch's tail) is skipped.
    """
    epoch, b = start_epoch, start_batch
    while True:
        plan = plan_epoch(mode, lengths, batch_size * world_size, seed=seed, epoch=epoch)
        if not plan:
            raise ValueError("no examples to batch")
        while b < len(plan):
            share = shard(plan[b], rank, world_size)
            if len(plan[b]) >= world_size:
                yield epoch, b, share
            b += 1
        epoch, b = epoch + 1, 0


CPU_MICRO_BATCH_TOKENS = 1024
"""Auto piece size on the CPU. Measured (SmolLM2-135M, LoRA fwd+bwd, 1 thread, fp32): 196
tok/s at 4 x 217 tokens, 185 at 8 x 128, 118 at 16 x 217: past ~1k tokens the activations
outgrow the caches and every step faults in gigabytes of fresh pages."""


def resolve_micro_batch_tokens(value: int, device: str) -> int:
    """The piece size ``split_by_tokens`` uses: ``value`` (0 = auto) for ``device``; 0 = no split.

    Args:
        value: ``TrainConfig.micro_batch_tokens`` (-1 never, 0 auto, > 0 a cap).
        device: ``cpu`` or ``cuda[:N]``.

    Returns:
        A token cap, or 0 for no splitting (GPUs run large micro-batches efficiently).
    """
    if value < 0:
        return 0
    if value > 0:
        return value
    return CPU_MICRO_BATCH_TOKENS if device == "cpu" else 0


def split_by_tokens(
    indices: Sequence[int], lengths: Sequence[int], max_tokens: int
) -> list[list[int]]:
    """Pieces of a padded micro-batch, each at most ``max_tokens`` padded tokens.

    Examples are sorted longest first and cut greedily, so each piece pads to its own longest
    row (less padding than the whole micro-batch); an example longer than ``max_tokens`` is a
    piece of its own. The loss sums token losses over all pieces of the optimizer step before
    dividing by the step's supervised tokens, so the step is the unsplit one.

    Args:
        indices: The micro-batch's example indices.
        lengths: Token length of every example (indexed by the indices).
        max_tokens: The cap; <= 0 returns the micro-batch whole.

    Returns:
        Lists of indices whose union is ``indices``.
    """
    if max_tokens <= 0 or not indices:
        return [list(indices)]
    order = sorted(indices, key=lambda i: -lengths[i])  # stable: ties keep batch order
    pieces: list[list[int]] = []
    piece: list[int] = []
    for i in order:
        # Sorted longest first: the piece's first row sets its padded length.
        width = lengths[piece[0]] if piece else lengths[i]
        if piece and (len(piece) + 1) * width > max_tokens:
            pieces.append(piece)
            piece = []
        piece.append(i)
    pieces.append(piece)
    return pieces


def shard(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Process ``rank``'s contiguous share of a global batch (sizes differ by at most one)."""
    q, r = divmod(len(batch), world_size)
    start = rank * q + min(rank, r)
    return list(batch[start : start + q + (1 if rank < r else 0)])


def pack_rows(lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """Split examples into the fewest rows of at most ``max_seq_len`` tokens, balanced.

    Longest-first onto the least-loaded row, for ``k = ceil(total / max_seq_len)`` rows, and one
    more row until everything fits; balanced rows keep the padding to the longest row small.

    Args:
        lengths: Token counts (each must be <= ``max_seq_len``).
        max_seq_len: Row capacity.

    Returns:
        Rows as lists of positions in ``lengths`` (original order kept inside a row).
    """
    if not lengths:
        return []
    if max(lengths) > max_seq_len:
        raise ValueError(f"example of {max(lengths)} tokens > max_seq_len {max_seq_len}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    k = max(1, math.ceil(sum(lengths) / max_seq_len))
    while True:
        heap = [(0, r) for r in range(k)]
        rows: list[list[int]] = [[] for _ in range(k)]
        ok = True
        for i in order:
            load, r = heapq.heappop(heap)
            if load + lengths[i] > max_seq_len:
                ok = False
                break
            rows[r].append(i)
            heapq.heappush(heap, (load + lengths[i], r))
        if ok:
            return [sorted(r) for r in rows if r]
        k += 1


def block_causal_mask(segment_ids: Any, dtype: Any) -> Any:
    """Additive 4D mask (B x 1 x L x L): 0 where query may see key, ``finfo(dtype).min`` elsewhere.

    A query sees keys at or before it with the same segment id; pads get their own segment
    per position, so their rows are never fully masked (which would give NaN in softmax).
    """
    import torch

    L = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _count_supervised(labels: Any) -> int:
    # Position 0 of a row has no previous token; every other label != -100 is predicted.
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def collate_padded(examples: Sequence[dict[str, Any]], pad_id: int) -> Batch:
    """Right-pad to the longest example: attention_mask 0 and labels -100 on pads."""
    import torch

    L = max(len(e["input_ids"]) for e in examples)
    B = len(examples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    n_tok = 0
    for r, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[r, :n] = torch.as_tensor(e["input_ids"])
        labels[r, :n] = torch.as_tensor(e["labels"])
        attn[r, :n] = 1
        n_tok += n
    return Batch(
        inputs={"input_ids": ids, "attention_mask": attn},
        labels=labels,
        n_examples=B,
        n_tokens=n_tok,
        n_slots=B * L,
        n_supervised=_count_supervised(labels),
    )


def _packed_tensors(rows: list[list[dict[str, Any]]], pad_id: int, L: int) -> tuple[Any, ...]:
    import torch

    B = len(rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((B, L), dtype=torch.long)
    seg = torch.zeros((B, L), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, e in enumerate(row):
            n = len(e["input_ids"])
            ids[r, at : at + n] = torch.as_tensor(e["input_ids"])
            lab = torch.as_tensor(e["labels"]).clone()
            # The first token of an example would be "predicted" from the previous example.
            lab[0] = IGNORE_INDEX
            labels[r, at : at + n] = lab
            pos[r, at : at + n] = torch.arange(n)
            seg[r, at : at + n] = s
            at += n
        # Pads: one segment per position (attend to themselves only), position 0.
        seg[r, at:] = torch.arange(len(row), len(row) + L - at)
    return ids, labels, pos, seg


def collate_packed(
    examples: Sequence[dict[str, Any]], pad_id: int, max_seq_len: int, dtype: Any = None
) -> Batch:
    """Pack examples into balanced rows with a 4D block-diagonal causal mask (sdpa/eager).

    Args:
        examples: Dicts with ``input_ids`` and ``labels``.
        pad_id: Token id used for padding (its labels are -100 by position).
        max_seq_len: Row capacity.
        dtype: Dtype of the additive mask (the attention compute dtype; default float32).

    Returns:
        A ``Batch`` whose inputs hold ``input_ids``, a 4D ``attention_mask`` and ``position_ids``.
    """
    import torch

    lens = [len(e["input_ids"]) for e in examples]
    rows = [[examples[i] for i in row] for row in pack_rows(lens, max_seq_len)]
    L = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    ids, labels, pos, seg = _packed_tensors(rows, pad_id, L)
    mask = block_causal_mask(seg, dtype or torch.float32)
    return Batch(
        inputs={"input_ids": ids, "attention_mask": mask, "position_ids": pos},
        labels=labels,
        n_examples=len(examples),
        n_tokens=sum(lens),
        n_slots=len(rows) * L,
        n_supervised=_count_supervised(labels),
    )


def collate_packed_positions(
    examples: Sequence[dict[str, Any]], pad_id: int, max_seq_len: int
) -> Batch:
    """Pack like ``collate_packed`` but with no mask: isolation by restarted position_ids.

    For ``flex_attention``: transformers reads a position that does not follow the previous
    one as the start of a new document and builds a block-sparse document mask from that
    (pads have position 0 each, so every pad is a document of its own). The model must run
    with ``use_cache=False``; an ``attention_mask`` (2D or 4D) must not be passed.
    """
    lens = [len(e["input_ids"]) for e in examples]
    rows = [[examples[i] for i in row] for row in pack_rows(lens, max_seq_len)]
    L = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    ids, labels, pos, _ = _packed_tensors(rows, pad_id, L)
    return Batch(
        inputs={"input_ids": ids, "position_ids": pos},
        labels=labels,
        n_examples=len(examples),
        n_tokens=sum(lens),
        n_slots=len(rows) * L,
        n_supervised=_count_supervised(labels),
    )


def collate_varlen(examples: Sequence[dict[str, Any]]) -> Batch:
    """Flatten the micro-batch into one padding-free row for flash-attention varlen.

    Isolation comes from ``cu_seq_lens_q/k`` (and restarted ``position_ids``, which transformers
    also reads); no mask is passed. Needs ``attn_implementation="flash_attention_2"``.
    """
    import torch

    lens = [len(e["input_ids"]) for e in examples]
    ids = torch.tensor([[t for e in examples for t in e["input_ids"]]], dtype=torch.long)
    labels = []
    for e in examples:
        lab = list(e["labels"])
        lab[0] = IGNORE_INDEX
        labels += lab
    lab_t = torch.tensor([labels], dtype=torch.long)
    pos = torch.tensor([[p for n in lens for p in range(n)]], dtype=torch.long)
    cu = torch.tensor([0, *list(_cumsum(lens))], dtype=torch.int32)
    return Batch(
        inputs={
            "input_ids": ids,
            "position_ids": pos,
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": max(lens),
            "max_length_k": max(lens),
        },
        labels=lab_t,
        n_examples=len(examples),
        n_tokens=sum(lens),
        n_slots=sum(lens),
        n_supervised=_count_supervised(lab_t),
    )


def _cumsum(xs: Sequence[int]) -> Iterator[int]:
    total = 0
    for x in xs:
        total += x
        yield total


def collate(
    examples: Sequence[dict[str, Any]],
    mode: str,
    *,
    pad_id: int,
    max_seq_len: int,
    attn_implementation: str | None = None,
    mask_dtype: Any = None,
) -> Batch:
    """Collate a micro-batch for ``mode`` (``pack`` or ``group``) and the attention backend.

    Packing: flash_attention_2 gets one varlen row, flex_attention mask-free rows with
    restarted position_ids, anything else rows with a 4D block-diagonal mask.
    """
    if mode == "group":
        return collate_padded(examples, pad_id)
    if mode == "pack":
        if attn_implementation == "flash_attention_2":
            return collate_varlen(examples)
        if attn_implementation == "flex_attention":
            return collate_packed_positions(examples, pad_id, max_seq_len)
        return collate_packed(examples, pad_id, max_seq_len, mask_dtype)
    raise ValueError(f"unknown batching mode {mode!r}")


def padding_fraction(
    mode: str,
    lengths: Sequence[int],
    batch_size: int,
    *,
    max_seq_len: int,
    seed: int = 0,
    epoch: int = 0,
) -> float:
    """Share of token slots that would be padding in one epoch of ``mode`` (no tensors built)."""
    slots = 0
    for b in plan_epoch(mode, lengths, batch_size, seed=seed, epoch=epoch):
        lens = [lengths[i] for i in b]
        if mode == "group":
            slots += len(lens) * max(lens)
        else:
            rows = pack_rows(lens, max_seq_len)
            slots += len(rows) * max(sum(lens[i] for i in r) for r in rows)
    total = sum(lengths)
    return 1.0 - total / slots if slots else 0.0
