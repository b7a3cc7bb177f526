"""evaluate: base vs tuned on the eval split, and the gate (GPU image)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(
    run_dir: str,
    data_dir: str,
    model_uri: str,
    eval_config: str,
    train_config: str,
    adapter: Input[Model],
    scores: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Compare the base model and base + adapter; fail when the gate does not pass.

    Args:
        run_dir: The run folder (from init-run).
        data_dir: Staged splits (from upload).
        model_uri: Base model snapshot (from upload).
        eval_config: EvalConfig fields as JSON (built by init-run from the parameters).
        train_config: TrainConfig fields as JSON (system prompt and max_seq_len).
        adapter: The trained adapter (from train-lora).
        scores: Directory with metrics.json and eval_report.md.
        metrics: base_<metric> and tuned_<metric> values (shown in the KFP UI).
        report: The evaluation report (Markdown).
    """
    import math
    import shutil

    from trainer.steps import evaluate_step

    result = evaluate_step(
        run_dir, data_dir, model_uri, adapter.path, eval_config, train_config, scores.path
    )
    for side, values in sorted(result["metrics"].items()):
        for key, value in sorted(values.items()):
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics.log_metric(f"{side}_{key}", value)
    shutil.copyfile(f"{scores.path}/eval_report.md", report.path)
