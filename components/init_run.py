"""init-run: the first task: run folder, parameter checks, dataset fingerprint."""

from typing import NamedTuple

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def init_run(
    output_root: str,
    dataset_uri: str,
    job_name: str,
    job_id: str,
    image: str,
    skip_if_unchanged: bool,
    eval_fraction: float,
    on_error: str,
    max_error_fraction: float,
    max_line_bytes: int,
    unknown_fields: str,
    duplicates: str,
    schema_only: bool,
    model: str,
    max_seq_len: int,
    long_rows: str,
    system_prompt: str,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    target_modules: str,
    max_steps: int,
    epochs: float,
    learning_rate: float,
    warmup_ratio: float,
    lr_schedule: str,
    max_grad_norm: float,
    weight_decay: float,
    batch_size: int,
    grad_accum: int,
    batching: str,
    precision: str,
    attn_implementation: str,
    gradient_checkpointing: bool,
    save_every: int,
    keep_checkpoints: int,
    seed: int,
    merge: bool,
    log_every: int,
    max_new_tokens: int,
    eval_batch_size: int,
    max_eval_samples: int,
    gate_metric: str,
    gate_min_improvement: float,
) -> NamedTuple(
    "Outputs",
    run_dir=str,
    dataset_sha256=str,
    skipped=bool,
    validate_config=str,
    train_config=str,
    eval_config=str,
):
    """Claim the run folder, check every parameter, write config.json, hash the dataset.

    Runs uncached on every run: the dataset sha256 it outputs is an input of validate-data,
    so KFP's cache never reuses a validation of different content at the same URI. Outputs
    skipped=True when skip_if_unchanged is on and the data equals the last successful run's.

    Args:
        output_root: Local directory or gs://bucket[/prefix] receiving experiments/ and models/.
        dataset_uri: Alpaca JSONL dataset (gs:// or a path inside the image).
        job_name: KFP job name (placeholder), part of the run key.
        job_id: KFP job id (placeholder), part of the run key.
        image: Image of the GPU steps, recorded in config.json.
        skip_if_unchanged: When the dataset sha256 equals the last successful run's, output
            skipped=True (the rest of the DAG is not run; status SKIPPED).
        eval_fraction: Fraction of rows assigned to eval by a stable content hash.
        on_error: fail: any rejected row makes the data invalid; skip: rejected rows go to
            rejects.jsonl.
        max_error_fraction: With on_error=skip, the data is still invalid above this
            rejected fraction.
        max_line_bytes: Lines longer than this many bytes are refused unread.
        unknown_fields: Keys other than instruction/input/output: warn or error.
        duplicates: Exact duplicates after whitespace normalisation: error, warn or allow.
        schema_only: Skip the token-level checks (no tokenizer is loaded).
        model: Base model: built-in tiny name (llmft-tiny), gs:// dir or Hugging Face id.
        max_seq_len: Maximum tokens per example (longer rows follow long_rows).
        long_rows: Policy for too-long rows: drop (reported), truncate (only the response
            tail is cut), fail.
        system_prompt: Optional system prompt rendered before every row (train and eval).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (scaling = alpha / r).
        lora_dropout: Dropout on the LoRA branch.
        target_modules: Comma-separated module names, or all-linear for every linear
            projection.
        max_steps: Optimizer steps; 0 means use epochs instead.
        epochs: Epochs, used only when max_steps is 0.
        learning_rate: Peak AdamW learning rate.
        warmup_ratio: Linear warm-up share of steps.
        lr_schedule: Decay after warm-up: linear (to 0), cosine (to 0) or constant.
        max_grad_norm: Clip the gradient norm to this value (0 disables clipping).
        weight_decay: AdamW weight decay.
        batch_size: Examples per device per micro-batch.
        grad_accum: Micro-batches per optimizer step.
        batching: pack (block-diagonal masks), group (length-grouped padding) or auto (group
            on CPU).
        precision: auto, bf16, fp16 or fp32 (auto: bf16/fp16/fp32 by device).
        attn_implementation: Attention backend: auto (flash_attention_2 on CUDA when
            installed, else sdpa), sdpa, eager or flash_attention_2.
        gradient_checkpointing: Recompute activations to save memory.
        save_every: Checkpoint every this many steps.
        keep_checkpoints: Checkpoints kept after pruning.
        seed: Random seed (data order, init, dropout).
        merge: Also write the adapter merged into the base weights.
        log_every: Log the loss every this many steps.
        max_new_tokens: Greedy decoding budget per row.
        eval_batch_size: Rows per generation batch.
        max_eval_samples: Rows used for generation metrics (0 = all).
        gate_metric: Metric the gate compares: eval_loss, perplexity, exact_match, rouge_l,
            bleu.
        gate_min_improvement: Tuned must beat base by at least this much on gate_metric
            (lower-is-better metrics count a decrease as improvement); negative disables the
            gate.
    """
    from trainer.steps import init_step

    params = dict(
        eval_fraction=eval_fraction,
        on_error=on_error,
        max_error_fraction=max_error_fraction,
        max_line_bytes=max_line_bytes,
        unknown_fields=unknown_fields,
        duplicates=duplicates,
        schema_only=schema_only,
        model=model,
        max_seq_len=max_seq_len,
        long_rows=long_rows,
        system_prompt=system_prompt,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        max_steps=max_steps,
        epochs=epochs,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        lr_schedule=lr_schedule,
        max_grad_norm=max_grad_norm,
        weight_decay=weight_decay,
        batch_size=batch_size,
        grad_accum=grad_accum,
        batching=batching,
        precision=precision,
        attn_implementation=attn_implementation,
        gradient_checkpointing=gradient_checkpointing,
        save_every=save_every,
        keep_checkpoints=keep_checkpoints,
        seed=seed,
        merge=merge,
        log_every=log_every,
        max_new_tokens=max_new_tokens,
        eval_batch_size=eval_batch_size,
        max_eval_samples=max_eval_samples,
        gate_metric=gate_metric,
        gate_min_improvement=gate_min_improvement,
    )
    out = init_step(
        output_root,
        dataset_uri,
        params,
        job_name=job_name,
        job_id=job_id,
        image=image,
        skip_if_unchanged=skip_if_unchanged,
    )
    return (
        out["run_dir"],
        out["dataset_sha256"],
        out["skipped"],
        out["validate_config"],
        out["train_config"],
        out["eval_config"],
    )
