"""Recurring runs: Vertex AI pipeline schedules and KFP recurring runs of the same pipeline.

Users write standard 5-field cron (minute hour day-of-month month day-of-week). The two
backends speak different dialects, so the expression is parsed and checked here and then
rendered for each:

* Vertex AI: 5 fields, optionally prefixed ``TZ=Area/City `` for the time zone;
* KFP (robfig/cron): 6 fields with seconds first (``0 <5 fields>``); day-of-week 0-6 only, and
  no time-zone prefix (the scheduler runs in the cluster's zone, UTC on GKE).

Passing 5 fields straight to KFP would shift every field by one (minutes read as seconds...),
which is why nothing is passed through unparsed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.config import ConfigError

# (name, low, high, names) per field of standard cron.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    (
        "month",
        1,
        12,
        {
            m: i + 1
            for i, m in enumerate(
                ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
            )
        },
    ),
    (
        "day-of-week",
        0,
        7,
        {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])},
    ),
)

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_UTC_NAMES = ("UTC", "Etc/UTC", "Etc/GMT", "GMT", "Z")
_TZ_PREFIX = re.compile(r"^(?:CRON_TZ|TZ)=(\S+)\s+(.*)$")


class CronError(ConfigError):
    """An invalid cron expression or time zone (a usage error)."""


@dataclass(frozen=True)
class Cron:
    """A checked 5-field cron expression and its optional IANA time zone."""

    fields: tuple[str, str, str, str, str]
    timezone: str | None = None

    @property
    def five(self) -> str:
        """The 5 fields, space-separated."""
        return " ".join(self.fields)

    def vertex(self) -> str:
        """Vertex AI form: ``[TZ=Area/City ]m h dom mon dow``."""
        return f"TZ={self.timezone} {self.five}" if self.timezone else self.five

    def kfp(self) -> str:
        """KFP form: ``0 m h dom mon dow`` (seconds first, day-of-week 0-6).

        Raises:
            CronError: A non-UTC time zone was asked for (KFP has no time-zone field).
        """
        if self.timezone and self.timezone not in _UTC_NAMES:
            raise CronError(
                f"KFP recurring runs take no time zone (the scheduler runs in UTC): write the "
                f"cron in UTC instead of --timezone {self.timezone}, or use --backend vertex"
            )
        dow = self.fields[4]
        if "7" in re.split(r"[,/-]", dow):
            dow = _expand_dow_without_7(dow)
        return " ".join(("0", *self.fields[:4], dow))


def _values(item: str, idx: int, expr: str) -> set[int]:
    """The set of values one comma-separated item of field ``idx`` stands for."""
    name, low, high, names = _FIELDS[idx]

    def bad(reason: str) -> CronError:
        return CronError(f"invalid cron {expr!r}: {name} field {item!r}: {reason}")

    def number(tok: str) -> int:
        tok_u = tok.upper()
        if tok_u in names:
            return names[tok_u]
        if not tok.isdigit():
            allowed = f"{low}-{high}" + (f" or a name like {next(iter(names))}" if names else "")
            raise bad(f"{tok!r} is not a number ({allowed})")
        val = int(tok)
        if not low <= val <= high:
            raise bad(f"{val} is out of range {low}-{high}")
        return val

    base, slash, step_s = item.partition("/")
    step = 1
    if slash:
        if not step_s.isdigit() or int(step_s) < 1:
            raise bad(f"step {step_s!r} must be a positive number")
        step = int(step_s)
        if step > high - low + 1:
            raise bad(f"step {step} is larger than the range {low}-{high}")
    if base == "*":
        start, end = low, high
    elif "-" in base:
        a, _, b = base.partition("-")
        start, end = number(a), number(b)
        if start > end:
            raise bad(f"range {start}-{end} runs backwards")
    else:
        if slash:
            raise bad("a step needs * or a range before it (e.g. */15 or 0-30/15)")
        start = end = number(base)
    return set(range(start, end + 1, step))


def _expand_dow_without_7(dow: str) -> str:
    """Rewrite a day-of-week field that uses 7 (Sunday) as an explicit 0-6 list."""
    days: set[int] = set()
    for item in dow.split(","):
        days |= {d % 7 for d in _values(item, 4, dow)}
    return ",".join(str(d) for d in sorted(days))


def parse_cron(expr: str, timezone: str | None = None) -> Cron:
    """Check a standard 5-field cron expression (or @daily-style macro) and its time zone.

    Accepted per field: ``*``, numbers, ``a-b`` ranges, ``*/n`` and ``a-b/n`` steps, comma
    lists, and month / weekday names (JAN-DEC, SUN-SAT). A leading ``TZ=Area/City`` or
    ``CRON_TZ=Area/City`` is taken as the time zone.

    Args:
        expr: The expression, e.g. ``"0 3 * * 1-5"``.
        timezone: IANA time zone (``Europe/Paris``); None means the backend's default (UTC).

    Returns:
        The checked expression.

    Raises:
        CronError: One line naming the field and the reason.
    """
    text = " ".join(expr.split())
    m = _TZ_PREFIX.match(text)
    if m:
        if timezone and timezone != m[1]:
            raise CronError(f"time zone given twice: {m[1]} in the cron and --timezone {timezone}")
        timezone, text = m[1], m[2]
    text = _MACROS.get(text.lower(), text)
    parts = text.split(" ") if text else []
    if len(parts) != 5:
        hint = (
            " (6 fields look like KFP's seconds-first form: drop the leading seconds field)"
            if len(parts) == 6
            else ""
        )
        raise CronError(
            f"invalid cron {expr!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week), got {len(parts)}{hint}"
        )
    sets: list[set[int]] = []
    for idx, part in enumerate(parts):
        values: set[int] = set()
        for item in part.split(","):
            if not item:
                raise CronError(f"invalid cron {expr!r}: empty item in {_FIELDS[idx][0]} field")
            values |= _values(item, idx, expr)
        sets.append(values)
    _check_fires(expr, parts, sets[2], sets[3])
    if timezone:
        check_timezone(timezone)
    return Cron(fields=tuple(p.upper() for p in parts), timezone=timezone or None)  # type: ignore[arg-type]


_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: leap years fire
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def _check_fires(expr: str, parts: list[str], days: set[int], months: set[int]) -> None:
    """Refuse a day-of-month that exists in none of the months (``0 0 30 2 *``).

    Cron ORs day-of-month and day-of-week when both are restricted: ``0 0 30 2 1`` fires on
    February's Mondays. So only a restricted day-of-month with day-of-week ``*`` can never
    fire (a ``*``-started day-of-month always includes day 1). A stepped day-of-week such as
    ``*/2`` is left alone: Vixie cron (Vertex AI) reads it as unrestricted, robfig (KFP) as
    restricted, so it may fire on one backend.
    """
    if parts[2].startswith("*") or parts[4] != "*":
        return
    if any(d <= _MONTH_DAYS[m - 1] for m in months for d in days):
        return
    names = ", ".join(_MONTH_NAMES[m - 1] for m in sorted(months))
    longest = max(_MONTH_DAYS[m - 1] for m in months)
    raise CronError(
        f"invalid cron {expr!r}: never fires: day-of-month {parts[2]} does not exist in "
        f"month(s) {names} (at most {longest} days)"
    )


def check_timezone(tz: str) -> str:
    """Return ``tz`` if it is an IANA time zone name, else raise CronError."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if tz in _UTC_NAMES:
        return tz
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {tz!r} (use an IANA name like Europe/Paris)") from None
    return tz


