"""Benchmark: ``mpsctl oom FILE --json`` vs ``grep -c 'out of memory' FILE`` on one big log.

Generates a log (default 1 GiB) of ordinary lines with a sparse MPS OOM traceback every
``--every-mib`` MiB in a temporary directory (deleted afterwards), warms the page cache, then
times both commands side by side (best of ``--repeat``) and prints the ratio (target <= 3x).

    python tests/benchmarks/bench_oom_scan.py              # 1 GiB
    python tests/benchmarks/bench_oom_scan.py --size-mib 128
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
OOM = (
    "2026-01-21 19:38:40,512 ERROR app.services.query_service: query failed\n"
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
                handle.write(OOM.encode())
                events += 1
    return events


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best_of(argv: list[str], repeat: int) -> tuple[float, str, float]:
    """Best wall time, the output, and the best CPU time (user + system): on a busy machine
    the CPU ratio is the steadier figure."""
    best, out, cpu = float("inf"), "", float("inf")
    for _ in range(repeat):
        start, cpu_start = time.perf_counter(), _children_cpu()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, _children_cpu() - cpu_start)
        out = done.stdout
    return best, out, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--every-mib", type=int, default=16, help="one OOM per this many MiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    mpsctl = shutil.which("mpsctl")
    command = [mpsctl] if mpsctl else [sys.executable, "-m", "mpsctl"]
    with tempfile.TemporaryDirectory(prefix="mpsctl-bench-") as tmp:
        log = Path(tmp) / "error_2026-01-21.log"
        started = time.perf_counter()
        events = generate(log, args.size_mib, args.every_mib)
        print(f"generated {log.stat().st_size / MIB:.0f} MiB, {events} OOM events "
              f"in {time.perf_counter() - started:.1f} s")  # fmt: skip
        subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        grep_s, grep_out, grep_cpu = best_of(["grep", "-c", "out of memory", str(log)], args.repeat)
        ours_s, ours_out, ours_cpu = best_of([*command, "oom", str(log), "--json"], args.repeat)
        start_s, _, start_cpu = best_of([*command, "--version"], args.repeat)
        found = json.loads(ours_out)["count"]
        print(f"grep -c 'out of memory'  {grep_s:7.3f} s  cpu {grep_cpu:6.3f} s  "
              f"({grep_out.strip()} lines)")  # fmt: skip
        print(f"mpsctl oom --json        {ours_s:7.3f} s  cpu {ours_cpu:6.3f} s  ({found} events)")
        print(f"  of which CLI start     {start_s:7.3f} s  cpu {start_cpu:6.3f} s  (--version)")
        print(f"ratio mpsctl/grep        {ours_s / grep_s:7.2f}x  cpu {ours_cpu / grep_cpu:5.2f}x  "
              "(target <= 3x)")  # fmt: skip
        if found != events:
            sys.exit(f"expected {events} events, mpsctl found {found}")


if __name__ == "__main__":
    main()
