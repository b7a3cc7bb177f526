"""``llmft submit``, ``llmft schedule ...``, ``llmft status`` and ``llmft gcp-setup``.

Defaults come from the environment and ``.env`` (see ``.env.example``); a missing project,
bucket or host is a one-line usage error (exit 2). aiplatform and kfp are imported inside
the commands only.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from pipelines.cli_common import EXIT_INVALID, EXIT_OK, console, err_console, friendly_errors
from pipelines.cli_options import (
    AcceleratorCount,
    GpuStepCpu,
    GpuStepMemory,
    ImageRepo,
    MachineType,
)

Backend = Annotated[
    str, typer.Option("--backend", "-b", help="vertex (Vertex AI) or kfp (Kubeflow).")
]
Project = Annotated[str | None, typer.Option("--project", help="GCP project [env PROJECT_ID].")]
Region = Annotated[str | None, typer.Option("--region", help="Vertex AI region [env REGION].")]
Bucket = Annotated[
    str | None,
    typer.Option("--bucket", help="GCS bucket for data, pipeline root, runs [env BUCKET_NAME]."),
]
Host = Annotated[
    str | None,
    typer.Option("--host", help="KFP API URL, e.g. http://localhost:8080 [env KFP_HOST]."),
]
Namespace = Annotated[
    str | None, typer.Option("--namespace", help="KFP profile namespace [env KFP_NAMESPACE].")
]
ApiEndpoint = Annotated[
    str | None,
    typer.Option(
        "--api-endpoint", help="Vertex API endpoint (regional/private) [env VERTEX_API_ENDPOINT]."
    ),
]
EnvFile = Annotated[str, typer.Option("--env-file", help="File of KEY=VALUE defaults.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")]
HfTokenSecret = Annotated[
    str | None,
    typer.Option(
        "--hf-token-secret",
        help="Compile in the hub token's secret (see `llmft compile --help`); not with --package.",
    ),
]


def _settings(env_file: str, **over: Any) -> Any:
    from pipelines.settings import load_settings

    return load_settings(env_file, **over)


def _opts(
    backend: str,
    data: str | None,
    model: str | None,
    accelerator: str | None,
    param: list[str] | None,
    package: str | None,
    service_account: str | None,
    label: list[str] | None,
    cache: bool | None,
    run_name: str | None,
    output_root: str | None,
    experiment: str | None = None,
    hf_token_secret: str | None = None,
    placement: dict[str, Any] | None = None,
) -> Any:
    from pipelines.submit import SubmitOptions, check_backend, parse_key_values

    return SubmitOptions(
        backend=check_backend(backend),
        data=data,
        model=model,
        accelerator=accelerator,
        params=parse_key_values(param or []),
        package=package,
        service_account=service_account,
        labels=parse_key_values(label or [], "--label"),
        enable_caching=cache,
        experiment=experiment,
        run_name=run_name,
        output_root=output_root,
        hf_token_secret=hf_token_secret,
        **(placement or {}),
    )


def _placement(
    count: int, machine_type: str | None, cpu: str | None, memory: str | None
) -> dict[str, Any]:
    return {
        "accelerator_count": count,
        "machine_type": machine_type,
        "gpu_step_cpu": cpu,
        "gpu_step_memory": memory,
    }


def submit(
    backend: Backend = "vertex",
    project: Project = None,
    region: Region = None,
    bucket: Bucket = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Local JSONL/JSON (staged) or gs:// [env LOCAL_DATA_PATH]."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Base model [env MODEL_NAME].")
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option("--accelerator", help="L4, T4 or none [env ACCELERATOR].")
    ] = None,
    accelerator_count: AcceleratorCount = 1,
    machine_type: MachineType = None,
    gpu_step_cpu: GpuStepCpu = None,
    gpu_step_memory: GpuStepMemory = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Pipeline parameter key=value (repeatable)."),
    ] = None,
    package: Annotated[
        str | None,
        typer.Option("--package", help="Submit this compiled YAML instead of compiling."),
    ] = None,
    service_account: Annotated[
        str | None,
        typer.Option(
            "--service-account",
            help="Vertex: GCP SA e-mail; KFP: Kubernetes SA [env SERVICE_ACCOUNT].",
        ),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Vertex label key=value (repeatable).")
    ] = None,
    cache: Annotated[
        bool | None,
        typer.Option("--cache/--no-cache", help="Override the compiled caching settings."),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option("--experiment", help="Vertex AI Experiment [env VERTEX_EXPERIMENT]."),
    ] = None,
    api_endpoint: ApiEndpoint = None,
    host: Host = None,
    namespace: Namespace = None,
    kfp_experiment: Annotated[
        str | None,
        typer.Option("--kfp-experiment", help="KFP experiment name [env KFP_EXPERIMENT]."),
    ] = None,
    run_name: Annotated[
        str | None, typer.Option("--run-name", help="Display name of the run.")
    ] = None,
    output_root: Annotated[
        str | None,
        typer.Option("--output-root", help="Where run folders go (default gs://BUCKET)."),
    ] = None,
    image_repo: ImageRepo = None,
    image_tag: Annotated[
        str | None, typer.Option("--image-tag", help="llmft image tag to compile in.")
    ] = None,
    hf_token_secret: HfTokenSecret = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the run; exit 0 only if it succeeded.")
    ] = False,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", help="Seconds between polls.")
    ] = 30.0,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up waiting after N seconds.")
    ] = None,
    env_file: EnvFile = ".env",
    debug: Debug = False,
) -> None:
    """Compile, stage the dataset to GCS and start a run on Vertex AI or Kubeflow."""
    with friendly_errors(debug):
        from pipelines import submit as sub

        cfg = _settings(
            env_file,
            project_id=project,
            region=region,
            bucket_name=bucket,
            vertex_api_endpoint=api_endpoint,
            kfp_host=host,
            kfp_namespace=namespace,
            kfp_experiment=kfp_experiment,
            image_repo=image_repo,
            image_tag=image_tag,
        )
        placement = _placement(accelerator_count, machine_type, gpu_step_cpu, gpu_step_memory)
        opts = _opts(
            backend, data, model, accelerator, param, package, service_account, label, cache,
            run_name, output_root, experiment, hf_token_secret, placement,
        )  # fmt: skip
        run = sub.submit_pipeline(cfg, opts)
        if run.staged is not None and run.staged.sha256:
            how = "uploaded" if run.staged.uploaded else "already staged, not uploaded"
            console.print(f"dataset: {run.staged.uri} ({how})")
        console.print(f"run id: {run.run_id}")
        console.print(f"link: {run.url}", soft_wrap=True)
        if not wait:
            return
        final = sub.wait_for(
            lambda: sub.run_status(cfg, run.run_id, opts.backend),
            poll_interval=poll_interval,
            timeout=timeout,
            on_change=lambda s: console.print(f"state: {s.state}"),
        )
        if not final.succeeded:
            err = final.details.get("error", "")
            err_console.print(
                f"run {final.run_id} ended {final.state}" + (f": {err}" if err else "")
            )
            raise SystemExit(EXIT_INVALID)


schedule_app = typer.Typer(
    help="Recurring runs: Vertex AI schedules and KFP recurring runs.", no_args_is_help=True
)


def _target(backend: str, cfg: Any) -> Any:
    from pipelines import submit as sub

    return sub.vertex_target(cfg) if sub.check_backend(backend) == "vertex" else sub.kfp_target(cfg)


@schedule_app.command("create")
def schedule_create(
    cron: Annotated[str, typer.Option("--cron", help="Standard 5-field cron, e.g. '0 3 * * 1-5'.")],
    backend: Backend = "vertex",
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA zone (Vertex); KFP schedules run in UTC.")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Schedule display name.")] = "llmft-scheduled",
    max_concurrency: Annotated[
        int, typer.Option("--max-concurrency", help="Runs allowed at once.")
    ] = 1,
    skip_if_unchanged: Annotated[
        bool,
        typer.Option(
            "--skip-if-unchanged",
            help="End runs early (SKIPPED) when the dataset sha256 is unchanged.",
        ),
    ] = False,
    project: Project = None,
    region: Region = None,
    bucket: Bucket = None,
    data: Annotated[
        str | None, typer.Option("--data", help="gs:// object refreshed upstream, or a local file.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Base model [env MODEL_NAME].")
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option("--accelerator", help="L4, T4 or none.")
    ] = None,
    accelerator_count: AcceleratorCount = 1,
    machine_type: MachineType = None,
    gpu_step_cpu: GpuStepCpu = None,
    gpu_step_memory: GpuStepMemory = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Pipeline parameter key=value.")
    ] = None,
    package: Annotated[
        str | None, typer.Option("--package", help="Use this compiled YAML.")
    ] = None,
    service_account: Annotated[
        str | None, typer.Option("--service-account", help="Run-as account.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Vertex label key=value.")
    ] = None,
    cache: Annotated[
        bool | None, typer.Option("--cache/--no-cache", help="Override caching.")
    ] = None,
    api_endpoint: ApiEndpoint = None,
    host: Host = None,
    namespace: Namespace = None,
    image_repo: ImageRepo = None,
    image_tag: Annotated[str | None, typer.Option("--image-tag", help="llmft image tag.")] = None,
    hf_token_secret: HfTokenSecret = None,
    env_file: EnvFile = ".env",
    debug: Debug = False,
) -> None:
    """Create a schedule that runs the pipeline on a cron."""
    with friendly_errors(debug):
        from pipelines.schedule import schedule_pipeline

        cfg = _settings(
            env_file, project_id=project, region=region, bucket_name=bucket,
            vertex_api_endpoint=api_endpoint, kfp_host=host, kfp_namespace=namespace,
            image_repo=image_repo, image_tag=image_tag,
        )  # fmt: skip
        placement = _placement(accelerator_count, machine_type, gpu_step_cpu, gpu_step_memory)
        opts = _opts(
            backend, data, model, accelerator, param, package, service_account, label, cache,
            None, None, None, hf_token_secret, placement,
        )  # fmt: skip
        info = schedule_pipeline(
            cfg,
            opts,
            cron=cron,
            timezone=timezone,
            name=name,
            max_concurrency=max_concurrency,
            skip_if_unchanged=skip_if_unchanged,
        )
        console.print(f"schedule id: {info.schedule_id}")
        console.print(
            f"cron ({info.backend}): {info.cron}  state: {info.state}  max concurrency: {info.max_concurrency}"
        )


@schedule_app.command("list")
def schedule_list(
    backend: Backend = "vertex",
    project: Project = None,
    region: Region = None,
    api_endpoint: ApiEndpoint = None,
    host: Host = None,
    namespace: Namespace = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    env_file: EnvFile = ".env",
    debug: Debug = False,
) -> None:
    """List schedules (Vertex: the region's; KFP: the llmft experiment's)."""
    with friendly_errors(debug):
        from dataclasses import asdict

        from pipelines.schedule import list_schedules

        cfg = _settings(
            env_file, project_id=project, region=region, vertex_api_endpoint=api_endpoint,
            kfp_host=host, kfp_namespace=namespace,
        )  # fmt: skip
        items = list_schedules(backend, _target(backend, cfg))
        if as_json:
            console.print_json(json.dumps([asdict(i) for i in items]))
            return
        if not items:
            console.print("no schedules")
        for i in items:
            console.print(f"{i.schedule_id}  {i.state:<9} {i.cron!r:<28} {i.display_name}")


def _schedule_action(action: str) -> Any:
    def command(
        schedule_id: Annotated[str, typer.Argument(help="Schedule ID (as `schedule list` shows).")],
        backend: Backend = "vertex",
        project: Project = None,
        region: Region = None,
        api_endpoint: ApiEndpoint = None,
        host: Host = None,
        namespace: Namespace = None,
        env_file: EnvFile = ".env",
        debug: Debug = False,
    ) -> None:
        with friendly_errors(debug):
            from pipelines.schedule import set_schedule_state

            cfg = _settings(
                env_file, project_id=project, region=region, vertex_api_endpoint=api_endpoint,
                kfp_host=host, kfp_namespace=namespace,
            )  # fmt: skip
            set_schedule_state(backend, _target(backend, cfg), schedule_id, action)
            console.print(
                f"{action}d schedule {schedule_id}"
                if action != "pause"
                else f"paused schedule {schedule_id}"
            )

    command.__doc__ = f"{action.capitalize()} a schedule."
    return command


for _action in ("pause", "resume", "delete"):
    schedule_app.command(_action)(_schedule_action(_action))


def status(
    run: Annotated[
        str, typer.Argument(help="Run ID / Vertex resource name, or a run folder (path or gs://).")
    ],
    backend: Annotated[
        str | None,
        typer.Option("--backend", "-b", help="vertex or kfp for run IDs; omit for a run folder."),
    ] = None,
    project: Project = None,
    region: Region = None,
    api_endpoint: ApiEndpoint = None,
    host: Host = None,
    namespace: Namespace = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    env_file: EnvFile = ".env",
    debug: Debug = False,
) -> None:
    """Show a run's state; exit 0 when it succeeded or is still running, 1 when it failed."""
    with friendly_errors(debug):
        from dataclasses import asdict

        from pipelines.submit import run_status

        cfg = _settings(
            env_file, project_id=project, region=region, vertex_api_endpoint=api_endpoint,
            kfp_host=host, kfp_namespace=namespace,
        )  # fmt: skip
        st = run_status(cfg, run, backend)
        if as_json:
            console.print_json(json.dumps(asdict(st), default=str))
        else:
            console.print(f"{st.backend} run {st.run_id}: {st.state}", soft_wrap=True)
            if st.url:
                console.print(f"link: {st.url}", soft_wrap=True)
            if "error" in st.details:
                console.print(f"error: {st.details['error']}", soft_wrap=True)
            if "liveness" in st.details:
                console.print(f"driver: {st.details['liveness']}", soft_wrap=True)
            metrics = st.details.get("metrics")
            if isinstance(metrics, dict):
                for side in ("base", "tuned"):
                    if isinstance(metrics.get(side), dict):
                        shown = ", ".join(
                            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in metrics[side].items()
                        )
                        console.print(f"{side}: {shown}", soft_wrap=True)
        if st.done and not st.succeeded:
            raise SystemExit(EXIT_INVALID)
        raise SystemExit(EXIT_OK)


