"""Benchmark: ``mpsctl logs --file FILE -n 50`` vs ``tail -n 50 FILE`` on a big log.

Generates a log (default 1 GiB) in a temporary directory (deleted afterwards) and times both
side by side (best of ``--repeat``). Both read only the end of the file; the difference is the
Python interpreter and CLI start, printed separately.

    python tests/benchmarks/bench_logs_tail.py
    python tests/benchmarks/bench_logs_tail.py --size-mib 64
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024


def generate(path: Path, size_mib: int) -> None:
    lines = []
    size = 0
    i = 0
    while size < MIB:
        line = (
            f"2026-01-21 19:{i // 60 % 60:02d}:{i % 60:02d},{i % 1000:03d} INFO app.main: "
            f"query id={i} latency_ms={5 + i % 7} question=工商银行\n"
        ).encode()
        lines.append(line)
        size += len(line)
        i += 1
    block = b"".join(lines)
    with path.open("wb") as handle:
        written = 0
        while written < size_mib * MIB:
            handle.write(block)
            written += len(block)


def best_of(argv: list[str], repeat: int) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        best = min(best, time.perf_counter() - start)
        out = done.stdout
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    mpsctl = shutil.which("mpsctl")
    command = [mpsctl] if mpsctl else [sys.executable, "-m", "mpsctl"]
    with tempfile.TemporaryDirectory(prefix="mpsctl-bench-") as tmp:
        log = Path(tmp) / "backend.log"
        generate(log, args.size_mib)
        print(f"generated {log.stat().st_size / MIB:.0f} MiB")
        tail_s, tail_out = best_of(["tail", "-n", "50", str(log)], args.repeat)
        ours_s, ours_out = best_of([*command, "logs", "--file", str(log), "-n", "50"], args.repeat)
        start_s, _ = best_of([*command, "--version"], args.repeat)
        same = [line.split(" | ", 1)[1] for line in ours_out.splitlines()] == tail_out.splitlines()
        print(f"tail -n 50               {tail_s:7.3f} s")
        print(f"mpsctl logs -n 50        {ours_s:7.3f} s  (same 50 lines: {same})")
        print(f"  of which CLI start     {start_s:7.3f} s  (mpsctl --version)")
        print(f"ratio mpsctl/tail        {ours_s / tail_s:7.1f}x")
        if not same:
            sys.exit("mpsctl printed other lines than tail")


if __name__ == "__main__":
    main()