# --------------------------------------------------------------------------- schedules


@dataclass
class ScheduleInfo:
    """A schedule as a backend reports it.

    Attributes:
        backend: ``vertex`` or ``kfp``.
        schedule_id: Short ID (Vertex schedule ID, KFP recurring-run UUID).
        name: Full resource name (Vertex) or the ID (KFP).
        display_name: Human name.
        cron: The cron as stored by the backend (its own dialect).
        state: ``ACTIVE``/``PAUSED`` (Vertex) or ``ENABLED``/``DISABLED`` (KFP).
        max_concurrency: Concurrent runs allowed.
    """

    backend: str
    schedule_id: str
    name: str
    display_name: str
    cron: str
    state: str
    max_concurrency: int | None = None


def _enum_name(value: Any) -> str:
    return getattr(value, "name", None) or str(value or "")


def _vertex_info(s: Any) -> ScheduleInfo:
    res = s._gca_resource
    return ScheduleInfo(
        backend="vertex",
        schedule_id=res.name.rsplit("/", 1)[-1],
        name=res.name,
        display_name=res.display_name,
        cron=res.cron,
        state=_enum_name(res.state),
        max_concurrency=int(res.max_concurrent_run_count or 0) or None,
    )


def _kfp_info(r: Any) -> ScheduleInfo:
    trigger = getattr(r, "trigger", None)
    cron = ""
    if trigger is not None and getattr(trigger, "cron_schedule", None) is not None:
        cron = trigger.cron_schedule.cron or ""
    mc = getattr(r, "max_concurrency", None)
    return ScheduleInfo(
        backend="kfp",
        schedule_id=r.recurring_run_id,
        name=r.recurring_run_id,
        display_name=r.display_name or "",
        cron=cron,
        state=_enum_name(getattr(r, "status", "")),
        max_concurrency=int(mc) if mc not in (None, "") else None,
    )


