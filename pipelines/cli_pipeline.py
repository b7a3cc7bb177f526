"""``llmft compile`` and ``llmft run --local``.

``run`` has one option per pipeline parameter, built from the config dataclasses
(``--lora-r`` for ``lora_r``) with their help text, plus ``--data``, ``--model``, ``--output`` and a
generic ``--param key=value``; a new knob in ``trainer/config.py`` appears here without an edit.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any

import typer

from pipelines.cli_common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, console, fail, friendly_errors
from pipelines.cli_options import (
    AcceleratorCount,
    GpuStepCpu,
    GpuStepMemory,
    ImageRepo,
    MachineType,
)
from trainer.config import EvalConfig, TrainConfig, ValidateConfig

# Pipeline parameters with a short flag of their own (name, flag, help).
_RENAMED = {
    "dataset_uri": (
        "--data",
        "Dataset: Alpaca JSONL, local path or gs:// URI (default: the bundled sample).",
    ),
    "output_root": (
        "--output",
        "Output root, local directory or gs://bucket/prefix (default: ./runs).",
    ),
    "model": (
        "--model",
        "Base model: llmft-tiny or smollm2-135m (built in), a local or gs:// directory, or a "
        "Hugging Face id.",
    ),
}


def _esc(text: str) -> str:
    """Help text is rich markup: keep literal brackets."""
    return text.replace("[", "\\[")


def option_name(field_name: str) -> str:
    """``lora_r`` -> ``--lora-r``."""
    return "--" + field_name.replace("_", "-")


def config_fields() -> list[dataclasses.Field[Any]]:
    """Every config field once (first definition wins), in dataclass order."""
    seen: dict[str, dataclasses.Field[Any]] = {}
    for cls in (ValidateConfig, TrainConfig, EvalConfig):
        for f in dataclasses.fields(cls):
            seen.setdefault(f.name, f)
    return list(seen.values())


def _run_parameters() -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(
            "local",
            kw,
            default=typer.Option(False, "--local", help="Run the DAG here through kfp.local."),
            annotation=bool,
        )
    ]
    for name in ("dataset_uri", "output_root"):
        flag, help_text = _RENAMED[name]
        params.append(
            inspect.Parameter(
                name, kw, default=typer.Option(None, flag, help=help_text), annotation=str | None
            )
        )
    params.append(
        inspect.Parameter(
            "skip_if_unchanged",
            kw,
            default=typer.Option(
                False,
                "--skip-if-unchanged",
                help="End early with status SKIPPED (exit 0) when the dataset sha256 equals "
                "the last SUCCESS run's under the output root.",
            ),
            annotation=bool,
        )
    )
    for f in config_fields():
        flag, help_text = _RENAMED.get(f.name, (option_name(f.name), f.metadata.get("help", "")))
        typ = type(f.default)
        if typ is bool:
            opt = typer.Option(
                None, f"{flag}/{flag.replace('--', '--no-', 1)}", help=_esc(help_text)
            )
        else:
            opt = typer.Option(None, flag, help=f"{_esc(help_text)} (default: {f.default!r})")
        params.append(inspect.Parameter(f.name, kw, default=opt, annotation=typ | None))
    params += [
        inspect.Parameter(
            "param",
            kw,
            default=typer.Option(
                None, "--param", help="Any pipeline parameter as key=value (repeatable)."
            ),
            annotation=list[str] | None,
        ),
        inspect.Parameter(
            "verbose",
            kw,
            default=typer.Option(False, "--verbose", help="Stream the raw kfp.local output."),
            annotation=bool,
        ),
        inspect.Parameter(
            "debug",
            kw,
            default=typer.Option(
                False, "--debug", help="Show tracebacks instead of one-line errors."
            ),
            annotation=bool,
        ),
    ]
    return params


class _Progress:
    """Live per-step table: state, elapsed time and the step's latest log line."""

    def __init__(self) -> None:
        from pipelines.pipeline import STEPS

        self.order = list(STEPS)
        self.state: dict[str, str] = dict.fromkeys(STEPS, "pending")
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.last: dict[str, str] = {}
        self.live: Any = None

    def render(self) -> Any:
        from rich.table import Table

        colours = {
            "running": "yellow",
            "done": "green",
            "failed": "red",
            "retrying": "magenta",
            "skipped": "cyan",
        }
        t = Table(title="llm-lora-finetune (kfp.local)", expand=False)
        for col in ("step", "state", "time", "latest"):
            t.add_column(col)
        now = time.time()
        for step in self.order:
            st = self.state[step]
            el = ""
            if step in self.started:
                el = f"{self.ended.get(step, now) - self.started[step]:.1f}s"
            c = colours.get(st, "dim")
            t.add_row(step, f"[{c}]{st}[/]", el, (self.last.get(step, "") or "")[:70])
        return t

    def event(self, step: str, kind: str, text: str) -> None:
        if step not in self.state:
            return
        if kind == "start":
            self.state[step] = "running"
            self.started.setdefault(step, time.time())
        elif kind in ("done", "failed"):
            self.state[step] = kind
            self.ended[step] = time.time()
        elif kind == "retry":
            self.state[step] = "retrying"
            self.last[step] = text
        elif kind == "log":
            self.last[step] = text
        if self.live is not None:
            self.live.update(self.render())

    def finish(self, skipped: bool) -> None:
        """After the run: steps that never started were skipped (SKIPPED run) or not run."""
        for step, st in self.state.items():
            if st == "pending":
                self.state[step] = "skipped" if skipped else "not run"
        if self.live is not None:
            self.live.update(self.render())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


