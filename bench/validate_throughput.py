"""Schema-validation throughput: llmft's validator against a plain stdlib ``json.loads`` loop.

For each kind of rows (``--rows``, see :data:`ROW_KINDS`: the bench's own rows with paragraph
breaks, plain ASCII Alpaca-like rows, non-ASCII Chinese rows), generates unique Alpaca-like
JSONL in a temporary directory, then:

1. in-process: ``validate_file(FILE, ValidateConfig(schema_only=True))`` (what
   ``llmft validate --schema-only`` runs: every check, duplicates and repeated keys included)
   vs the stdlib baseline on the same file, each run in a fresh child process, imports
   excluded;
2. whole process: ``llmft validate --schema-only FILE`` (interpreter start, imports, output)
   vs ``python stdlib_loop.py FILE`` on a larger file; ``--workers 1`` (one process, no
   forked workers) is timed too and printed as context: the headline uses the default
   (one worker per available CPU, :func:`trainer.validate.validate_file`), so it depends on
   the CPUs; the CPU-time ratio shows the work per row whatever their number.

The baseline is not a bare ``json.loads`` loop: it also does the minimal contract check (an
object whose instruction and output are non-empty strings, input a string), so both sides at
least check the schema.

Each measurement is repeated ``--repeats`` times, the two sides interleaved (after one
untimed warm-up run of each). The headline is the ratio of the median wall times; the
spread is the range of the per-pair ratios (each stdlib run over the llmft run next to it)
and each side's wall-time range; the CPU-time ratio is printed too (this machine is shared).
Run it under ``flock /tmp/llmft-heavy.lock``.

Usage: ``python bench/validate_throughput.py [--rows bench,ascii,nonascii] [--size-mb 60]
[--process-size-mb 150] [--repeats 5] [--skip-process] [--skip-in-process] [--out-dir-too]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people my than first "
    "water been call who oil its now find long down day did get come made may part explain "
    "describe list summarize translate classify rewrite generate sentence paragraph answer"
).split()

STDLIB_LOOP = """
import json, sys


def check(path):
    # The minimal contract check: a JSON object per line whose instruction and output are
    # non-empty strings and whose input, when present, is a string.
    rows = bad = 0
    with open(path, "rb") as f:
        for line in f:
            rows += 1
            d = json.loads(line)
            if not isinstance(d, dict):
                bad += 1
                continue
            ins, out, inp = d.get("instruction"), d.get("output"), d.get("input", "")
            if not (
                isinstance(ins, str) and ins.strip()
                and isinstance(out, str) and out.strip()
                and isinstance(inp, str)
            ):
                bad += 1
    return rows, bad


if __name__ == "__main__":
    rows, bad = check(sys.argv[1])
    sys.exit(1 if bad else 0)
