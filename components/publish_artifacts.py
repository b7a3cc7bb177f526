"""publish-artifacts: write final_model/, metrics, reports and config into the run folder."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def publish_artifacts(
    run_dir: str,
    model_uri: str,
    model_revision: str,
    adapter: Input[Model],
    scores: Input[Artifact],
    splits: Input[Dataset],
):
    """Publish final_model/, metrics.json, eval_report.md, data_report.md and config.json.

    Idempotent: a retry overwrites the same objects.

    Args:
        run_dir: The run folder (from init-run).
        model_uri: Base model snapshot (from upload), recorded in config.json.
        model_revision: Snapshot revision (hub commit or content hash).
        adapter: The trained adapter (from train-lora).
        scores: metrics.json and eval_report.md (from evaluate).
        splits: Validation output with report.md (from validate-data).
    """
    from trainer.steps import publish_step

    publish_step(run_dir, adapter.path, scores.path, splits.path, model_uri, model_revision)
