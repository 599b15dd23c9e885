"""Start-up cost of `mpsctl probe --json` and `mpsctl --help` against the bare interpreter.

    python tests/benchmarks/bench_probe.py [--runs 15] [--no-service]

The floor is exactly ``python -c "import click, rich, psutil, requests"``: the libraries
mpsctl is built on, imported and nothing done. Each round runs, alternately (so machine
noise hits all alike): the floor; ``probe --json`` where nothing listens (a refused
connection on 127.0.0.1, the quick path a cron probe takes when the service is down);
``mpsctl --help``; and ``probe --json`` against the reference service (``mpsctl start``
with the built-in demo model in a temporary MPSCTL_HOME, stopped at the end). Prints
min/median of each, the median ratios to the floor (targets: probe down <= 1.0, probe up
<= 1.3, --help <= 1.1) and the probe's peak RSS (target <= 45 MiB).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

FLOOR = [sys.executable, "-c", "import click, rich, psutil, requests"]
PROBE = [sys.executable, "-m", "mpsctl", "probe", "--json"]
HELP = [sys.executable, "-m", "mpsctl", "--help"]


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_env(home: str) -> dict[str, str]:
    env = {**os.environ, "MPSCTL_HOME": home}
    env.pop("MPSCTL_CONFIG", None)
    # as installed: with bytecode. Without it every edited module is compiled on every run,
    # which measures the compiler, not mpsctl (the warm-up run writes the .pyc files).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-service", action="store_true", help="skip the running-service row")
    parser.add_argument("--before", metavar="DIR",
                        help="also time another checkout's package (git archive REV mpsctl | "
                             "tar -x -C DIR): rows marked [before]")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as down_home, tempfile.TemporaryDirectory() as up_home:
        down = {**base_env(down_home), "MPSCTL_SERVICE_URL": "http://127.0.0.1:9"}
        up = {**base_env(up_home), "MPSCTL_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}
        rows: dict[str, tuple[list[str], dict[str, str], str]] = {
            "floor": (FLOOR, down, down_home),
            "probe --json, no service": (PROBE, down, down_home),
            "mpsctl --help": (HELP, down, down_home),
        }
        if args.before:
            old = {**down, "PYTHONPATH": args.before}
            rows["probe --json, no service [before]"] = (PROBE, old, down_home)
            rows["mpsctl --help [before]"] = (HELP, old, down_home)
        if not args.no_service:
            started = subprocess.run([sys.executable, "-m", "mpsctl", "start"], env=up,
                                     cwd=up_home, capture_output=True, text=True)  # fmt: skip
            if started.returncode != 0:
                print(f"mpsctl start failed: {started.stderr.strip()}", file=sys.stderr)
                return 1
            rows["probe --json, service up"] = (PROBE, up, up_home)
            if args.before:
                old_up = {**up, "PYTHONPATH": args.before}
                rows["probe --json, service up [before]"] = (PROBE, old_up, up_home)
        try:
            times: dict[str, list[float]] = {name: [] for name in rows}
            peaks: list[int] = []
            for argv, env, cwd in rows.values():  # warm the page cache, write .pyc files
                run_once(argv, env, cwd)
            for _ in range(args.runs):
                for name, (argv, env, cwd) in rows.items():
                    elapsed, peak = run_once(argv, env, cwd)
                    times[name].append(elapsed)
                    if argv is PROBE and "[before]" not in name:
                        peaks.append(peak)
        finally:
            if not args.no_service:
                subprocess.run([sys.executable, "-m", "mpsctl", "stop"], env=up, cwd=up_home,
                               capture_output=True)  # fmt: skip
    floor = statistics.median(times["floor"])
    targets = {"probe --json, no service": 1.0, "mpsctl --help": 1.1,
               "probe --json, service up": 1.3}  # fmt: skip
    print(f"runs each: {args.runs} (interleaved; python {sys.version.split()[0]})")
    print(f"{'':36} {'min ms':>8} {'median ms':>10} {'ratio':>6}  target")
    for name, values in times.items():
        median = statistics.median(values)
        target = f"<= {targets[name]:.2f}" if name in targets else ""
        print(f"{name:36} {min(values) * 1000:8.1f} {median * 1000:10.1f} "
              f"{median / floor:6.2f}  {target}")  # fmt: skip
    print(f"probe peak RSS: {max(peaks) / 1024**2:.1f} MiB  (target <= 45 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
