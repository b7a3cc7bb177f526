"""Schema-validation throughput: llmft's validator against a plain stdlib ``json.loads`` loop.

Generates Alpaca-like JSONL (unique rows; ~40 % with an ``input``; outputs with a long-tailed
length and paragraph breaks, like the real Alpaca data) in a temporary directory, then:

1. in-process: ``validate_file(FILE, ValidateConfig(schema_only=True))`` (what
   ``llmft validate --schema-only`` runs: every check, duplicates included) vs the stdlib
   baseline on the same file, each run in a fresh child process, imports excluded;
2. whole process: ``llmft validate --schema-only FILE`` (interpreter start, imports, output)
   vs ``python stdlib_loop.py FILE`` on a larger file.

The baseline is not a bare ``json.loads`` loop: it also does the minimal contract check (an
object whose instruction and output are non-empty strings, input a string), so both sides at
least check the schema.

Each measurement is repeated ``--repeats`` times, the two sides interleaved, and reported as
both wall time and CPU time (user + system of that process). The issue's goal is about wall
time, which is the headline; the CPU-time ratio is printed next to it because this machine is
shared and its wall times are noisy (CPU time is what each side itself spent). Ratios use the
best (least disturbed) run of each side; medians are printed too.

Usage: ``python bench/validate_throughput.py [--size-mb 120] [--process-size-mb 300]
[--repeats 5] [--skip-process] [--out-dir-too]``.
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


def generate(path: Path, size_mb: float, seed: int = 0) -> int:
    """Write ``size_mb`` MB of unique Alpaca-like rows to ``path``; return the row count."""
    import msgspec

    rng = random.Random(seed)
    pool_in = [_text(rng, rng.randint(3, 40)) for _ in range(4000)]
    pool_out = [_text(rng, max(1, int(rng.lognormvariate(3.9, 0.9)))) for _ in range(4000)]
    pool_ins = [_text(rng, rng.randint(4, 18)) for _ in range(4000)]
    enc = msgspec.json.Encoder()
    target = int(size_mb * 1_000_000)
    written = rows = 0
    with open(path, "wb") as f:
        while written < target:
            chunk = []
            for _ in range(2000):
                rows += 1
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
    t0 = time.perf_counter()
    c0 = time.process_time()
    if kind == "stdlib":
        n, bad = check(path)
        ok = bad == 0
    else:
        s = validate_file(path, ValidateConfig(schema_only=True), out_dir)
        n, ok = s.lines_read, s.ok and s.balanced
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if kind == "llmft-out":
        shutil.rmtree(out_dir, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "cpu": cpu, "rows": n, "ok": ok, "peak_rss_mb": peak}))


def _child(kind: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def _timed_process(cmd: list[str]) -> dict:
    """Wall and CPU seconds (user + system, from the child's rusage), exit code, peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def _print_pair(scope: str, labels: dict[str, str], res: dict[str, dict], mb: float) -> None:
    for kind, label in labels.items():
        r = res[kind]
        print(
            f"{scope:11s} {label:34s} {mb / r['wall']:7.1f} MB/s wall  "
            f"{mb / r['cpu']:7.1f} MB/s CPU  (best {r['wall']:.2f}s wall / {r['cpu']:.2f}s CPU, "
            f"median {r['wall_med']:.2f}s / {r['cpu_med']:.2f}s, peak RSS {r['peak_rss_mb']:.0f} MB)"
        )


def _ratios(base: dict, new: dict) -> tuple[float, float, float, float]:
    return (
        base["wall"] / new["wall"],
        base["cpu"] / new["cpu"],
        base["wall_med"] / new["wall_med"],
        base["cpu_med"] / new["cpu_med"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=120.0, help="in-process file size (MB)")
    ap.add_argument("--process-size-mb", type=float, default=300.0, help="whole-process file (MB)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement (interleaved)")
    ap.add_argument("--skip-process", action="store_true", help="only the in-process measurement")
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

    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="llmft-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        "headline: wall-time ratios (the issue's goal); CPU-time ratios are printed because "
        "this machine is shared and wall times are noisy"
    )
    try:
        data = tmp / "data.jsonl"
        t0 = time.perf_counter()
        rows = generate(data, args.size_mb)
        mb = data.stat().st_size / 1e6
        print(f"generated {mb:.0f} MB, {rows} rows in {time.perf_counter() - t0:.1f}s ({data})")
        kinds = ["stdlib", "llmft"] + (["llmft-out"] if args.out_dir_too else [])
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.repeats):
            for kind in kinds:
                r = _child(kind, data)
                if kind != "stdlib" and (not r["ok"] or r["rows"] != rows):
                    raise SystemExit(f"validator did not accept the generated data: {r}")
                runs[kind].append(r)
        res = {k: _summarise(v) for k, v in runs.items()}
        labels = {"stdlib": "stdlib json.loads + check", "llmft": "llmft validate_file"}
        if args.out_dir_too:
            labels["llmft-out"] = "llmft validate_file + out_dir"
        _print_pair("in-process", labels, res, mb)
        wall, cpu, wall_med, cpu_med = _ratios(res["stdlib"], res["llmft"])
        print(
            f"in-process  RATIO llmft/stdlib: {wall:.2f}x wall (headline; goal >= 3x), "
            f"{cpu:.2f}x CPU  [medians: {wall_med:.2f}x wall, {cpu_med:.2f}x CPU]"
        )
        if args.out_dir_too:
            wall, cpu, _, _ = _ratios(res["stdlib"], res["llmft-out"])
            print(
                f"in-process  ratio with out_dir (not the goal's path): {wall:.2f}x wall, {cpu:.2f}x CPU"
            )

        if args.skip_process:
            return
        big = tmp / "big.jsonl"
        generate(big, args.process_size_mb, seed=1)
        big_mb = big.stat().st_size / 1e6
        script = tmp / "stdlib_loop.py"
        script.write_text(STDLIB_LOOP)
        llmft = shutil.which("llmft", path=str(Path(sys.executable).parent)) or "llmft"
        cmds = {
            "stdlib": [sys.executable, str(script), str(big)],
            "llmft": [llmft, "validate", "--schema-only", str(big)],
        }
        pruns: dict[str, list[dict]] = {k: [] for k in cmds}
        for _ in range(args.repeats):
            for kind, cmd in cmds.items():
                r = _timed_process(cmd)
                if r["rc"] != 0:
                    raise SystemExit(f"{' '.join(cmd)} exited {r['rc']}")
                pruns[kind].append(r)
        pres = {k: _summarise(v) for k, v in pruns.items()}
        _print_pair(
            "process",
            {"stdlib": "python stdlib_loop.py FILE", "llmft": "llmft validate --schema-only"},
            pres,
            big_mb,
        )
        wall, cpu, wall_med, cpu_med = _ratios(pres["stdlib"], pres["llmft"])
        print(
            f"process     RATIO llmft/stdlib on {big_mb:.0f} MB: {wall:.2f}x wall (headline; "
            f"goal >= 2x), {cpu:.2f}x CPU  [medians: {wall_med:.2f}x wall, {cpu_med:.2f}x CPU]"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