def create_vertex_schedule(
    package_path: str,
    target: Any,
    *,
    cron: Cron,
    display_name: str,
    pipeline_root: str,
    parameter_values: Mapping[str, Any],
    service_account: str | None = None,
    max_concurrency: int = 1,
    enable_caching: bool | None = None,
    labels: Mapping[str, str] | None = None,
) -> ScheduleInfo:
    """Create a Vertex AI pipeline schedule.

    Args:
        package_path: Single-document compiled YAML (target ``vertex``).
        target: ``pipelines.submit.VertexTarget``.
        cron: Checked cron; sent as ``[TZ=Area/City ]<5 fields>``.
        display_name: Schedule name.
        pipeline_root: ``gs://`` root for KFP's intermediate artifacts.
        parameter_values: Typed parameters every scheduled run gets.
        service_account: Service account e-mail the runs execute as.
        max_concurrency: Runs allowed at once (1: a slow run is never overlapped).
        enable_caching: Override compile-time caching (None: keep).
        labels: Labels of the scheduled jobs.

    Returns:
        The created schedule.
    """
    from pipelines.submit import vertex_job

    job = vertex_job(
        package_path,
        target,
        display_name=display_name,
        pipeline_root=pipeline_root,
        parameter_values=parameter_values,
        enable_caching=enable_caching,
        labels=labels,
    )
    sched = job.create_schedule(
        cron=cron.vertex(),
        display_name=display_name,
        max_concurrent_run_count=max_concurrency,
        service_account=service_account,
    )
    return _vertex_info(sched)


def create_kfp_recurring_run(
    package_path: str,
    target: Any,
    *,
    cron: Cron,
    display_name: str,
    parameter_values: Mapping[str, Any],
    pipeline_root: str | None = None,
    service_account: str | None = None,
    max_concurrency: int = 1,
    enable_caching: bool | None = None,
) -> ScheduleInfo:
    """Create an enabled KFP recurring run (cron sent in KFP's 6-field form, no catch-up).

    Args:
        package_path: Compiled YAML (target ``gke``).
        target: ``pipelines.submit.KfpTarget``.
        cron: Checked cron (must be UTC).
        display_name: Recurring-run name.
        parameter_values: Typed parameters every run gets.
        pipeline_root: Root for intermediate artifacts (None: server default).
        service_account: Kubernetes service account of the run pods.
        max_concurrency: Runs allowed at once.
        enable_caching: Override compile-time caching (None: keep).

    Returns:
        The created recurring run.
    """
    kfp_cron = cron.kfp()
    client = target.client()
    experiment = _kfp_experiment(client, target)
    rec = client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=display_name,
        cron_expression=kfp_cron,
        max_concurrency=max_concurrency,
        # Missed intervals (e.g. while paused) start one run, not a backlog of training jobs.
        no_catchup=True,
        params=dict(parameter_values),
        pipeline_package_path=package_path,
        pipeline_root=pipeline_root,
        enable_caching=enable_caching,
        service_account=service_account,
        enabled=True,
    )
    return _kfp_info(rec)


def _kfp_experiment(client: Any, target: Any) -> Any:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # kfp prints an experiment link
        return client.create_experiment(name=target.experiment, namespace=target.namespace)


def list_schedules(backend: str, target: Any) -> list[ScheduleInfo]:
    """Schedules created by llmft (Vertex: all in the region; KFP: the target's experiment)."""
    if backend == "vertex":
        from google.cloud import aiplatform

        target.init()
        return [
            _vertex_info(s)
            for s in aiplatform.PipelineJobSchedule.list(
                project=target.project, location=target.region
            )
        ]
    client = target.client()
    experiment = _kfp_experiment(client, target)
    out: list[ScheduleInfo] = []
    token = ""
    while True:
        resp = client.list_recurring_runs(
            experiment_id=experiment.experiment_id, page_size=100, page_token=token
        )
        out += [_kfp_info(r) for r in (resp.recurring_runs or [])]
        token = getattr(resp, "next_page_token", "") or ""
        if not token:
            return out


