"""Benchmark: ``mpsctl oom FILE --json`` against ``grep -c`` and ``rg -c``, wall and CPU.

Generates logs of ordinary lines with a sparse MPS OOM traceback every ``--every-mib`` MiB
(64 MiB, 256 MiB and 1 GiB by default, plus an empty one and a 512 MiB one for the start-up
figure) in a temporary directory (deleted afterwards), warms the page cache, then runs every
command on every file in interleaved rounds (``--repeat``) and prints min / median wall and
CPU (user + system, children included) per command, the ratios against grep, and the CPU
beyond start-up: (512 MiB log - empty log) per GiB (target <= 0.3 s). The default first pass
is ``rg`` where installed; ``--grep`` adds a row with GNU grep as the first pass
(``MPSCTL_GREP=grep``), ``--python`` the Python first pass (``MPSCTL_GREP=``) with and without
workers (``MPSCTL_OOM_WORKERS=0``), ``--baseline DIR`` the mpsctl found in DIR (another
checkout, via PYTHONPATH), interleaved with the rest for a before/after comparison.

    python tests/benchmarks/bench_oom_scan.py                      # 64, 256, 1024 MiB
    python tests/benchmarks/bench_oom_scan.py --sizes 64 256 --repeat 5 --python --grep
    python tests/benchmarks/bench_oom_scan.py --baseline /tmp/mpsctl-before
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
OOM = (
    "2026-01-21 {hour:02d}:{minute:02d}:40,512 ERROR app.services.query_service: query failed\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/mvp/app/services/query_service.py", line 88, in answer\n'
    "    output = self.model.generate(**inputs, max_new_tokens=128)\n"
    "RuntimeError: MPS backend out of memory (MPS allocated: 20.14 GiB, other allocations: "
    "384.00 KiB, max allowed: 20.13 GiB). Tried to allocate 6.00 KiB on private pool. Use "
    "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations "
    "(may cause system failure).\n"
)


def ordinary_mib() -> bytes:
    """One MiB of realistic access/app log lines (whole lines, padded to exactly 1 MiB)."""
    lines = []
    size = 0
    i = 0
    while True:
        line = (
            f"2026-01-21 19:{i // 60 % 60:02d}:{i % 60:02d},{i % 1000:03d} INFO uvicorn.access: "
            f'127.0.0.1:{40000 + i % 20000} - "POST /api/v1/query HTTP/1.1" 200 OK '
            f"latency_ms={5 + i % 7} tokens={i % 128} question=工商银行\n"
        ).encode()
        if size + len(line) > MIB:
            break
        lines.append(line)
        size += len(line)
        i += 1
    block = b"".join(lines)
    return block + b"#" * (MIB - len(block) - 1) + b"\n"


def generate(path: Path, size_mib: int, every_mib: int) -> int:
    block = ordinary_mib()
    events = 0
    with path.open("wb") as handle:
        for n in range(size_mib):
            handle.write(block)
            if n % every_mib == every_mib // 2:
                # each failure at its own time: equal failures seconds apart are one event
                stamp = {"hour": events // 60 % 24, "minute": events % 60}
                handle.write(OOM.replace("{hour:02d}:{minute:02d}", "{:02d}:{:02d}".format(
                    stamp["hour"], stamp["minute"])).encode())  # fmt: skip
                events += 1
    return events


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall and CPU seconds of one run, and its stdout."""
    start, cpu_start = time.perf_counter(), _children_cpu()
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})}
    )
    return time.perf_counter() - start, _children_cpu() - cpu_start, done.stdout


