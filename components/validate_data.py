"""validate-data: check and split the dataset (cached, keyed on the dataset's sha256); fails
on invalid data."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_data(
    dataset_uri: str,
    dataset_sha256: str,
    validate_config: str,
    output_root: str,
    splits: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
):
    """Validate the Alpaca JSONL dataset and split it into train and eval; fail on invalid data.

    The failure message is the validator's reason and the first problems as
    file:line: code: message. A failed task is never cached; a successful one is reused for
    the same content and settings (the dataset sha256 is an input).

    Args:
        dataset_uri: Alpaca JSONL dataset (gs:// or a path inside the image).
        dataset_sha256: Content hash from init-run; part of the cache key, checked again here.
        validate_config: ValidateConfig fields as JSON (built by init-run from the parameters).
        output_root: Root of the run folders; a failed validation parks its report and log
            under experiments/.validate-failed/ so finalize-run can put them in the run folder
            (the run folder itself is not an input: it would defeat the cache).
        splits: Output directory: train.jsonl, eval.jsonl, rejects.jsonl, summary.json, report.md.
        report: The data report (Markdown, shown in the KFP UI, also on failure).
        metrics: Row counts (accepted, rejected, train, eval).
    """
    import os
    import shutil

    from trainer.steps import validate_step

    try:
        summary = validate_step(
            dataset_uri, dataset_sha256, validate_config, splits.path, output_root
        )
    finally:
        if os.path.exists(f"{splits.path}/report.md"):
            shutil.copyfile(f"{splits.path}/report.md", report.path)
    for key in ("lines_read", "accepted", "rejected", "n_train", "n_eval"):
        if isinstance(summary.get(key), (int, float)):
            metrics.log_metric(key, summary[key])
    splits.metadata["sha256"] = dataset_sha256