def _vertex_schedule(target: Any, schedule_id: str) -> Any:
    from google.cloud import aiplatform

    target.init()
    name = schedule_id
    if not name.startswith("projects/"):
        name = f"projects/{target.project}/locations/{target.region}/schedules/{schedule_id}"
    return aiplatform.PipelineJobSchedule.get(name, project=target.project, location=target.region)


def set_schedule_state(backend: str, target: Any, schedule_id: str, action: str) -> None:
    """Pause, resume or delete a schedule.

    Args:
        backend: ``vertex`` or ``kfp``.
        target: ``VertexTarget`` or ``KfpTarget``.
        schedule_id: Schedule ID (or Vertex resource name) / recurring-run ID.
        action: ``pause``, ``resume`` or ``delete``.
    """
    if action not in ("pause", "resume", "delete"):
        raise ConfigError(f"unknown schedule action {action!r}")
    if backend == "vertex":
        sched = _vertex_schedule(target, schedule_id)
        if action == "pause":
            sched.pause()
        elif action == "resume":
            sched.resume()
        else:
            sched.delete()
        return
    client = target.client()
    if action == "pause":
        client.disable_recurring_run(schedule_id)
    elif action == "resume":
        client.enable_recurring_run(schedule_id)
    else:
        client.delete_recurring_run(schedule_id)


def schedule_pipeline(
    settings: Any,
    opts: Any,
    *,
    cron: str,
    timezone: str | None = None,
    name: str = "llmft-scheduled",
    max_concurrency: int = 1,
    skip_if_unchanged: bool = False,
    credentials: Any = None,
) -> ScheduleInfo:
    """Compile, stage the data once and create a schedule on ``opts.backend``.

    Every scheduled run reads the same ``dataset_uri``. Point ``--data`` at a ``gs://`` object
    that an upstream job overwrites to train on fresh data; a local file is staged once
    (content-addressed), so every run then sees that snapshot.

    Args:
        settings: ``pipelines.settings.Settings``.
        opts: ``pipelines.submit.SubmitOptions`` (backend, data, model, params...).
        cron: Standard 5-field cron (checked before anything is compiled or uploaded).
        timezone: IANA time zone (Vertex only; KFP runs in UTC).
        name: Schedule display name.
        max_concurrency: Runs allowed at once.
        skip_if_unchanged: Set the pipeline's ``skip_if_unchanged`` parameter: a run whose
            dataset sha256 equals the last successful run's ends early as SKIPPED.
        credentials: Explicit Google credentials for Vertex.

    Returns:
        The created schedule.
    """
    import tempfile

    from pipelines import submit as sub

    backend = sub.check_backend(opts.backend)
    checked = parse_cron(cron, timezone)
    if backend == "kfp":
        checked.kfp()  # reject a non-UTC zone before compiling or uploading anything
    if max_concurrency < 1:
        raise ConfigError("--max-concurrency must be >= 1")
    if backend == "vertex":
        settings.require("project_id", "bucket_name")
    else:
        settings.require("bucket_name", "kfp_host")
    target = (
        sub.vertex_target(settings, credentials)
        if backend == "vertex"
        else sub.kfp_target(settings)
    )
    with tempfile.TemporaryDirectory(prefix="llmft-schedule-") as tmp:
        package = sub.compile_package(settings, opts, tmp)
        values, _ = sub.prepare_parameters(package, settings, opts)
        if skip_if_unchanged:
            # The llmft pipeline has it (init-run checks the hash, finalize writes SKIPPED);
            # a package compiled elsewhere or by an older llmft may not.
            if sub.SKIP_PARAM not in sub.pipeline_parameters(package):
                raise ConfigError(
                    f"--skip-if-unchanged: the compiled pipeline has no {sub.SKIP_PARAM!r} "
                    "parameter (recompile it with this llmft, or leave out --package)"
                )
            values[sub.SKIP_PARAM] = True
        sa = opts.service_account or settings.service_account
        root = f"{settings.bucket_uri}/{sub.PIPELINE_ROOT_DIR}"
        if backend == "vertex":
            return create_vertex_schedule(
                package,
                target,
                cron=checked,
                display_name=name,
                pipeline_root=root,
                parameter_values=values,
                service_account=sa,
                max_concurrency=max_concurrency,
                enable_caching=opts.enable_caching,
                labels=opts.labels,
            )
        return create_kfp_recurring_run(
            package,
            target,
            cron=checked,
            display_name=name,
            parameter_values=values,
            pipeline_root=root,
            service_account=sa,
            max_concurrency=max_concurrency,
            enable_caching=opts.enable_caching,
        )
