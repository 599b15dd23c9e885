"""What mpsctl adds to a start and a stop, measured against the service itself.

    python tests/benchmarks/bench_lifecycle.py [--runs 5] [--fake-runs 9]

Two services, each row from interleaved rounds:

- the reference service, ``mpsctl serve --demo`` (torch, the tiny demo checkpoint, uvicorn),
  started the way ``mpsctl start`` starts it in a temporary MPSCTL_HOME;
- the tests' fake http.server (exits at once on SIGTERM), the floor of what mpsctl costs.

Per round:

- own exit: the same command started by hand, SIGTERM sent by hand, until ``waitpid``
  returns: what the service itself needs to exit;
- stop: ``stop_service()`` wall time; **stop overhead = median stop - median own exit**
  (target <= 50 ms). Also printed: how long stop took to return after the service's
  process exited (a pidfd watcher in this script sees the exit);
- start: ``start_service()`` returns vs the first healthy answer (a thread here polls
  /health every 5 ms with http.client, so the first answer is seen within 5 ms of when
  the service could first give it; target <= 60 ms).

Library calls, in process: the interpreter's own start-up (``python -m mpsctl``) is the same
for any command and is measured by bench_probe.py.
"""

from __future__ import annotations

import argparse
import http.client
import os
import select
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

from mpsctl.control.start import start_service  # noqa: E402
from mpsctl.control.stop import stop_service  # noqa: E402
from mpsctl.settings import Settings, load_settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.control.fakes import config_text, fake_command, write_fake_service  # noqa: E402


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
                            stderr=subprocess.DEVNULL)  # fmt: skip
    wait_healthy(port)
    began = time.perf_counter()
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait()
    return time.perf_counter() - began


def measure(
    label: str, settings: Settings, argv: list[str], env: dict[str, str], cwd: Path, runs: int
) -> dict[str, list[float]]:
    port = settings.service.port
    rows: dict[str, list[float]] = {"own": [], "stop": [], "after_exit": [], "lag": []}
    for i in range(runs):
        rows["own"].append(own_exit_time(argv, port, env, cwd))
        watcher = HealthWatcher(port, settings.service.health_path)
        result = start_service(settings)
        returned = time.perf_counter()
        watcher.close()
        if watcher.first_ok is None or result.pid is None:
            raise SystemExit(f"{label}: started but the watcher saw no healthy answer")
        rows["lag"].append(returned - watcher.first_ok)
        exited = exit_watcher(result.pid)
        began = time.perf_counter()
        stopped = stop_service(settings)
        ended = time.perf_counter()
        assert stopped.status == "stopped", stopped
        rows["stop"].append(ended - began)
        seen = exited()
        if seen is not None:
            rows["after_exit"].append(ended - seen)
        print(f"  {label} round {i + 1}/{runs} done", file=sys.stderr)
    return rows


def report(label: str, rows: dict[str, list[float]]) -> bool:
    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    def lo(values: list[float]) -> float:
        return min(values) * 1000

    overhead = ms(rows["stop"]) - ms(rows["own"])
    print(f"{label}: {len(rows['stop'])} interleaved rounds (min / median ms)")
    print(f"  own exit after SIGTERM:        {lo(rows['own']):7.1f} / {ms(rows['own']):7.1f}")
    print(f"  stop_service():                {lo(rows['stop']):7.1f} / {ms(rows['stop']):7.1f}")
    print(f"  stop overhead (median-median):           {overhead:7.1f}   (target <= 50)")
    if rows["after_exit"]:
        after = rows["after_exit"]
        print(f"  stop returned after the exit:  {lo(after):7.1f} / {ms(after):7.1f}")
    print(f"  start return after healthy:    {lo(rows['lag']):7.1f} / {ms(rows['lag']):7.1f}"
          "   (target <= 60)")  # fmt: skip
    return overhead <= 50 and ms(rows["lag"]) <= 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds on the reference service")
    parser.add_argument("--fake-runs", type=int, default=9, help="rounds on the fake service")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        saved = dict(os.environ)
        os.environ.pop("MPSCTL_CONFIG", None)
        os.environ.pop("MPSCTL_SERVICE_URL", None)
        if args.runs:
            # the reference service: no config file, mpsctl's own `serve --demo`
            os.environ["MPSCTL_HOME"] = str(work / "home")
            port = free_port()
            os.environ["MPSCTL_SERVICE_URL"] = f"http://127.0.0.1:{port}"
            settings = load_settings()
            subprocess.run([sys.executable, "-m", "mpsctl", "demo-model",
                            str(settings.home / "demo-model")], check=True,
                           capture_output=True)  # fmt: skip
            argv = list(settings.service.command)
            real = measure("reference service (serve --demo)", settings, argv,
                           dict(os.environ), settings.service.workdir, args.runs)  # fmt: skip
            ok = report("reference service (serve --demo)", real) and ok
        if args.fake_runs:
            os.environ.clear()
            os.environ.update(saved)
            os.environ["MPSCTL_HOME"] = str(work / "fake-home")
            script = write_fake_service(work)
            port = free_port()
            command = fake_command(script, port, "--fake-exit-term")
            config = work / "mpsctl.toml"
            config.write_text(config_text(command, port, work))
            os.environ["MPSCTL_CONFIG"] = str(config)
            fake = measure("fake http.server", load_settings(), command, dict(os.environ), work,
                           args.fake_runs)  # fmt: skip
            ok = report("fake http.server", fake) and ok
    print(f"python {sys.version.split()[0]}, {sys.platform}; {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
