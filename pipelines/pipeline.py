"""The DAG: wiring only. Placement (GPUs, node selectors, retries, caching) comes from a hook.

``build_pipeline(place)`` returns the ``@dsl.pipeline`` function; ``place(step, task)`` is called
for every task so ``pipelines.compile`` (and ``pipelines.local``) decide where and how each step
runs without a single target-specific ``if`` here. Parameter names and defaults are those of
``trainer.config`` (a test compares them), plus the run-level ``RUN_PARAMETERS``, so every run
can start from the KFP UI untouched.

Shape: finalize-run is the exit task of ``ExitHandler(init-run -> If(not skipped): validate ->
upload -> train -> evaluate -> publish)``; a run skipped by ``skip_if_unchanged`` runs only
init-run and finalize-run.
"""

import copy
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from trainer.config import SAMPLE_DATASET, EvalConfig, TrainConfig, ValidateConfig, args_doc

PIPELINE_NAME = "llm-lora-finetune"
DEFAULT_OUTPUT_ROOT = "runs"
"""Local default; compile for the cloud with ``output_root=gs://...`` (see pipelines.compile)."""

StepHook = Callable[[str, Any], None]
"""``place(task_name, task)``: applies per-target settings to one task."""

STEPS = (
    "init-run",
    "validate-data",
    "upload",
    "train-lora",
    "evaluate",
    "publish-artifacts",
    "finalize-run",
)
GPU_STEPS = ("train-lora", "evaluate")
RUN_PARAMETER_HELP = {
    "dataset_uri": "Alpaca JSONL dataset: gs:// URI, or a path inside the image (the default "
    "is the bundled 3,000-row sample).",
    "output_root": "Local directory or gs://bucket[/prefix]; runs land in "
    "<output_root>/experiments/finetune_job_<UTC time>_<id>/.",
    "skip_if_unchanged": "End early with status SKIPPED (nothing trained) when the dataset "
    "sha256 equals that of the last SUCCESS run under output_root; for scheduled runs on data "
    "that an upstream job may or may not have refreshed.",
}
"""Descriptions of the run-level parameters (config fields get theirs from trainer.config)."""
RUN_PARAMETERS = tuple(RUN_PARAMETER_HELP)
CONFIG_PARAMETERS = tuple(
    dict.fromkeys(
        f.name for cls in (TrainConfig, ValidateConfig, EvalConfig) for f in dataclasses.fields(cls)
    )
)
"""Pipeline parameters that are fields of the trainer.config dataclasses (init-run takes them)."""
"""Pipeline parameters that are not fields of the trainer.config dataclasses."""
PIPELINE_DESCRIPTION = (
    "LoRA fine-tuning of an open LLM: validate, upload, train, evaluate, publish; the run "
    "folder always ends with status.txt SUCCESS, FAILED or SKIPPED."
)
CONDITION_NAME = "dataset-changed"
"""The dsl.If group around validate -> publish (taken unless init-run says skipped)."""


def _no_placement(step: str, task: Any) -> None:
    return None


def _with_image(component: Any, image: str) -> Any:
    """A copy of a lightweight component that runs in ``image`` (the original is untouched)."""
    clone = copy.deepcopy(component)
    clone.component_spec.implementation.container.image = image
    return clone


