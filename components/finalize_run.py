"""finalize-run: the exit task; always leaves a truthful status.txt."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def finalize_run(
    output_root: str,
    job_name: str,
    job_id: str,
    image: str,
    status: PipelineTaskFinalStatus,
) -> str:
    """Write error.log (on failure), process.log, manifest.json and, last, status.txt.

    Args:
        output_root: Local directory or gs://bucket[/prefix] of the run.
        job_name: KFP job name (placeholder), used to find the run folder.
        job_id: KFP job id (placeholder), used to find the run folder.
        image: Image of the GPU steps, recorded in manifest.json.
        status: Final state of the exit handler's tasks, filled in by the backend: Vertex sends
            SUCCEEDED, FAILED or CANCELLED with an error message; KFP sends COMPLETE or
            CACHED on success, FAILED or CANCELED, with an empty error.

    Returns:
        The run folder.
    """
    from trainer.steps import finalize_step

    out = finalize_step(
        output_root,
        job_name,
        job_id,
        # KFP sends the MLMD state of the exit handler's DAG (COMPLETE, CACHED, FAILED, ...)
        # and an empty error; Vertex sends SUCCEEDED/FAILED/CANCELLED with a message.
        status.state or "",
        status.error_message or "",
        status.pipeline_task_name or "",
        image,
    )
    print(f"run folder: {out['run_dir']}\nstatus: {out['status']}")
    return out["run_dir"]
