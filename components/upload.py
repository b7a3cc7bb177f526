"""upload: stage the validated splits into the run folder and snapshot the base model."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def upload(
    run_dir: str,
    output_root: str,
    model: str,
    splits: Input[Dataset],
    train_config: str = "",
    accelerator: str = "none",
    accelerator_count: int = 1,
) -> NamedTuple("Outputs", data_dir=str, model_uri=str, model_revision=str):
    """Stage data into <run>/data/, copy the base model once, and check it fits the GPU.

    The base model is copied once to <output_root>/models/. The memory preflight (llmft plan)
    reads the snapshot's config.json and fails the run here, with the estimate in error.log,
    when training would not fit the compiled accelerator.

    Fails with the validation reason when the data did not pass. A gated hub model reads its
    token from the environment, never from a pipeline parameter: HF_TOKEN (a Kubernetes Secret
    on GKE) or HF_TOKEN_SECRET (a Secret Manager version read as the run's service account),
    both set at compile time by `llmft compile --hf-token-secret`.

    Args:
        run_dir: The run folder (from init-run).
        output_root: Root holding the shared models/ snapshots.
        model: Base model: llmft-tiny or smollm2-135m (built in), a gs:// directory or a
            Hugging Face id.
        splits: validate-data's output directory.
        train_config: TrainConfig fields as JSON, for the memory preflight (empty: none).
        accelerator: GPU of train-lora (compiled in); the run fails here, before any GPU step,
            when the estimated peak memory does not fit it. none: the estimate is only logged.
        accelerator_count: GPUs of train-lora (compiled in).

    Returns:
        data_dir (the staged splits), model_uri (the snapshot) and model_revision.
    """
    from trainer.steps import upload_step

    out = upload_step(
        run_dir,
        splits.path,
        model,
        output_root,
        train_config=train_config,
        accelerator=accelerator,
        accelerator_count=accelerator_count,
    )
    return (out["data_dir"], out["model_uri"], out["model_revision"])