def row(name: str, walls: list[float], cpus: list[float]) -> str:
    return (
        f"  {name:<28} wall min {min(walls):7.3f} med {statistics.median(walls):7.3f} s"
        f"   cpu min {min(cpus):7.3f} med {statistics.median(cpus):7.3f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], metavar="MIB")
    parser.add_argument("--every-mib", type=int, default=16, help="one OOM per this many MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python", action="store_true", help="also time the Python pass")
    parser.add_argument("--grep", action="store_true", help="also time grep as the first pass")
    parser.add_argument("--baseline", metavar="DIR", help="also time the mpsctl in DIR")
    parser.add_argument("--files", type=int, default=50,
                        help="many files: this many logs of --file-mib each vs one log of "
                             "their total size (0: skip)")  # fmt: skip
    parser.add_argument("--file-mib", type=int, default=2)
    args = parser.parse_args()
    mpsctl = shutil.which("mpsctl")
    command = [mpsctl] if mpsctl else [sys.executable, "-m", "mpsctl"]
    runs: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "grep -c": (["grep", "-c", "out of memory"], None),
    }
    if shutil.which("rg"):
        runs["rg -c"] = (["rg", "-c", "out of memory"], None)
    runs["mpsctl oom --json"] = ([*command, "oom", "--json"], None)
    if args.grep:
        runs["mpsctl oom (grep pass)"] = ([*command, "oom", "--json"], {"MPSCTL_GREP": "grep"})
    if args.baseline:
        runs["mpsctl oom (baseline)"] = (
            [*command, "oom", "--json"], {"PYTHONPATH": args.baseline},
        )  # fmt: skip
    if args.python:
        runs["mpsctl oom (python pass)"] = ([*command, "oom", "--json"], {"MPSCTL_GREP": ""})
        runs["mpsctl oom (python, 1 proc)"] = (
            [*command, "oom", "--json"], {"MPSCTL_GREP": "", "MPSCTL_OOM_WORKERS": "0"},
        )  # fmt: skip
    sizes = sorted({0, 512, *args.sizes})
    with tempfile.TemporaryDirectory(prefix="mpsctl-bench-") as tmp:
        logs: dict[int, tuple[Path, int]] = {}
        for size in sizes:
            log = Path(tmp) / f"error_{size}.log"
            logs[size] = (log, generate(log, size, args.every_mib))
            subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=True)
        walls: dict[tuple[int, str], list[float]] = {}
        cpus: dict[tuple[int, str], list[float]] = {}
        for _ in range(args.repeat):  # interleaved: each round runs everything once
            for size in sizes:
                log, events = logs[size]
                for name, (argv, env) in runs.items():
                    wall, cpu, out = timed([*argv, str(log)], env)
                    walls.setdefault((size, name), []).append(wall)
                    cpus.setdefault((size, name), []).append(cpu)
                    if name.startswith("mpsctl") and json.loads(out)["count"] != events:
                        sys.exit(f"{name}: expected {events} events in {size} MiB")
        for size in sizes:
            print(f"{size} MiB ({logs[size][1]} OOM events)")
            for name in runs:
                print(row(name, walls[(size, name)], cpus[(size, name)]))
            if size:
                grep_wall = statistics.median(walls[(size, "grep -c")])
                grep_cpu = statistics.median(cpus[(size, "grep -c")])
                ours = (size, "mpsctl oom --json")
                print(f"  ratio mpsctl/grep (median)   wall "
                      f"{statistics.median(walls[ours]) / grep_wall:6.2f}x   cpu "
                      f"{statistics.median(cpus[ours]) / max(grep_cpu, 1e-3):6.2f}x")  # fmt: skip
        for name in runs:
            if name.startswith("mpsctl"):
                beyond = min(cpus[(512, name)]) - min(cpus[(0, name)])
                print(f"CPU beyond start-up, {name}: {beyond / 0.5:.3f} s per GiB "
                      "(512 MiB log minus an empty one, min of runs; target <= 0.3)")  # fmt: skip
        if args.files:
            many_files(Path(tmp), [*command, "oom", "--json"], args)


def many_files(tmp: Path, argv: list[str], args: argparse.Namespace) -> None:
    """N dated logs vs one log of their total size: what each extra file costs."""
    folder = tmp / "many"
    folder.mkdir()
    logs = []
    block = ordinary_mib()
    for n in range(args.files):
        log = folder / f"error-{n:03d}.log"
        oom = OOM.replace("{hour:02d}:{minute:02d}", f"{n // 60 % 24:02d}:{n % 60:02d}")
        # one OOM in each, each at its own time (equal failures close in time are one event)
        log.write_bytes(block * (args.file_mib - 1) + oom.encode() + block)
        logs.append(str(log))
    one = folder / "all.log"
    with one.open("wb") as out:
        for log in logs:
            out.write(Path(log).read_bytes())
    subprocess.run(["cat", *logs, str(one)], stdout=subprocess.DEVNULL, check=True)
    rows: dict[str, tuple[list[float], list[float]]] = {"many": ([], []), "one": ([], [])}
    for _ in range(args.repeat):
        for name, files in (("many", logs), ("one", [str(one)])):
            wall, cpu, out = timed([*argv, *files])
            if json.loads(out)["count"] != args.files:
                sys.exit(f"{name}: expected {args.files} events")
            rows[name][0].append(wall)
            rows[name][1].append(cpu)
    print(f"{args.files} logs of {args.file_mib} MiB vs one log of {args.files * args.file_mib} "
          "MiB (the same lines)")  # fmt: skip
    print(row(f"{args.files} files", *rows["many"]))
    print(row("one file", *rows["one"]))
    extra_wall = statistics.median(rows["many"][0]) - statistics.median(rows["one"][0])
    extra_cpu = min(rows["many"][1]) - min(rows["one"][1])
    print(f"  per extra file: wall {extra_wall / args.files * 1000:+.2f} ms (median), CPU "
          f"{extra_cpu / args.files * 1000:+.2f} ms (min)  (target <= 1 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