SHOWN_METRICS = ("eval_loss", "perplexity", "exact_match", "rouge_l", "bleu")


def print_result(result: Any) -> None:
    """The run folder, then a short table of data, training, metrics and step times.

    "step s" is the time inside the step (from the run folder's records); "task s" adds the
    task's process start-up and imports as kfp.local measured them.
    """
    from rich.table import Table

    from pipelines.pipeline import STEPS

    colour = "green" if result.ok else "yellow" if result.skipped else "red"
    console.print(f"run folder: [bold]{result.run_dir}[/]", soft_wrap=True)
    console.print(f"status: [bold {colour}]{result.status}[/]   wall time {result.wall_s:.1f}s")
    if result.skipped:
        reason = result.status_line.partition(" ")[2]
        console.print(f"[yellow]skipped: {reason}[/]", markup=True, highlight=False)
    t = Table(title="results", show_header=True)
    t.add_column("item")
    t.add_column("base", justify="right")
    t.add_column("tuned", justify="right")
    d = result.data or {}
    if d:
        t.add_row("rows accepted / rejected", f"{d.get('accepted')} / {d.get('rejected')}", "")
        t.add_row("train / eval rows", f"{d.get('n_train')} / {d.get('n_eval')}", "")
    tr = result.train or {}
    if tr:
        steps = tr.get("steps") or tr.get("global_step") or tr.get("max_steps")
        t.add_row("train steps", _fmt(steps), "")
    m = result.metrics or {}
    base, tuned = m.get("base") or {}, m.get("tuned") or {}
    for name in SHOWN_METRICS:
        if name in base:
            t.add_row(name, _fmt(base.get(name)), _fmt(tuned.get(name)))
    if m.get("gate"):
        g = m["gate"]
        t.add_row("gate", str(g.get("metric")), "passed" if g.get("passed") else "failed")
    if t.row_count:
        console.print(t)
    st = Table(title="steps")
    for col in ("step", "state", "attempts", "step s", "task s"):
        st.add_column(col)
    for step in STEPS:
        info = result.steps.get(step)
        task = result.task_wall_s.get(step)
        if info is None and task is None:
            continue
        info = info or {"state": "-", "attempts": "-", "wall_s": None}
        st.add_row(
            step,
            info["state"],
            str(info["attempts"]),
            "" if info["wall_s"] is None else f"{info['wall_s']:.1f}",
            "" if task is None else f"{task:.1f}",
        )
    console.print(st)
    if result.error:
        console.print("[red]" + result.error.strip().splitlines()[0] + "[/]")
        console.print(f"see {result.run_dir}/error.log")


