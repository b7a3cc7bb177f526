"""validate-data: check and split the dataset (cached, keyed on the dataset's sha256)."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_data(
    dataset_uri: str,
    dataset_sha256: str,
    validate_config: str,
    splits: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> bool:
    """Validate the Alpaca JSONL dataset and split it into train and eval.

    Invalid rows do not fail this task (so its cached result stays valid); the verdict is the
    returned flag and upload refuses invalid data inside the run folder.

    Args:
        dataset_uri: Alpaca JSONL dataset (gs:// or a path inside the image).
        dataset_sha256: Content hash from init-run; part of the cache key, checked again here.
        validate_config: ValidateConfig fields as JSON (built by init-run from the parameters).
        splits: Output directory: train.jsonl, eval.jsonl, rejects.jsonl, summary.json, report.md.
        report: The data report (Markdown, shown in the KFP UI).
        metrics: Row counts (accepted, rejected, train, eval).

    Returns:
        Whether the data passed validation.
    """
    import shutil

    from trainer.steps import validate_step

    summary = validate_step(dataset_uri, dataset_sha256, validate_config, splits.path)
    shutil.copyfile(f"{splits.path}/report.md", report.path)
    for key in ("lines_read", "accepted", "rejected", "n_train", "n_eval"):
        if isinstance(summary.get(key), (int, float)):
            metrics.log_metric(key, summary[key])
    splits.metadata["sha256"] = dataset_sha256
    return bool(summary["ok"])
