"""train-lora: LoRA fine-tuning on the staged data (GPU image, retried, resumes)."""

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_lora(
    run_dir: str,
    data_dir: str,
    model_uri: str,
    train_config: str,
    adapter: Output[Model],
    metrics: Output[Metrics],
    num_processes: int = 1,
):
    """Train a LoRA adapter; checkpoints go to <run>/checkpoints so a retry resumes.

    Args:
        run_dir: The run folder (from init-run).
        data_dir: Staged splits (from upload).
        model_uri: Base model snapshot (from upload).
        train_config: TrainConfig fields as JSON (built by init-run from the parameters).
        adapter: The trained adapter, tokenizer, train_metrics.json and loss curve.
        metrics: Final training metrics (loss, steps, tokens per second).
        num_processes: Data-parallel processes, one per GPU of the step (compiled in from
            --accelerator-count).
    """
    from trainer.steps import train_step

    result = train_step(run_dir, data_dir, model_uri, train_config, adapter.path, num_processes)
    for key, value in sorted(result.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, value)
    adapter.metadata["base_model"] = model_uri