def build_pipeline(
    place: StepHook | None = None,
    *,
    cpu_image: str | None = None,
    gpu_image: str | None = None,
    target: str = "local",
    accelerator: str = "none",
    accelerator_count: int = 1,
) -> Any:
    """Build the ``llm-lora-finetune`` pipeline.

    Args:
        place: Called as ``place(task_name, task)`` for every task (default: nothing).
        cpu_image: Image for init, validate, upload, publish and finalize (default: configured).
        gpu_image: Image for train and evaluate (default: configured).
        target: The compile target (vertex, gke, local), handed to init-run as a constant so a
            package run on the wrong backend fails at once with a clear reason.
        accelerator: GPU of train-lora (L4, T4 or none), handed to upload as a constant for
            the memory preflight (``none``: the estimate is logged, never enforced).
        accelerator_count: GPUs of train-lora: its data-parallel processes (one per GPU) and
            the same preflight.

    Returns:
        The KFP pipeline (a ``GraphComponent``): compile it, or call it under ``kfp.local``.
    """
    from kfp import dsl

    from components.evaluate import evaluate
    from components.finalize_run import finalize_run
    from components.images import images
    from components.init_run import init_run
    from components.publish_artifacts import publish_artifacts
    from components.train_lora import train_lora
    from components.upload import upload
    from components.validate_data import validate_data

    configured = images()
    cpu = cpu_image or configured.cpu
    gpu = gpu_image or configured.gpu
    place = place or _no_placement
    init_c, validate_c, upload_c, publish_c, final_c = (
        _with_image(c, cpu)
        for c in (init_run, validate_data, upload, publish_artifacts, finalize_run)
    )
    train_c, evaluate_c = (_with_image(c, gpu) for c in (train_lora, evaluate))

    def llm_lora_finetune(
        dataset_uri: str = SAMPLE_DATASET,
        output_root: str = DEFAULT_OUTPUT_ROOT,
        skip_if_unchanged: bool = False,
        eval_fraction: float = 0.1,
        on_error: str = "fail",
        max_error_fraction: float = 0.05,
        max_line_bytes: int = 1000000,
        unknown_fields: str = "warn",
        duplicates: str = "error",
        schema_only: bool = False,
        model: str = "llmft-tiny",
        max_seq_len: int = 512,
        long_rows: str = "drop",
        system_prompt: str = "",
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.0,
        target_modules: str = "all-linear",
        max_steps: int = 0,
        epochs: float = 1.0,
        learning_rate: float = 0.0002,
        warmup_ratio: float = 0.03,
        lr_schedule: str = "linear",
        max_grad_norm: float = 1.0,
        weight_decay: float = 0.0,
        batch_size: int = 16,
        grad_accum: int = 1,
        micro_batch_tokens: int = 0,
        batching: str = "auto",
        precision: str = "auto",
        attn_implementation: str = "auto",
        gradient_checkpointing: bool = False,
        quantization: str = "none",
        save_every: int = 250,
        keep_checkpoints: int = 2,
        seed: int = 42,
        merge: bool = False,
        log_every: int = 10,
        max_new_tokens: int = 64,
        eval_batch_size: int = 32,
        max_eval_samples: int = 200,
        gate_metric: str = "eval_loss",
        gate_min_improvement: float = 0.0,
    ):
        """Fine-tune a LoRA adapter and publish it into a run folder."""
        # First statement: the parameters (and, in a nested function, the free variables).
        args = dict(locals())
        final = final_c(
            output_root=output_root,
            job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            image=gpu,
        )
        place("finalize-run", final)
        with dsl.ExitHandler(final, name="finetune"):
            init = init_c(
                output_root=output_root,
                dataset_uri=dataset_uri,
                job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                image=gpu,
                target=target,
                skip_if_unchanged=skip_if_unchanged,
                **{k: args[k] for k in CONFIG_PARAMETERS},
            )
            place("init-run", init)
            run_dir = init.outputs["run_dir"]

            # Compare with == False: KFP compiles it to a condition on init's bool output.
            with dsl.If(init.outputs["skipped"] == False, name=CONDITION_NAME):  # noqa: E712
                data = validate_c(
                    dataset_uri=dataset_uri,
                    dataset_sha256=init.outputs["dataset_sha256"],
                    validate_config=init.outputs["validate_config"],
                    output_root=output_root,
                )
                place("validate-data", data)

                staged = upload_c(
                    run_dir=run_dir,
                    output_root=output_root,
                    model=model,
                    splits=data.outputs["splits"],
                    train_config=init.outputs["train_config"],
                    accelerator=accelerator,
                    accelerator_count=accelerator_count,
                )
                place("upload", staged)

                tuned = train_c(
                    run_dir=run_dir,
                    data_dir=staged.outputs["data_dir"],
                    model_uri=staged.outputs["model_uri"],
                    train_config=init.outputs["train_config"],
                    num_processes=accelerator_count,
                )
                place("train-lora", tuned)

                scored = evaluate_c(
                    run_dir=run_dir,
                    data_dir=staged.outputs["data_dir"],
                    model_uri=staged.outputs["model_uri"],
                    eval_config=init.outputs["eval_config"],
                    train_config=init.outputs["train_config"],
                    adapter=tuned.outputs["adapter"],
                )
                place("evaluate", scored)

                published = publish_c(
                    run_dir=run_dir,
                    model_uri=staged.outputs["model_uri"],
                    model_revision=staged.outputs["model_revision"],
                    adapter=tuned.outputs["adapter"],
                    scores=scored.outputs["scores"],
                    splits=data.outputs["splits"],
                )
                place("publish-artifacts", published)

    # The Args section is generated from trainer.config (KFP reads it into the parameter
    # descriptions the UI shows). TrainConfig first: its help for the fields it shares with
    # ValidateConfig (model, max_seq_len, long_rows, system_prompt) describes the parameter.
    llm_lora_finetune.__doc__ = (
        f"{inspect.cleandoc(llm_lora_finetune.__doc__ or '')}\n\n"
        f"{args_doc(TrainConfig, ValidateConfig, EvalConfig, extra=RUN_PARAMETER_HELP)}"
    )
    return dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)(llm_lora_finetune)
