"""The LoRA training loop: accelerate for devices and precision, plain PyTorch for the rest.

Loss is the mean over supervised tokens of an optimizer step: each micro-batch contributes
``sum of its token losses / supervised tokens of the whole step (all micro-batches, all
processes)``, so gradient accumulation and data parallelism give the same gradient as one big
batch even when micro-batches hold different numbers of supervised tokens. The output head
runs only on supervised positions (the prompt is most of every row), which saves most of the
vocabulary projection; it runs in chunks, so no batch x length x vocabulary tensor exists
(``trainer.loss``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainer.batching import Batch
from trainer.config import TrainConfig
from trainer.loss import LOSS_CHUNK_TOKENS, supervised_loss_sum

__all__ = ["LOSS_CHUNK_TOKENS", "accumulate_gradients", "lr_lambda", "supervised_loss_sum", "train"]

TRAIN_METRICS = "train_metrics.json"
TRAIN_CONFIG = "train_config.json"
LOSS_CURVE = "loss_curve.png"


# ---------------------------------------------------------------------------------------------
# Loss


@functools.cache
def _loss_module_cls() -> type:
    import torch

    class SupervisedLoss(torch.nn.Module):
        """Wraps a causal LM; forward returns ``(sum of token losses, supervised tokens)``.

        A module (not a function) so DDP wraps it and gradient sync sees the forward.
        """

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, labels: Any, **inputs: Any) -> tuple[Any, Any]:
            return supervised_loss_sum(self.model, inputs, labels)

    return SupervisedLoss


def _to_device(batch: Batch, device: Any) -> tuple[dict[str, Any], Any]:
    inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.inputs.items()}
    return inputs, batch.labels.to(device)


def accumulate_gradients(
    loss_model: Any,
    micro: Sequence[Batch],
    accelerator: Any,
    *,
    amp_dtype: Any = None,
    scaler: Any = None,
) -> tuple[Any, Any]:
    """Backward over the micro-batches of one optimizer step, normalised by the step's
    supervised tokens over all micro-batches and processes.

    Args:
        loss_model: The (prepared) ``SupervisedLoss`` module.
        micro: The step's micro-batches on this process.
        accelerator: The ``accelerate.Accelerator``.
        amp_dtype: Autocast dtype (None: no autocast).
        scaler: ``torch.amp.GradScaler`` (fp16): the loss is scaled before backward.

    Returns:
        ``(sum of token losses over all processes, supervised tokens over all processes)``;
        their ratio is the step's loss.
    """
    import torch

    device = accelerator.device
    world = accelerator.num_processes
    n_sup = torch.tensor(float(sum(m.n_supervised for m in micro)), device=device)
    if world > 1:
        n_sup = accelerator.reduce(n_sup, reduction="sum")
    denom = max(1.0, float(n_sup))
    step_loss = torch.zeros((), device=device)
    for i, mb in enumerate(micro):
        inputs, labels = _to_device(mb, device)
        last = i == len(micro) - 1
        ctx = contextlib.nullcontext() if last else accelerator.no_sync(loss_model)
        with ctx:
            with _autocast(device, amp_dtype):
                loss_sum, _ = loss_model(labels, **inputs)
            # DDP averages gradients over processes; * world turns that into a sum.
            scaled = loss_sum * (world / denom)
            accelerator.backward(scaler.scale(scaled) if scaler is not None else scaled)
        step_loss += loss_sum.detach().float()
    if world > 1:
        step_loss = accelerator.reduce(step_loss, reduction="sum")
    return step_loss, n_sup


def _autocast(device: Any, amp_dtype: Any) -> Any:
    import torch

    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)


COLLECTIVE_TIMEOUT_S = 4 * 3600
"""How long a rank waits in a collective (the others run rank-0-only work meanwhile)."""

MAX_CONSECUTIVE_SKIPS = 50
"""fp16 steps skipped in a row (gradient overflow) before training gives up: the dynamic loss
scale halves on each, so 50 in a row means it collapsed, not a transient spike."""


# ---------------------------------------------------------------------------------------------
# Schedule


def lr_lambda(step: int, *, total: int, warmup: int, schedule: str) -> float:
    """LR multiplier after ``step`` scheduler steps: linear warm-up, then linear/cosine/flat."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


# ---------------------------------------------------------------------------------------------
# Paths