def gcp_setup(
    project: Project = None,
    region: Region = None,
    bucket: Bucket = None,
    service_account: Annotated[
        str, typer.Option("--service-account-name", help="Name of the dedicated service account.")
    ] = "llmft-pipelines",
    repository: Annotated[
        str, typer.Option("--repository", help="Artifact Registry Docker repository.")
    ] = "llmft",
    gke_cluster: Annotated[
        str | None,
        typer.Option("--gke-cluster", help="GKE cluster running KFP (adds Workload Identity)."),
    ] = None,
    k8s_namespace: Annotated[
        str | None, typer.Option("--k8s-namespace", help="Namespace of the runs.")
    ] = None,
    k8s_service_account: Annotated[
        str | None, typer.Option("--k8s-service-account", help="Kubernetes SA of the run pods.")
    ] = None,
    submitter: Annotated[
        str | None,
        typer.Option(
            "--submitter", help="IAM member allowed to act as the SA, e.g. user:me@x.com."
        ),
    ] = None,
    hf_token_secret: Annotated[
        str | None,
        typer.Option(
            "--hf-token-secret",
            help="Secret Manager secret for a gated model's hub token: created (empty) and "
            "readable by the service account only. Add the value yourself (printed hint).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print every command, run nothing.")
    ] = False,
    env_file: EnvFile = ".env",
    debug: Debug = False,
) -> None:
    """Set up a GCP project: APIs, bucket, image repository, least-privilege service account."""
    with friendly_errors(debug):
        from pipelines import gcp_setup as g

        cfg = _settings(env_file, project_id=project, region=region, bucket_name=bucket)
        cfg.require("project_id", "bucket_name")
        steps = g.plan(
            cfg.project_id,
            cfg.region,
            cfg.bucket_name,
            service_account=service_account,
            repository=repository,
            gke_cluster=gke_cluster,
            k8s_namespace=k8s_namespace,
            k8s_service_account=k8s_service_account,
            submitter=submitter,
            hf_token_secret=hf_token_secret,
        )
        code = g.run(
            steps, dry_run=dry_run, echo=lambda s: console.print(s, soft_wrap=True, markup=False)
        )
        if code != 0:
            raise SystemExit(EXIT_INVALID)
        sa = g.service_account_email(cfg.project_id, service_account)
        console.print("# then set in .env:", markup=False)
        console.print(f"SERVICE_ACCOUNT={sa}  # Vertex runs execute as this account", markup=False)
        if gke_cluster:
            ksa = k8s_service_account or "pipeline-runner"
            console.print(
                f"# for --backend kfp pass --service-account {ksa} (the Kubernetes SA)",
                markup=False,
            )
        console.print(
            f"LLMFT_IMAGE_REPO={cfg.region}-docker.pkg.dev/{cfg.project_id}/{repository}",
            markup=False,
        )
        if hf_token_secret:
            for line in g.secret_hints(cfg.project_id, hf_token_secret):
                console.print(line, soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    """Add the cloud commands to the ``llmft`` app."""
    app.command("submit")(submit)
    app.add_typer(schedule_app, name="schedule")
    app.command("status")(status)
    app.command("gcp-setup")(gcp_setup)
