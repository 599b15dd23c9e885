"""Start-up cost of `mpsctl probe --json` against the bare interpreter importing the same libraries.

    python tests/benchmarks/bench_probe.py [--runs 15]

Runs both commands alternately in one run (so machine noise hits both alike), prints the
median wall time of each, their ratio (target <= 1.3) and the peak RSS of the probe
(target <= 45 MiB). The probe talks to a URL where nothing listens, so its health check
is a refused connection on 127.0.0.1, the quick path a cron probe takes when the service is down.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

BASELINE = [sys.executable, "-c", "import click, rich.console, rich.table, psutil, requests"]
PROBE = [sys.executable, "-m", "mpsctl", "probe", "--json"]


def run_once(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child, from wait4's own rusage."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss: KiB on Linux, bytes on macOS
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    return elapsed, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MPSCTL_HOME": home, "MPSCTL_SERVICE_URL": "http://127.0.0.1:9"}
        env.pop("MPSCTL_CONFIG", None)
        # as installed: with bytecode. Without it every edited module is compiled on every run,
        # which measures the compiler, not mpsctl (the warm-up run writes the .pyc files).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for argv in (BASELINE, PROBE):  # warm the page cache before measuring
            run_once(argv, env, home)
        base_times, probe_times, probe_peaks = [], [], []
        for _ in range(args.runs):
            base_times.append(run_once(BASELINE, env, home)[0])
            elapsed, peak = run_once(PROBE, env, home)
            probe_times.append(elapsed)
            probe_peaks.append(peak)
    base = statistics.median(base_times)
    probe = statistics.median(probe_times)
    peak_mib = max(probe_peaks) / 1024**2
    print(f"runs each:                 {args.runs}")
    print(f"baseline imports, median:  {base * 1000:.1f} ms")
    print(f"mpsctl probe --json:       {probe * 1000:.1f} ms")
    print(f"ratio probe/baseline:      {probe / base:.2f}  (target <= 1.30)")
    print(f"probe peak RSS:            {peak_mib:.1f} MiB  (target <= 45 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
