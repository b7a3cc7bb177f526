"""Schema-validation throughput: llmft's validator against a plain stdlib ``json.loads`` loop.

Generates Alpaca-like JSONL (unique rows; ~40 % with an ``input``; outputs with a long-tailed
length and paragraph breaks, like the real Alpaca data) in a temporary directory, then:

1. in-process: ``validate_file(..., ValidateConfig(schema_only=True))`` vs
   ``for line in f: json.loads(line)`` on the same file, each in a fresh child process
   (best of ``--repeats``), as MB/s, their ratio and each child's peak RSS;
2. whole process: ``llmft validate --schema-only FILE`` (imports, start-up and all) vs a
   ``python`` script running the stdlib loop, on a larger file, as wall seconds and a ratio.

Usage: ``python bench/validate_throughput.py [--size-mb 120] [--process-size-mb 300]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
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
with open(sys.argv[1], "rb") as f:
    for line in f:
        json.loads(line)
"""


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


def _worker(kind: str, path: str) -> None:
    """Run one measurement in this (fresh) process and print JSON."""
    if kind != "stdlib":  # in-process: imports are not part of this measurement
        from trainer.config import ValidateConfig
        from trainer.validate import validate_file
    t0 = time.perf_counter()
    c0 = time.process_time()
    if kind == "stdlib":
        n = 0
        with open(path, "rb") as f:
            for line in f:
                json.loads(line)
                n += 1
        ok = True
    else:
        s = validate_file(path, ValidateConfig(schema_only=True))
        n, ok = s.lines_read, s.ok
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": dt, "cpu": cpu, "rows": n, "ok": ok, "peak_rss_mb": peak}))


def _child(kind: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def _timed_process(cmd: list[str]) -> tuple[float, int, float, float]:
    """Wall seconds, exit code, peak RSS (MB) and CPU seconds (user + system) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return dt, proc.returncode, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=120.0, help="in-process file size (MB)")
    ap.add_argument("--process-size-mb", type=float, default=300.0, help="whole-process file (MB)")
    ap.add_argument("--repeats", type=int, default=3, help="best of N runs per measurement")
    ap.add_argument("--skip-process", action="store_true", help="only the in-process measurement")
    ap.add_argument("--workdir", default=None, help="where to write the data (default: a temp dir)")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(*args.worker)
        return

    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="llmft-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        data = tmp / "data.jsonl"
        t0 = time.perf_counter()
        rows = generate(data, args.size_mb)
        mb = data.stat().st_size / 1e6
        print(f"generated {mb:.0f} MB, {rows} rows in {time.perf_counter() - t0:.1f}s ({data})")
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for kind in ("stdlib", "llmft"):
                r = _child(kind, data)
                if kind not in best or r["seconds"] < best[kind]["seconds"]:
                    best[kind] = r
        if not best["llmft"]["ok"] or best["llmft"]["rows"] != rows:
            raise SystemExit(f"validator did not accept the generated data: {best['llmft']}")
        for kind, label in (("stdlib", "stdlib json.loads loop"), ("llmft", "llmft validate_file")):
            r = best[kind]
            print(
                f"in-process  {label:24s} {mb / r['seconds']:7.1f} MB/s  "
                f"({r['seconds']:.2f}s wall, {r['cpu']:.2f}s CPU, peak RSS {r['peak_rss_mb']:.0f} MB)"
            )
        ratio = best["stdlib"]["seconds"] / best["llmft"]["seconds"]
        cpu_ratio = best["stdlib"]["cpu"] / best["llmft"]["cpu"]
        print(
            f"in-process  ratio llmft/stdlib: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU (goal >= 3x)"
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
        pbest: dict[str, tuple[float, int, float, float]] = {}
        for _ in range(args.repeats):
            for kind, cmd in cmds.items():
                r = _timed_process(cmd)
                if r[1] != 0:
                    raise SystemExit(f"{' '.join(cmd)} exited {r[1]}")
                if kind not in pbest or r[0] < pbest[kind][0]:
                    pbest[kind] = r
        for kind, label in (
            ("stdlib", "python stdlib loop script"),
            ("llmft", "llmft validate --schema-only"),
        ):
            dt, _, rss, cpu = pbest[kind]
            print(
                f"process     {label:30s} {dt:6.2f}s wall, {cpu:6.2f}s CPU  "
                f"{big_mb / dt:7.1f} MB/s  (peak RSS {rss:.0f} MB)"
            )
        pratio = pbest["stdlib"][0] / pbest["llmft"][0]
        pcpu = pbest["stdlib"][3] / pbest["llmft"][3]
        print(
            f"process     ratio llmft/stdlib on {big_mb:.0f} MB: {pratio:.2f}x wall, "
            f"{pcpu:.2f}x CPU (goal >= 2x)"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
