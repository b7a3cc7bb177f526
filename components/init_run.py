"""init-run: the first task: run folder, parameter checks, dataset fingerprint."""

import inspect
from typing import NamedTuple

from kfp import dsl

from components.images import CPU_IMAGE
from trainer.config import EvalConfig, TrainConfig, ValidateConfig, args_doc

INPUT_HELP = {
    "output_root": "Local directory or gs://bucket[/prefix] receiving experiments/ and models/.",
    "dataset_uri": "Alpaca JSONL dataset (gs:// or a path inside the image).",
    "job_name": "KFP job name (placeholder), part of the run key.",
    "job_id": "KFP job id (placeholder), part of the run key.",
    "image": "Image of the GPU steps, recorded in config.json.",
    "target": "The compile target (vertex, gke or local); a vertex package run on Kubeflow "
    "Pipelines fails here.",
    "skip_if_unchanged": "When the dataset sha256 equals the last successful run's, output "
    "skipped=True (the rest of the DAG is not run; status SKIPPED).",
}
"""Descriptions of the inputs that are no config field (those come from trainer.config)."""


def init_run(
    output_root: str,
    dataset_uri: str,
    job_name: str,
    job_id: str,
    image: str,
    target: str,
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
    micro_batch_tokens: int,
    batching: str,
    precision: str,
    attn_implementation: str,
    gradient_checkpointing: bool,
    quantization: str,
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
    """
    args = dict(locals())  # first: exactly the inputs
    run_level = (
        "output_root",
        "dataset_uri",
        "job_name",
        "job_id",
        "image",
        "target",
        "skip_if_unchanged",
    )
    params = {k: v for k, v in args.items() if k not in run_level}

    from trainer.steps import init_step

    out = init_step(
        output_root,
        dataset_uri,
        params,
        job_name=job_name,
        job_id=job_id,
        image=image,
        target=target,
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


# The Args section is generated (KFP reads it into the input descriptions the UI shows),
# TrainConfig first as in pipelines.pipeline. Only the function's source is run in the
# container (inspect.getsource), so this module-level code never runs there.
init_run.__doc__ = (
    f"{inspect.cleandoc(init_run.__doc__ or '')}\n\n"
    f"{args_doc(TrainConfig, ValidateConfig, EvalConfig, extra=INPUT_HELP)}"
)
init_run = dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)(init_run)