"""
"""The baseline: ``json.loads`` on each line plus the minimal contract check (a whole script, so
the whole-process comparison can run it as ``python stdlib_loop.py FILE``)."""


def _text(rng: random.Random, n: int) -> str:
    words = rng.choices(_WORDS, k=n)
    out = []
    for i, w in enumerate(words):
        out.append(w)
        if i % 15 == 14:
            out[-1] += rng.choice([".", ",", ".\n", ".\n\n"])
    return " ".join(out).replace("\n ", "\n").capitalize()


_CJK = (
    "数据 模型 训练 解释 以下 问题 回答 生成 句子 段落 翻译 总结 分类 列表 描述 科学 理论 细胞 "
    "太阳 地球 城市 历史 文化 语言 学习 方法 结果 重要 我们 他们 因为 所以 可以 需要 例如"
).split()
_ACCENTED = "café naïve résumé Zürich São Paulo Ångström façade jalapeño crème brûlée".split()

ROW_KINDS = ("bench", "ascii", "nonascii")
"""``bench``: this bench's original rows (outputs with paragraph breaks, i.e. ``\\n`` escapes);
``ascii``: plain ASCII Alpaca-like rows, no escapes at all (colons in ~45 % of the texts,
as in the English Alpaca demo); ``nonascii``: Chinese rows (the
real ``alpaca_zh_demo.json`` replicated with a unique suffix when ``--zh-source`` exists, else
generated CJK + accented text), written as raw UTF-8."""


def _plain(rng: random.Random, n: int) -> str:
    words = rng.choices(_WORDS, k=n)
    if rng.random() < 0.45:  # like the English Alpaca demo: 45 % of rows hold a colon
        words[rng.randrange(n)] += ":"
    return " ".join(words).capitalize() + "."


def _cjk(rng: random.Random, n: int) -> str:
    words = rng.choices(_CJK, k=n) + rng.choices(_ACCENTED, k=max(1, n // 10))
    rng.shuffle(words)
    return "".join(w if rng.random() < 0.8 else w + "，" for w in words) + "。"


def generate(
    path: Path, size_mb: float, seed: int = 0, kind: str = "bench", zh_source: str | None = None
) -> int:
    """Write ``size_mb`` MB of unique Alpaca-like rows of ``kind`` to ``path``; the row count."""
    import msgspec

    rng = random.Random(seed)
    text = {"bench": _text, "ascii": _plain, "nonascii": _cjk}[kind]
    base: list[dict] | None = None
    if kind == "nonascii" and zh_source and Path(zh_source).exists():
        base = json.loads(Path(zh_source).read_text(encoding="utf-8"))
    pool_in = [text(rng, rng.randint(3, 40)) for _ in range(4000)]
    pool_out = [text(rng, max(1, int(rng.lognormvariate(3.9, 0.9)))) for _ in range(4000)]
    pool_ins = [text(rng, rng.randint(4, 18)) for _ in range(4000)]
    enc = msgspec.json.Encoder()
    target = int(size_mb * 1_000_000)
    written = rows = 0
    with open(path, "wb") as f:
        while written < target:
            chunk = []
            for _ in range(2000):
                rows += 1
                if base is not None:
                    row = dict(base[rows % len(base)])
                    row["instruction"] = f"{row.get('instruction', '')}（任务 {rows}）"
                else:
                    row = {
                        "instruction": f"{rng.choice(pool_ins)} (task {rows})",
                        "input": rng.choice(pool_in) if rng.random() < 0.4 else "",
                        "output": rng.choice(pool_out),
                    }
                chunk.append(enc.encode(row))
            data = b"\n".join(chunk) + b"\n"
            f.write(data)
            written += len(data)
    return rows


def _load_stdlib_check():
    namespace: dict = {}
    exec(compile(STDLIB_LOOP, "stdlib_loop.py", "exec"), namespace)
    return namespace["check"]


def _worker(kind: str, path: str) -> None:
    """Run one in-process measurement in this (fresh) process and print it as JSON."""
    if kind == "stdlib":
        check = _load_stdlib_check()
    else:  # imports are not part of the in-process measurement
        from trainer.config import ValidateConfig
        from trainer.validate import validate_file

        out_dir = tempfile.mkdtemp(prefix="llmft-bench-out-") if kind == "llmft-out" else None

    def cpu_now() -> float:  # this process and its reaped children (llmft's worker processes)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + kids.ru_utime + kids.ru_stime

    t0 = time.perf_counter()
    c0 = cpu_now()
    if kind == "stdlib":
        n, bad = check(path)
        ok = bad == 0
    else:
        s = validate_file(path, ValidateConfig(schema_only=True), out_dir)
        n, ok = s.lines_read, s.ok and s.balanced
    wall = time.perf_counter() - t0
    cpu = cpu_now() - c0
    if kind == "llmft-out":
        shutil.rmtree(out_dir, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "cpu": cpu, "rows": n, "ok": ok, "peak_rss_mb": peak}))


def _child(kind: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(path)],
        env=_ENV,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def _child_env(tmp: Path) -> dict[str, str]:
    """The children's environment: Python's bytecode cache on, as for an installed package.

    A shell with ``PYTHONDONTWRITEBYTECODE=1`` (this workplace sets it) makes ``llmft``
    recompile its own modules at every start (~15 ms) while ``json`` comes precompiled with
    Python: an artefact of the set-up, not of either side. The cache goes to a temporary
    ``PYTHONPYCACHEPREFIX`` (nothing written in the repository); a warm-up run fills it.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return env


_ENV: dict[str, str] | None = None