def _local_input(uri: str, tmpdir: str) -> str:
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if uri.startswith("gs://"):
        from trainer import storage

        dest = os.path.join(tmpdir, os.path.basename(uri.rstrip("/")) or "data.jsonl")
        storage.download_file(uri, dest)
        return dest
    if os.path.isdir(uri):
        raise FileNotFoundError(f"{uri}: is a directory, not a JSONL data file")
    if not os.path.isfile(uri):
        raise FileNotFoundError(f"data file not found: {uri}")
    return uri


def _has_rows(path: str) -> bool:
    """Whether a JSONL file holds any non-blank line (read until the first one)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            if chunk.replace(b"\xef\xbb\xbf", b"").strip():
                return True
    return False


def _read_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    return rows


def _plot(losses: list[float], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = list(range(1, len(losses) + 1))
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss per step")
    w = max(1, len(losses) // 20)
    if w > 1:
        smooth = [
            sum(losses[max(0, i - w + 1) : i + 1]) / len(losses[max(0, i - w + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot(steps, smooth, lw=1.6, label=f"mean of {w}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over supervised tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Training


def train(
    cfg: TrainConfig,
    data: str,
    eval_data: str | None,
    output: str,
    checkpoint_dir: str | None = None,
    *,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter and write it with its metrics to ``output``.

    Args:
        cfg: Every training knob.
        data: Training JSONL (local, ``file://``, ``/gcs/`` or ``gs://``).
        eval_data: Optional held-out JSONL; its loss is reported as ``eval_loss``.
        output: Output directory (local or ``gs://``; gs:// is written locally and uploaded).
        checkpoint_dir: Where ``checkpoint-<step>`` folders go; the latest complete one is
            resumed from. ``None`` disables checkpoints and SIGTERM handling saves nothing.
        log: Receives one line per event (progress every ``cfg.log_every`` steps).
        progress: Called as ``progress(step, total_steps)`` after every optimizer step.

    Returns:
        The content of ``train_metrics.json``.

    Raises:
        trainer.checkpoint.Preempted: SIGTERM arrived; a checkpoint was saved when possible.
        FileNotFoundError: a data file or the model is missing.
        ValueError: no trainable rows remain after formatting.
    """
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmft-train-") as tmp:
        out_local = output
        if output.startswith("gs://"):
            out_local = os.path.join(tmp, "output")
        elif output.startswith("file://"):
            out_local = output[len("file://") :]
        os.makedirs(out_local, exist_ok=True)
        metrics = _train(cfg, data, eval_data, out_local, checkpoint_dir, tmp, log, progress)
        metrics["wall_time_s"] = round(time.perf_counter() - t_start, 3)
        if os.environ.get("RANK", "0") != "0":
            return metrics  # data-parallel worker: rank 0 writes the outputs
        Path(out_local, TRAIN_METRICS).write_text(json.dumps(metrics, indent=2))
        if output.startswith("gs://"):
            from trainer import storage

            storage.upload_dir(out_local, output)
            log(f"uploaded {output}")
    return metrics