def _run_command(**kwargs: Any) -> None:
    debug = kwargs.pop("debug")
    with friendly_errors(debug):
        if not kwargs.pop("local"):
            fail(
                "only local runs here: use `llmft run --local` (cloud: `llmft submit`)", EXIT_USAGE
            )
        from pipelines.compile import coerce_defaults
        from pipelines.local import LocalRunInterrupted, run_local

        verbose = kwargs.pop("verbose")
        extra = coerce_defaults(kwargs.pop("param") or [])
        params = {k: v for k, v in kwargs.items() if v is not None}
        params.update(extra)
        progress = _Progress()
        try:
            if verbose:
                result = run_local(echo=True, **params)
            else:
                from rich.live import Live

                with Live(progress.render(), console=console, refresh_per_second=4) as live:
                    progress.live = live
                    result = run_local(on_event=progress.event, **params)
                    progress.finish(result.skipped)
                console.print()
        except LocalRunInterrupted as exc:
            # The run folder already says FAILED <step>: interrupted by ...; one line here.
            fail(str(exc), exc.exit_code)
        print_result(result)
    # SKIPPED (nothing new to train on) is a clean end, like SUCCESS.
    raise SystemExit(EXIT_OK if result.clean_exit else EXIT_INVALID)


_run_command.__signature__ = inspect.Signature(_run_parameters())  # type: ignore[attr-defined]


def compile_command(
    target: str = typer.Option(..., "--target", help="vertex or gke."),
    accelerator: str = typer.Option("L4", "--accelerator", help="L4, T4 or none (CPU only)."),
    output: str = typer.Option(..., "-o", "--output", help="YAML file to write."),
    accelerator_count: AcceleratorCount = 1,
    machine_type: MachineType = None,
    gpu_step_cpu: GpuStepCpu = None,
    gpu_step_memory: GpuStepMemory = None,
    image_repo: ImageRepo = None,
    image_tag: str | None = typer.Option(
        None, "--image-tag", help="Tag of the llmft images [env LLMFT_IMAGE_TAG]."
    ),
    bucket: str | None = typer.Option(
        None,
        "--bucket",
        help="Run folders go to gs://BUCKET: the default of output_root [env BUCKET_NAME].",
    ),
    param: list[str] | None = typer.Option(
        None, "--param", help="New default for a pipeline parameter, key=value (repeatable)."
    ),
    hf_token_secret: str | None = typer.Option(
        None,
        "--hf-token-secret",
        help="Hub token for gated models, given to the upload step only: a Kubernetes Secret "
        "NAME or NAME:KEY (gke; key default 'token') as HF_TOKEN, or a Secret Manager name "
        "projects/PROJECT/secrets/NAME (vertex, gke) read at run time. Only the name is "
        "compiled in.",
    ),
    env_file: str = typer.Option(".env", "--env-file", help="File of KEY=VALUE defaults."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Compile the pipeline to YAML for Vertex AI Pipelines or KFP on GKE.

    Refuses (exit 2) what could only fail at run time: no image repository, an output_root
    off Cloud Storage, a parameter value the run would refuse, GPU step sizes no machine
    offers.
    """
    with friendly_errors(debug):
        from pipelines.compile import coerce_defaults, compile_pipeline, placement_for
        from pipelines.settings import load_settings

        if target not in ("vertex", "gke"):
            fail(f"--target must be vertex or gke, got {target!r}", EXIT_USAGE)
        cfg = load_settings(
            env_file, bucket_name=bucket, image_repo=image_repo, image_tag=image_tag
        )
        defaults = coerce_defaults(param or [])
        if cfg.bucket_uri:
            defaults.setdefault("output_root", cfg.bucket_uri)
        sizes = {
            "machine_type": machine_type,
            "cpu": gpu_step_cpu,
            "memory": gpu_step_memory,
        }
        path = compile_pipeline(
            target,
            accelerator,
            output,
            image_tag=cfg.image_tag,
            image_repo=cfg.image_repo,
            param_defaults=defaults or None,
            hf_token_secret=hf_token_secret,
            accelerator_count=accelerator_count,
            machine_type=machine_type,
            gpu_step_cpu=gpu_step_cpu,
            gpu_step_memory=gpu_step_memory,
        )
        p = placement_for(target, accelerator, accelerator_count, **sizes)
        console.print(f"wrote {path} ({p.describe()})")
        if hf_token_secret:
            console.print(f"hub token for upload from secret {hf_token_secret.strip()}")


def register(app: typer.Typer) -> None:
    """Add ``llmft compile`` and ``llmft run`` to ``app``."""
    app.command("compile")(compile_command)
    app.command(
        "run",
        help="Run the whole pipeline locally through kfp.local (the bundled sample and the "
        "tiny model by default) and print the run folder and results.",
    )(_run_command)
