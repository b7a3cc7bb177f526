"""``llmft plan``: will this training run fit on the GPU? Estimated from config.json alone.

Every ``TrainConfig`` field is a flag, generated like ``llmft train``'s (``--batch-size``,
``--max-seq-len``, ``--gradient-checkpointing``, ...), plus ``--accelerator``,
``--accelerator-count`` and ``--json``.
``--batch-size auto`` picks the largest micro-batch that fits.

Exit codes: 0 it fits, 1 it does not fit, 2 usage error (unknown accelerator, no config.json
where ``--model`` points, a knob out of range).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import typer

EXIT_FITS = 0
EXIT_DOES_NOT_FIT = 1


def _signature() -> inspect.Signature:
    from pipelines.cli_train import config_parameters
    from trainer.config import TrainConfig

    kw = inspect.Parameter.KEYWORD_ONLY
    params = []
    for p in config_parameters(TrainConfig):
        if p.name == "batch_size":
            # A string so that "auto" passes; the plan parses it.
            p = p.replace(
                annotation=str | None,
                default=typer.Option(
                    None,
                    "--batch-size",
                    help="Examples per device per micro-batch, or auto (the largest that fits; "
                    "grad_accum is raised to keep the effective batch). [default: "
                    f"{TrainConfig.batch_size}]",
                    show_default=False,
                ),
            )
        params.append(p)
    fixed = [
        inspect.Parameter(
            "accelerator",
            kw,
            annotation=str,
            default=typer.Option(
                "L4",
                "--accelerator",
                help="GPU type: L4, T4, A100 (40 GB), A100-80GB, H100, or cpu (this host).",
            ),
        ),
        inspect.Parameter(
            "accelerator_count",
            kw,
            annotation=int,
            default=typer.Option(
                1, "--accelerator-count", help="GPUs (data parallel: memory is per GPU)."
            ),
        ),
        inspect.Parameter(
            "as_json",
            kw,
            annotation=bool,
            default=typer.Option(False, "--json", help="Print one JSON object."),
        ),
        inspect.Parameter(
            "debug", kw, annotation=bool, default=typer.Option(False, "--debug", help="Tracebacks.")
        ),
    ]
    return inspect.Signature([*fixed, *params])


def _plan_command(**kwargs: Any) -> None:
    from pipelines.cli_common import console, friendly_errors
    from pipelines.cli_train import build_config

    debug = bool(kwargs.pop("debug", False))
    as_json = bool(kwargs.pop("as_json", False))
    accelerator = kwargs.pop("accelerator")
    count = kwargs.pop("accelerator_count")
    batch = kwargs.pop("batch_size", None)
    with friendly_errors(debug):
        from trainer.config import ConfigError
        from trainer.plan import estimate, load_model_config, render

        if count < 1:
            raise ConfigError("--accelerator-count must be >= 1")
        cfg = build_config(kwargs)
        model_cfg = load_model_config(cfg.model)
        plan = estimate(
            model_cfg,
            cfg,
            accelerator=accelerator,
            accelerator_count=count,
            batch_size=batch,
        )
    if as_json:
        print(json.dumps(plan.to_dict()))
    else:
        console.print(render(plan), highlight=False, soft_wrap=True)
    raise SystemExit(EXIT_FITS if plan.fits else EXIT_DOES_NOT_FIT)


def register(app: typer.Typer) -> None:
    """Add ``llmft plan`` to the app."""

    def plan_cmd(**kwargs: Any) -> None:
        _plan_command(**kwargs)

    plan_cmd.__signature__ = _signature()  # type: ignore[attr-defined]
    plan_cmd.__doc__ = (
        "Estimate peak GPU memory of a training run from the model's config.json (weights, "
        "LoRA + AdamW, activations, loss, CUDA margins), say whether it fits and what would "
        "make it fit. Exits 0 when it fits, 1 when it does not, 2 on usage errors."
    )
    app.command("plan")(plan_cmd)
