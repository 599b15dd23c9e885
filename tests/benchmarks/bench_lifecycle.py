"""What ``mpsctl stop`` and ``mpsctl start`` add, as typed, on the reference service.

    python tests/benchmarks/bench_lifecycle.py [--runs 10] [--library-runs 3]

The service is the reference one, ``mpsctl serve --demo`` (torch, the tiny demo
checkpoint, uvicorn) in a temporary MPSCTL_HOME with no settings file. Commands run as a
person runs them: a new process from invocation to return (the venv's ``mpsctl`` script),
with bytecode files present (a private PYTHONPYCACHEPREFIX, written by a warm-up run, so a
machine that disables bytecode writing still measures the installed case).

Each round, interleaved (noise hits every row alike):

- **own exit**: the service's own command started by hand, healthy, SIGTERM sent by hand,
  until it is reaped: what the service itself needs to exit;
- **mpsctl start**: a thread here polls /health every 5 ms (http.client, a fresh
  connection each time); **start lag** = when ``mpsctl start`` returned - the first
  healthy answer the thread saw (target <= 60 ms in at least 9 of 10 runs);
- **mpsctl stop**: invocation to return; **stop overhead** = median stop - median own exit
  (target <= 50 ms). Also printed: how long after the service's process exited (a pidfd
  here sees it) ``mpsctl stop`` returned.

Second rows: the library calls ``start_service()`` / ``stop_service()`` in this process
(no interpreter start, no imports), ``--library-runs`` rounds; 0 skips them.
"""

from __future__ import annotations

import argparse
import http.client
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.conftest import free_port  # noqa: E402

STOP_GOAL_MS = 50.0
START_GOAL_MS = 60.0


class HealthWatcher:
    """Polls GET /health every 5 ms from a thread; ``first_ok`` is when it first got 200."""

    def __init__(self, port: int, path: str = "/health") -> None:
        self.port, self.path = port, path
        self.first_ok: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                conn.request("GET", self.path)
                if conn.getresponse().status == 200:
                    self.first_ok = time.perf_counter()
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def exit_watcher(pid: int) -> Callable[[], float | None]:
    """The moment ``pid`` exits, seen through a pidfd from a thread; call to read it."""
    fd = os.pidfd_open(pid)
    seen: list[float] = []

    def run() -> None:
        select.select([fd], [], [])
        seen.append(time.perf_counter())
        os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> float | None:
        thread.join(timeout=30)
        return seen[0] if seen else None

    return result


def wait_healthy(port: int, timeout: float = 300.0) -> None:
    watcher = HealthWatcher(port)
    deadline = time.monotonic() + timeout
    while watcher.first_ok is None and time.monotonic() < deadline:
        time.sleep(0.01)
    watcher.close()
    if watcher.first_ok is None:
        raise SystemExit(f"service on port {port} was not healthy within {timeout:g} s")


def own_exit_time(argv: list[str], port: int, env: dict[str, str], cwd: Path) -> float:
    """SIGTERM to a healthy service started by hand: seconds until it is reaped."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    wait_healthy(port)
    began = time.perf_counter()
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait()
    return time.perf_counter() - began


def run(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one command, invocation to return; exits on failure."""
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def pid_of(home: Path) -> int:
    import json

    return int(json.loads((home / "service.pid").read_text())["pid"])


def one_round(mpsctl: list[str], argv: list[str], port: int, env: dict[str, str], cwd: Path,
              home: Path, rows: dict[str, list[float]]) -> None:  # fmt: skip
    rows["own"].append(own_exit_time(argv, port, env, cwd))
    watcher = HealthWatcher(port)
    run([*mpsctl, "start"], env, cwd)
    returned = time.perf_counter()
    watcher.close()
    if watcher.first_ok is None:
        raise SystemExit("mpsctl start returned but the watcher saw no healthy answer")
    rows["lag"].append(returned - watcher.first_ok)
    exited = exit_watcher(pid_of(home))
    rows["stop"].append(run([*mpsctl, "stop"], env, cwd))
    ended = time.perf_counter()
    seen = exited()
    if seen is not None:
        rows["after_exit"].append(ended - seen)