def _train(
    cfg: TrainConfig,
    data: str,
    eval_data: str | None,
    out: str,
    checkpoint_dir: str | None,
    tmp: str,
    log: Callable[[str], None],
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from trainer import batching, checkpoint, modeling
    from trainer.tokenize import tokenize_file

    data_path = _local_input(data, tmp)
    eval_path = _local_input(eval_data, tmp) if eval_data else None
    if not _has_rows(data_path):
        raise ValueError(f"{data}: no training rows (the file is empty)")

    device = modeling.resolve_device("auto")
    amp_dtype, _ = modeling.resolve_precision(cfg.precision, device)
    # Mixed precision is done here (torch.autocast + our GradScaler), not by accelerate: a step
    # the fp16 scaler skips must not advance the schedule or the step count, and the scaler's
    # state belongs in the checkpoint.
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    # Other ranks wait in a barrier while rank 0 tokenises, evaluates and merges alone; the
    # default collective timeout (10 min NCCL, 30 min gloo) would abort a long merge.
    accelerator = Accelerator(
        mixed_precision="no",
        cpu=device == "cpu",
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))],
    )
    device = str(accelerator.device)
    if cfg.batch_size == 0:
        from trainer import plan

        cfg = plan.resolve_auto_batch(cfg, device, log=log)
    scaler = modeling.grad_scaler(amp_dtype, device)
    world, rank = accelerator.num_processes, accelerator.process_index
    attn = (
        modeling.default_attn_implementation(device)
        if cfg.attn_implementation == "auto"
        else cfg.attn_implementation
    )
    mode = batching.choose_batching(cfg.batching, device, attn)
    # Packed rows are already max_seq_len wide with no padding to save: only grouping splits.
    piece_tokens = (
        batching.resolve_micro_batch_tokens(cfg.micro_batch_tokens, device)
        if mode == "group"
        else 0
    )

    tokenizer = modeling.load_tokenizer(cfg.model)
    with accelerator.main_process_first():
        tok = tokenize_file(
            data_path,
            tokenizer,
            system_prompt=cfg.system_prompt,
            max_seq_len=cfg.max_seq_len,
            long_rows=cfg.long_rows,
        )
    log(
        f"data: {tok.n_kept} of {tok.n_rows} rows kept"
        + (f", dropped {tok.dropped_by_code}" if tok.n_dropped else "")
        + (f", {tok.n_truncated} truncated" if tok.n_truncated else "")
        + (" (tokenised cache hit)" if tok.cache_hit else "")
    )
    if tok.n_kept == 0:
        raise ValueError(f"{data}: no trainable rows after formatting ({tok.dropped_by_code})")
    lengths = tok.lengths()
    if len(lengths) < world:
        raise ValueError(f"{data}: {len(lengths)} rows cannot feed {world} processes")
    # Global batches of batch_size x processes: N processes step like one with N x batch_size.
    # A global batch too small to give every process a row is skipped (iterate_batches).
    global_batch = cfg.batch_size * world
    n_batches = len(lengths) // global_batch + (len(lengths) % global_batch >= world)
    steps_per_epoch = max(1, n_batches // cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = int(cfg.warmup_ratio * total)

    set_seed(cfg.seed)
    model = modeling.load_base_model(
        cfg.model,
        precision=cfg.precision,
        device=device,
        attn_implementation=attn,
        quantization=cfg.quantization,
    )
    if cfg.quantization != "none":
        from trainer.quantization import prepare_for_training

        model = prepare_for_training(model, gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = modeling.build_lora(model, cfg)
    if world > 1:
        # Same adapter init on every rank (above); from here each rank draws its own dropout.
        set_seed(cfg.seed + rank)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_params = sum(p.numel() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(lr_lambda, total=total, warmup=warmup, schedule=cfg.lr_schedule),
    )
    loss_model = _loss_module_cls()(model)
    # The scheduler is stepped by hand: accelerate's wrapper steps it once per process.
    loss_model, optimizer = accelerator.prepare(loss_model, optimizer)

    step, epoch, batch_idx = 0, 0, 0
    hist: dict[str, list[float]] = {"loss": [], "lr": []}
    counts = {"tokens": 0, "slots": 0, "supervised": 0, "examples": 0, "skipped_steps": 0}
    train_time = 0.0
    resumed_from = None
    if checkpoint_dir:
        for _, uri in checkpoint.complete_checkpoints(checkpoint_dir, log=log):
            try:
                state = checkpoint.load_checkpoint(
                    uri,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    rank=rank,
                    scaler=scaler,
                )
            except checkpoint.CheckpointDamaged as exc:
                log(f"warning: skipping damaged checkpoint: {exc}")
                continue
            step, epoch, batch_idx = state["step"], state["epoch"], state["batch"]
            hist, counts, train_time = state["history"], state["counts"], state["train_time_s"]
            counts.setdefault("skipped_steps", 0)
            saved_world = int(state.get("world_size", 1))
            if saved_world != world:
                raise ValueError(
                    f"checkpoint {uri} was written by {saved_world} training process(es), this "
                    f"run has {world}: resume with {saved_world} (its data position counts "
                    f"global batches of {saved_world} x batch_size), or use a new checkpoint_dir"
                )
            resumed_from = os.path.basename(uri.rstrip("/"))
            _warn_config_drift(state.get("config", {}), cfg, log)
            log(f"resumed from {resumed_from}")
            break

    log(
        f"training {cfg.model}: {n_trainable:,} of {n_params:,} params trainable, "
        f"{total} steps, batching={mode}"
        + (f" (pieces of <= {piece_tokens} padded tokens)" if piece_tokens else "")
        + f", device={device}, processes={world}, "
        f"precision={modeling.precision_name(amp_dtype)}"
        + (" (loss scaling)" if scaler.is_enabled() else "")
        + f", attn={attn}"
    )
    ds = tok.dataset.select_columns(["input_ids", "labels"])
    it = batching.iterate_batches(
        mode,
        lengths,
        cfg.batch_size,
        seed=cfg.seed,
        start_epoch=epoch,
        start_batch=batch_idx,
        rank=rank,
        world_size=world,
    )
    mask_dtype = amp_dtype or torch.float32

    def state_dict() -> dict[str, Any]:
        return {
            "step": step,
            "epoch": epoch,
            "batch": batch_idx,
            "history": hist,
            "counts": counts,
            "train_time_s": train_time,
            "config": dataclasses.asdict(cfg),
            "world_size": world,
        }

    def save(final: bool = False) -> str | None:
        uri = None
        accelerator.wait_for_everyone()
        # Every rank's RNG goes into the checkpoint, so each resumes its own stream.
        rng_states = None
        if world > 1:
            from accelerate.utils import gather_object

            rng_states = dict(gather_object([(rank, checkpoint.capture_rng())]))
        if accelerator.is_main_process:
            uri = checkpoint.save_checkpoint(
                checkpoint_dir,
                step,
                model=accelerator.unwrap_model(loss_model).model,
                optimizer=optimizer,
                scheduler=scheduler,
                state=state_dict(),
                keep=cfg.keep_checkpoints,
                log=log,
                scaler=scaler,
                rng_states=rng_states,
            )
        accelerator.wait_for_everyone()
        return uri

    loss_model.train()
    win = {"t": 0.0, "tokens": 0, "supervised": 0}
    run_of_skips = 0
    with checkpoint.SigtermFlag() as sigterm:
        while step < total:
            t0 = time.perf_counter()
            micro = []
            for _ in range(cfg.grad_accum):
                epoch, b, idx = next(it)
                for piece in batching.split_by_tokens(idx, lengths, piece_tokens):
                    rows = ds[piece]
                    examples = [
                        {"input_ids": i, "labels": lab}
                        for i, lab in zip(rows["input_ids"], rows["labels"], strict=True)
                    ]
                    micro.append(
                        batching.collate(
                            examples,
                            mode,
                            pad_id=tokenizer.pad_token_id,
                            max_seq_len=cfg.max_seq_len,
                            attn_implementation=attn,
                            mask_dtype=mask_dtype,
                        )
                    )
                batch_idx = b + 1
            step_loss, n_sup = accumulate_gradients(
                loss_model, micro, accelerator, amp_dtype=amp_dtype, scaler=scaler
            )
            denom = max(1.0, float(n_sup))
            scaler.unscale_(optimizer)  # clipping sees the true gradient (no-op unless fp16)
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            scale = scaler.get_scale()
            scaler.step(optimizer)  # skipped when a gradient overflowed (fp16)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            # The scale only drops when the step found inf/NaN gradients and was skipped.
            skipped = scaler.is_enabled() and scaler.get_scale() < scale
            dt = time.perf_counter() - t0
            train_time += dt
            local = [
                sum(getattr(m, k) for m in micro) for k in ("n_tokens", "n_slots", "n_examples")
            ]
            if world > 1:
                # Shards differ by a row (and lower ranks get the longer rows): sum, not x N.
                t = accelerator.reduce(
                    torch.tensor(local, dtype=torch.float64, device=device), "sum"
                )
                local = [int(x) for x in t.tolist()]
            toks, slots, n_examples = local
            counts["tokens"] += toks
            counts["slots"] += slots
            counts["supervised"] += int(n_sup)
            counts["examples"] += n_examples
            win["t"] += dt
            win["tokens"] += toks
            win["supervised"] += int(n_sup)
            if skipped:
                # Not an update: the schedule and max_steps count applied updates only; the
                # step's batches are consumed (not retried).
                counts["skipped_steps"] += 1
                run_of_skips += 1
                log(
                    f"fp16 overflow: optimizer step {step + 1} skipped, loss scale now "
                    f"{scaler.get_scale():g}"
                )
                if run_of_skips >= MAX_CONSECUTIVE_SKIPS:
                    raise RuntimeError(
                        f"fp16 loss scale collapsed: {run_of_skips} optimizer steps in a row had "
                        "overflowing gradients; lower learning_rate, or use precision bf16 "
                        "(L4, A100, H100) or fp32"
                    )
            else:
                run_of_skips = 0
                scheduler.step()
                step += 1
                hist["loss"].append(float(step_loss) / denom)
                hist["lr"].append(scheduler.get_last_lr()[0])
                if progress:
                    progress(step, total)
            if not skipped and (step % cfg.log_every == 0 or step == total):
                recent = hist["loss"][-cfg.log_every :]
                log(
                    f"step {step}/{total} loss {sum(recent) / len(recent):.4f} "
                    f"lr {hist['lr'][-1]:.2e} tok/s {win['tokens'] / max(win['t'], 1e-9):.0f} "
                    f"sup tok/s {win['supervised'] / max(win['t'], 1e-9):.0f}"
                )
                win = {"t": 0.0, "tokens": 0, "supervised": 0}
            stop = sigterm.requested
            if world > 1:
                flag = accelerator.reduce(torch.tensor(float(stop), device=device), "sum")
                stop = bool(flag.item() > 0)
            if stop:
                uri = save() if checkpoint_dir else None
                log(f"SIGTERM: stopping at step {step}")
                raise checkpoint.Preempted(step, uri)
            if checkpoint_dir and not skipped and (step % cfg.save_every == 0 or step == total):
                save()

    accelerator.wait_for_everyone()
    peft_model = accelerator.unwrap_model(loss_model).model
    metrics: dict[str, Any] = {
        "steps": step,
        "total_steps": total,
        "epochs": round(counts["examples"] / max(1, len(lengths)), 4),
        "batching": mode,
        "device": device,
        "processes": world,
        "precision": modeling.precision_name(amp_dtype),
        "skipped_steps": counts["skipped_steps"],
        "loss_scale": scaler.get_scale() if scaler.is_enabled() else None,
        "attn_implementation": attn,
        "train_rows": tok.n_kept,
        "dropped_rows": tok.dropped_by_code,
        "truncated_rows": tok.n_truncated,
        "trainable_params": n_trainable,
        "loss_per_step": hist["loss"],
        "lr_per_step": hist["lr"],
        "final_loss": _tail_mean(hist["loss"], cfg.log_every),
        "tokens": counts["tokens"],
        "supervised_tokens": counts["supervised"],
        "padding_fraction": round(1 - counts["tokens"] / counts["slots"], 5)
        if counts["slots"]
        else 0.0,
        "train_time_s": round(train_time, 3),
        "steps_per_s": round(len(hist["loss"]) / train_time, 4) if train_time else 0.0,
        "tokens_per_s": round(counts["tokens"] / train_time, 1) if train_time else 0.0,
        "supervised_tokens_per_s": round(counts["supervised"] / train_time, 1)
        if train_time
        else 0.0,
        "resumed_from": resumed_from,
        "eval_loss": None,
    }
    if accelerator.is_main_process:
        peft_model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        effective = {
            **dataclasses.asdict(cfg),
            "resolved": {
                "batching": mode,
                "device": device,
                "precision": metrics["precision"],
                "attn_implementation": attn,
                "total_steps": total,
                "warmup_steps": warmup,
                "processes": world,
            },
            "data": data,
            "eval_data": eval_data,
        }
        Path(out, TRAIN_CONFIG).write_text(json.dumps(effective, indent=2))
        if eval_path:
            rows = _read_rows(eval_path)
            from trainer.evaluate import eval_loss

            metrics["eval_loss"] = eval_loss(
                peft_model,
                tokenizer,
                rows,
                batch_size=cfg.batch_size,
                max_seq_len=cfg.max_seq_len,
                system_prompt=cfg.system_prompt,
            )
            log(f"eval loss {metrics['eval_loss']:.4f} on {len(rows)} rows")
        if hist["loss"]:
            _plot(hist["loss"], str(Path(out, LOSS_CURVE)), f"LoRA on {cfg.model}")
        if cfg.merge:
            merged = str(Path(out, "merged"))
            shutil.rmtree(merged, ignore_errors=True)
            modeling.merge_and_save(
                cfg.model, out, merged, tokenizer=tokenizer, quantization=cfg.quantization, log=log
            )
            log(f"merged model written to {merged}")
        log(
            f"done: {step} steps, final loss {metrics['final_loss']:.4f}, "
            f"{metrics['supervised_tokens_per_s']:.0f} supervised tok/s, "
            f"padding {metrics['padding_fraction']:.1%}"
        )
    accelerator.wait_for_everyone()
    return metrics


def _tail_mean(xs: list[float], n: int) -> float | None:
    tail = xs[-n:]
    return sum(tail) / len(tail) if tail else None


_RESUME_FIELDS = (
    "model", "seed", "batch_size", "grad_accum", "batching", "max_steps", "epochs",
    "learning_rate", "lr_schedule", "warmup_ratio", "max_seq_len", "lora_r", "lora_alpha",
    "target_modules", "system_prompt",
)  # fmt: skip


def _warn_config_drift(saved: dict[str, Any], cfg: TrainConfig, log: Callable[[str], None]) -> None:
    now = dataclasses.asdict(cfg)
    changed = [f for f in _RESUME_FIELDS if f in saved and saved[f] != now.get(f)]
    if changed:
        log(
            "warning: resuming with changed settings "
            + ", ".join(f"{f}: {saved[f]!r} -> {now[f]!r}" for f in changed)
        )
