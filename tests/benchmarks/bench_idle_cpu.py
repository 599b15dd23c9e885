"""CPU that `mpsctl logs -f` and `mpsctl watch` burn while nothing happens.

    python tests/benchmarks/bench_idle_cpu.py [--seconds 30] [--rounds 2] [--before DIR]

``logs -f`` follows a glob matching 50 dated files (``tail -F`` on the newest one is the
reference); ``watch`` runs on a pseudo-terminal (its dashboard, not JSON lines) against a URL
where nothing listens. Each is started, left 3 s to settle, then its CPU time (user +
system, from ``/proc/PID/stat``, Linux) is read over ``--seconds``. ``--before DIR`` also
runs the same commands from another checkout's package directory (``git archive REV mpsctl
| tar -x -C DIR``), interleaved. Prints min / median CPU seconds per 30 s.
"""

from __future__ import annotations

import argparse
import os
import pty
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def measure(argv: list[str], env: dict[str, str], cwd: Path, seconds: float, tty: bool) -> float:
    if tty:
        main_fd, child_fd = pty.openpty()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=child_fd, stdout=child_fd,
                                stderr=child_fd)  # fmt: skip
        os.close(child_fd)

        def drain() -> None:  # a terminal nobody reads would block the writer
            while True:
                try:
                    if not os.read(main_fd, 65536):
                        return
                except OSError:
                    return

        threading.Thread(target=drain, daemon=True).start()
    else:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(3)
        before = cpu_seconds(proc.pid)
        time.sleep(seconds)
        used = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait()
        if tty:
            os.close(main_fd)
    return used * 30 / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, help="another checkout's root (holds mpsctl/)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        logs = work / "logs"
        logs.mkdir()
        for day in range(1, 51):
            (logs / f"app_2026-{1 + day // 29:02d}-{1 + day % 28:02d}.log").write_text("x\n")
        newest = sorted(logs.iterdir())[-1]
        config = work / "mpsctl.toml"
        config.write_text(f'[service]\nworkdir = "{work}"\nlog_globs = ["logs/app_*.log"]\n'
                          'url = "http://127.0.0.1:9"\n')  # fmt: skip
        base = {**os.environ, "MPSCTL_CONFIG": str(config), "MPSCTL_HOME": str(work / "home"),
                "COLUMNS": "120", "LINES": "60"}  # fmt: skip
        trees = {"now": REPO}
        if args.before:
            trees["before"] = args.before
        mpsctl = [sys.executable, "-m", "mpsctl"]
        commands = {
            "logs -f (50 files)": ([*mpsctl, "logs", "-f", "-n", "1"], False),
            "watch (terminal)": ([*mpsctl, "watch"], True),
        }
        rows: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for label, (argv, tty) in commands.items():
                for tree, root in trees.items():
                    env = {**base, "PYTHONPATH": str(root)}
                    used = measure(argv, env, work, args.seconds, tty)
                    rows.setdefault(f"{label} [{tree}]", []).append(used)
            if shutil.which("tail"):
                used = measure(["tail", "-F", str(newest)], base, work, args.seconds, False)
                rows.setdefault("tail -F (reference)", []).append(used)
    print(f"CPU seconds per 30 s idle, {args.rounds} round(s) of {args.seconds:g} s, interleaved")
    for label, values in rows.items():
        print(f"  {label:32} min {min(values):6.3f}  median {statistics.median(values):6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