def library_round(port: int, rows: dict[str, list[float]]) -> None:
    from mpsctl.control.start import start_service
    from mpsctl.control.stop import stop_service
    from mpsctl.settings import load_settings

    settings = load_settings()
    watcher = HealthWatcher(port)
    result = start_service(settings)
    returned = time.perf_counter()
    watcher.close()
    if watcher.first_ok is None or result.pid is None:
        raise SystemExit("start_service() returned but the watcher saw no healthy answer")
    rows["lag"].append(returned - watcher.first_ok)
    began = time.perf_counter()
    stopped = stop_service(settings)
    rows["stop"].append(time.perf_counter() - began)
    if stopped.status != "stopped":
        raise SystemExit(f"stop_service(): {stopped.status} {stopped.message}")


def ms(values: list[float]) -> str:
    return f"{min(values) * 1000:7.1f} / {statistics.median(values) * 1000:7.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds of the commands")
    parser.add_argument("--library-runs", type=int, default=3, help="rounds of library calls")
    args = parser.parse_args()
    script = Path(sys.executable).with_name("mpsctl")
    mpsctl = [str(script)] if script.exists() else [sys.executable, "-m", "mpsctl"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = work / "home"
        port = free_port()
        env = {**os.environ, "MPSCTL_HOME": str(home), "PYTHONPYCACHEPREFIX": str(work / "pyc"),
               "MPSCTL_SERVICE_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
        env.pop("MPSCTL_CONFIG", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ.clear()
        os.environ.update(env)  # the library rounds read the same settings
        from mpsctl.settings import load_settings

        settings = load_settings()
        subprocess.run([*mpsctl, "demo-model", str(settings.home / "demo-model")], env=env,
                       check=True, capture_output=True)  # fmt: skip
        argv = list(settings.service.command)
        cwd = settings.service.workdir
        for command in ("start", "stop", "status"):  # warm-up: bytecode, page cache
            subprocess.run([*mpsctl, command], env=env, cwd=cwd, capture_output=True)
        rows: dict[str, list[float]] = {"own": [], "stop": [], "after_exit": [], "lag": []}
        library: dict[str, list[float]] = {"stop": [], "lag": []}
        for i in range(max(args.runs, args.library_runs)):
            if i < args.runs:
                one_round(mpsctl, argv, port, env, cwd, home, rows)
            if i < args.library_runs:
                library_round(port, library)
            print(f"  round {i + 1} done", file=sys.stderr)
        shutil.rmtree(home, ignore_errors=True)
    overhead = (statistics.median(rows["stop"]) - statistics.median(rows["own"])) * 1000
    lags_ok = sum(lag * 1000 <= START_GOAL_MS for lag in rows["lag"])
    print(f"reference service (serve --demo), {len(rows['own'])} interleaved rounds; "
          f"python {sys.version.split()[0]}, {sys.platform}")  # fmt: skip
    print("                                      min / median ms")
    print(f"  own exit after SIGTERM (by hand):   {ms(rows['own'])}")
    print(f"  mpsctl stop (invocation to return): {ms(rows['stop'])}")
    print(f"  stop overhead (median - median):              {overhead:7.1f}"
          f"   goal <= {STOP_GOAL_MS:g}")  # fmt: skip
    if rows["after_exit"]:
        print(f"  stop returned after the exit:       {ms(rows['after_exit'])}")
    print(f"  start return after first healthy:   {ms(rows['lag'])}   "
          f"{lags_ok}/{len(rows['lag'])} <= {START_GOAL_MS:g} (goal: 9 of 10)")  # fmt: skip
    print(f"  start lags, ms: {' '.join(f'{x * 1000:.0f}' for x in rows['lag'])}")
    if library["stop"]:
        print(f"library calls in process, {len(library['stop'])} rounds (second row):")
        print(f"  stop_service():                     {ms(library['stop'])}")
        print(f"  start_service() after healthy:      {ms(library['lag'])}")
    ok = overhead <= STOP_GOAL_MS and lags_ok * 10 >= 9 * len(rows["lag"])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