def _timed_process(cmd: list[str]) -> dict:
    """Wall and CPU seconds (user + system, from the child's rusage), exit code, peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rc": os.waitstatus_to_exitcode(status),
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def _summarise(runs: list[dict]) -> dict:
    return {
        "wall": min(r["wall"] for r in runs),
        "cpu": min(r["cpu"] for r in runs),
        "wall_med": statistics.median(r["wall"] for r in runs),
        "cpu_med": statistics.median(r["cpu"] for r in runs),
        "wall_max": max(r["wall"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def _print_side(scope: str, label: str, r: dict, mb: float) -> None:
    print(
        f"{scope:11s} {label:34s} {mb / r['wall_med']:7.1f} MB/s wall  "
        f"(median {r['wall_med']:.3f}s, spread {r['wall']:.3f}-{r['wall_max']:.3f}s wall; "
        f"median {r['cpu_med']:.3f}s CPU; peak RSS {r['peak_rss_mb']:.0f} MB)"
    )


def _print_ratio(
    scope: str, kind: str, mb: float, base: list[dict], new: list[dict], goal: str
) -> None:
    """The headline: median wall over median wall; the spread: each interleaved pair's ratio."""
    b, n = _summarise(base), _summarise(new)
    pairs = sorted(x["wall"] / y["wall"] for x, y in zip(base, new, strict=True))
    cpu = b["cpu_med"] / n["cpu_med"]
    print(
        f"{scope:11s} RATIO llmft/stdlib [{kind}, {mb:.0f} MB]: {b['wall_med'] / n['wall_med']:.2f}x "
        f"wall (medians; goal {goal}); per-pair {pairs[0]:.2f}-{pairs[-1]:.2f}x "
        f"(median {statistics.median(pairs):.2f}x, {len(pairs)} interleaved pairs); "
        f"{cpu:.2f}x CPU"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=60.0, help="in-process file size (MB)")
    ap.add_argument("--process-size-mb", type=float, default=150.0, help="whole-process file (MB)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement (interleaved)")
    ap.add_argument(
        "--rows", default=",".join(ROW_KINDS), help=f"comma-separated row kinds: {ROW_KINDS}"
    )
    ap.add_argument(
        "--zh-source",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "ext" / "alpaca_zh_demo.json"),
        help="Alpaca JSON array replicated for the nonascii rows (generated rows if absent)",
    )
    ap.add_argument("--skip-process", action="store_true", help="only the in-process measurement")
    ap.add_argument("--skip-in-process", action="store_true", help="only the whole process")
    ap.add_argument(
        "--out-dir-too",
        action="store_true",
        help="also time validate_file with an out_dir (split, canonical train/eval files)",
    )
    ap.add_argument("--workdir", default=None, help="where to write the data (default: a temp dir)")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(*args.worker)
        return

    kinds_rows = [k for k in args.rows.split(",") if k]
    for k in kinds_rows:
        if k not in ROW_KINDS:
            raise SystemExit(f"unknown --rows kind {k!r} (one of {ROW_KINDS})")
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="llmft-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        "headline: median wall time of stdlib over median wall time of llmft, both sides "
        "interleaved; spread: the ratio of each interleaved pair"
    )
    global _ENV
    _ENV = _child_env(tmp)
    print("children: bytecode cache on (PYTHONPYCACHEPREFIX in the work dir), one warm-up run each")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPUs available: {cpus} (llmft's default: one worker process per CPU, up to 8)")
    script = tmp / "stdlib_loop.py"
    script.write_text(STDLIB_LOOP)
    llmft = shutil.which("llmft", path=str(Path(sys.executable).parent)) or "llmft"
    try:
        for kind in kinds_rows:
            if not args.skip_in_process:
                data = tmp / f"{kind}.jsonl"
                rows = generate(data, args.size_mb, kind=kind, zh_source=args.zh_source)
                mb = data.stat().st_size / 1e6
                print(f"generated {mb:.0f} MB, {rows} {kind} rows ({data})")
                sides = ["stdlib", "llmft"] + (["llmft-out"] if args.out_dir_too else [])
                runs: dict[str, list[dict]] = {k: [] for k in sides}
                for _ in range(args.repeats):
                    for side in sides:
                        r = _child(side, data)
                        if side != "stdlib" and (not r["ok"] or r["rows"] != rows):
                            raise SystemExit(f"validator did not accept the generated data: {r}")
                        runs[side].append(r)
                labels = {"stdlib": "stdlib json.loads + check", "llmft": "llmft validate_file"}
                if args.out_dir_too:
                    labels["llmft-out"] = "llmft validate_file + out_dir"
                for side, label in labels.items():
                    _print_side("in-process", label, _summarise(runs[side]), mb)
                _print_ratio("in-process", kind, mb, runs["stdlib"], runs["llmft"], ">= 3x")
                if args.out_dir_too:
                    _print_ratio(
                        "in-process", kind + " +out_dir", mb, runs["stdlib"], runs["llmft-out"], "-"
                    )
                data.unlink()
            if args.skip_process:
                continue
            big = tmp / f"{kind}-big.jsonl"
            generate(big, args.process_size_mb, seed=1, kind=kind, zh_source=args.zh_source)
            big_mb = big.stat().st_size / 1e6
            cmds = {
                "stdlib": [sys.executable, str(script), str(big)],
                "llmft": [llmft, "validate", "--schema-only", str(big)],
                "llmft-1": [llmft, "validate", "--schema-only", "--workers", "1", str(big)],
            }
            pruns: dict[str, list[dict]] = {k: [] for k in cmds}
            for cmd in cmds.values():  # warm-up: page cache and bytecode cache, untimed
                _timed_process(cmd)
            for _ in range(args.repeats):
                for side, cmd in cmds.items():
                    r = _timed_process(cmd)
                    if r["rc"] != 0:
                        raise SystemExit(f"{' '.join(cmd)} exited {r['rc']}")
                    pruns[side].append(r)
            _print_side(
                "process", "python stdlib_loop.py FILE", _summarise(pruns["stdlib"]), big_mb
            )
            _print_side(
                "process", "llmft validate --schema-only", _summarise(pruns["llmft"]), big_mb
            )
            _print_side("process", "llmft ... --workers 1", _summarise(pruns["llmft-1"]), big_mb)
            _print_ratio("process", kind, big_mb, pruns["stdlib"], pruns["llmft"], ">= 2x")
            _print_ratio(
                "process", kind + " --workers 1", big_mb, pruns["stdlib"], pruns["llmft-1"], "-"
            )
            big.unlink()
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
