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
) -> NamedTuple("Outputs", data_dir=str, model_uri=str, model_revision=str):
    """Stage data into <run>/data/ and copy the base model once to <output_root>/models/.

    Fails with the validation reason when the data did not pass. A gated hub model reads its
    token from the environment, never from a pipeline parameter: HF_TOKEN (a Kubernetes Secret
    on GKE) or HF_TOKEN_SECRET (a Secret Manager version read as the run's service account),
    both set at compile time by `llmft compile --hf-token-secret`.

    Args:
        run_dir: The run folder (from init-run).
        output_root: Root holding the shared models/ snapshots.
        model: Base model: llmft-tiny, a gs:// directory or a Hugging Face id.
        splits: validate-data's output directory.

    Returns:
        data_dir (the staged splits), model_uri (the snapshot) and model_revision.
    """
    from trainer.steps import upload_step

    out = upload_step(run_dir, splits.path, model, output_root)
    return (out["data_dir"], out["model_uri"], out["model_revision"])
