"""Start-up cost of the cron-speed commands, as typed, against the libraries they build on.

    python tests/benchmarks/bench_probe.py [--runs 15] [--processes 2000] [--no-service]

Every row is a new process from invocation to return (the venv's ``mpsctl`` script), with
bytecode files present: a private PYTHONPYCACHEPREFIX, written by a warm-up run, so a machine
that disables bytecode writing still measures the installed case. The floor F4 is exactly
``python -c "import click, rich, psutil, requests"`` in the same venv: mpsctl's libraries,
imported, nothing done. Each round runs every row once, in turn (noise hits all alike):

- ``probe --json``, nothing listening (the cron probe of a stopped service);
- ``status`` and ``stop`` with nothing running (targets <= 0.8x F4);
- ``mpsctl --help``;
- ``probe --json`` against the reference service (``mpsctl start``: the demo model in a
  temporary MPSCTL_HOME), its log written within the hour (target <= 1.0x F4);
- ``probe --json`` with ``service.match`` set to a pattern nothing matches (no pidfile), and
  against the running service (its pidfile), each with the host's own processes and with
  ``--processes`` more sleeping ones: the extra cost per 1,000 processes is printed (a match
  reads each process's command line; the pidfile's tree is read alone where the kernel lists
  children, else with one pass over the process table).

Prints min / median of each, the median ratio to the floor, the targets, and the probe's
peak RSS.
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
from pathlib import Path

FLOOR = [sys.executable, "-c", "import click, rich, psutil, requests"]
_SCRIPT = Path(sys.executable).with_name("mpsctl")
MPSCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mpsctl"]
PROBE = [*MPSCTL, "probe", "--json"]
TARGETS = {
    "probe --json, no service": 1.0,
    "status, nothing running": 0.8,
    "stop, nothing running": 0.8,
    "mpsctl --help": 1.1,
    "probe --json, service up, fresh log": 1.0,
}


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


def base_env(home: str, pycache: str) -> dict[str, str]:
    env = {**os.environ, "MPSCTL_HOME": home, "PYTHONPYCACHEPREFIX": pycache}
    env.pop("MPSCTL_CONFIG", None)
    env.pop("MPSCTL_SERVICE_MATCH", None)
    # as installed: with bytecode. Without it every module is compiled on every run, which
    # measures the compiler, not mpsctl (the warm-up run writes the .pyc files)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def spawn_sleepers(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(["sleep", "3600"]) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--processes",
        type=int,
        default=2000,
        help="extra sleeping processes for the flatness rows (0: skip them)",
    )
    parser.add_argument("--no-service", action="store_true", help="skip the running-service row")
    parser.add_argument("--before", metavar="DIR",
                        help="also time another checkout's package (git archive REV mpsctl | "
                             "tar -x -C DIR): rows marked [before]")  # fmt: skip
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    down_home, up_home, pycache = (str(Path(tmp.name) / n) for n in ("down", "up", "pyc"))
    for directory in (down_home, up_home):
        os.makedirs(directory)
    down = {**base_env(down_home, pycache), "MPSCTL_SERVICE_URL": "http://127.0.0.1:9"}
    up = {**base_env(up_home, pycache), "MPSCTL_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}
    # a pattern no process matches, and no pidfile: every process of the user is looked at
    matching = {**down, "MPSCTL_SERVICE_MATCH": "no-such-service-[0-9]{9}"}
    rows: dict[str, tuple[list[str], dict[str, str], str]] = {
        "floor": (FLOOR, down, down_home),
        "probe --json, no service": (PROBE, down, down_home),
        "status, nothing running": ([*MPSCTL, "status"], down, down_home),
        "stop, nothing running": ([*MPSCTL, "stop"], down, down_home),
        "mpsctl --help": ([*MPSCTL, "--help"], down, down_home),
    }
    if args.before:
        old = {**down, "PYTHONPATH": args.before}
        rows["probe --json, no service [before]"] = (PROBE, old, down_home)
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        if not args.no_service:
            started = subprocess.run([*MPSCTL, "start"], env=up, cwd=up_home,
                                     capture_output=True, text=True)  # fmt: skip
            if started.returncode != 0:
                print(f"mpsctl start failed: {started.stderr.strip()}", file=sys.stderr)
                return 1
            rows["probe --json, service up, fresh log"] = (PROBE, up, up_home)
            if args.before:
                old_up = {**up, "PYTHONPATH": args.before}
                rows["probe --json, service up [before]"] = (PROBE, old_up, up_home)
        times: dict[str, list[float]] = {name: [] for name in rows}
        peaks: list[int] = []
        flat: dict[str, list[float]] = {}
        for argv, env, cwd in rows.values():  # warm the page cache, write .pyc files
            run_once(argv, env, cwd)
        for _ in range(args.runs):
            for name, (argv, env, cwd) in rows.items():
                if name.startswith("probe --json, service up") and not args.no_service:
                    log = Path(up_home) / "service.log"
                    os.utime(log)  # written just now: the probe reads what is new in it
                elapsed, peak = run_once(argv, env, cwd)
                times[name].append(elapsed)
                if argv is PROBE and "[before]" not in name:
                    peaks.append(peak)
        if args.processes:
            host = len(os.listdir("/proc")) if os.path.isdir("/proc") else 0
            label_few = "probe --json, match, host processes"
            label_many = f"probe --json, match, +{args.processes} processes"
            cases = [(label_few, label_many, matching, down_home)]
            if not args.no_service:  # the usual case: the pidfile names the service
                cases.append(("probe --json, service up, host processes",
                              f"probe --json, service up, +{args.processes} processes",
                              up, up_home))  # fmt: skip
            run_once(PROBE, matching, down_home)
            for _ in range(args.runs):
                for few_label, _many, env, cwd in cases:
                    flat.setdefault(few_label, []).append(run_once(PROBE, env, cwd)[0])
            sleepers = spawn_sleepers(args.processes)
            for _ in range(args.runs):
                for _few, many_label, env, cwd in cases:
                    flat.setdefault(many_label, []).append(run_once(PROBE, env, cwd)[0])
    finally:
        for proc in sleepers:
            proc.kill()
        for proc in sleepers:
            proc.wait()
        if not args.no_service:
            subprocess.run([*MPSCTL, "stop"], env=up, cwd=up_home, capture_output=True)
        tmp.cleanup()
    floor = statistics.median(times["floor"])
    ok = True
    print(f"runs each: {args.runs} (interleaved; python {sys.version.split()[0]}, "
          f"{sys.platform})")  # fmt: skip
    print(f"{'':44} {'min ms':>8} {'median ms':>10} {'ratio':>6}  target")
    for name, values in {**times, **flat}.items():
        median = statistics.median(values)
        target = f"<= {TARGETS[name]:.2f}" if name in TARGETS else ""
        if name in TARGETS and median / floor > TARGETS[name]:
            ok, target = False, target + "  MISSED"
        print(f"{name:44} {min(values) * 1000:8.1f} {median * 1000:10.1f} "
              f"{median / floor:6.2f}  {target}")  # fmt: skip
    pairs = [(name, name.replace("host processes", f"+{args.processes} processes"))
             for name in flat if name.endswith("host processes")]  # fmt: skip
    for few_name, many_name in pairs:
        few, many = statistics.median(flat[few_name]), statistics.median(flat[many_name])
        per_1000 = (many - few) / args.processes * 1000 * 1000
        what = "match probe" if "match" in few_name else "service probe (pidfile)"
        print(f"{what}, extra per 1,000 processes: {per_1000:+.1f} ms (host had ~{host} "
              f"/proc entries before the {args.processes} sleepers)")  # fmt: skip
    if pairs and sys.platform.startswith("linux"):
        me = os.getpid()
        listed = os.path.exists(f"/proc/{me}/task/{me}/children")
        how = (
            "yes: the service's tree is read alone"
            if listed
            else "no (CONFIG_PROC_CHILDREN off): the tree takes one pass over the table"
        )
        print(f"kernel children lists (/proc/PID/task/TID/children): {how}")
    print(f"probe peak RSS: {max(peaks) / 1024**2:.1f} MiB  (target <= 45 MiB)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
