"""What mpsctl adds to a start and a stop, measured against the service itself.

    python tests/benchmarks/bench_lifecycle.py [--runs 9]

The service is the tests' fake http.server (exits at once on SIGTERM). In one run:

- stop overhead: ``stop_service()`` wall time minus the service's own exit time (SIGTERM
  sent by hand to an identical process, until ``waitpid`` returns). Target <= 100 ms.
- start return lag: from the service's first healthy answer (the service writes the time
  it answered) to ``start_service()`` returning. Target <= 150 ms.

Medians are printed. Library calls, in process: the interpreter's own start-up
(``python -m mpsctl``, ~0.3-0.5 s) is the same for any command and is measured by
bench_probe.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mpsctl.client import ServiceClient  # noqa: E402
from mpsctl.control.start import start_service  # noqa: E402
from mpsctl.control.stop import stop_service  # noqa: E402
from mpsctl.settings import load_settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.control.fakes import config_text, fake_command, write_fake_service  # noqa: E402


def own_exit_time(script: Path, port: int) -> float:
    """SIGTERM to a healthy fake service, by hand: seconds until it is reaped."""
    proc = subprocess.Popen(fake_command(script, port, "--fake-exit-term"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    client = ServiceClient(load_settings().service)
    while not client.health(timeout=1).ok:
        time.sleep(0.01)
    client.close()
    began = time.perf_counter()
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait()
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["MPSCTL_HOME"] = str(work / "home")
        script = write_fake_service(work)
        port = free_port()
        config = work / "mpsctl.toml"
        config.write_text(config_text(fake_command(script, port, "--fake-exit-term"), port, work))
        os.environ["MPSCTL_CONFIG"] = str(config)
        healthy_file = work / "first-healthy"
        os.environ["FAKE_HEALTHY_FILE"] = str(healthy_file)
        settings = load_settings()

        own, stops, lags, startups = [], [], [], []
        for _ in range(args.runs):
            own.append(own_exit_time(script, port))
            healthy_file.unlink(missing_ok=True)
            result = start_service(settings)
            returned = time.time()
            lags.append(returned - float(healthy_file.read_text()))
            startups.append(result.startup_s or 0.0)
            began = time.perf_counter()
            stopped = stop_service(settings)
            stops.append(time.perf_counter() - began)
            assert stopped.status == "stopped", stopped

    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    overhead = ms(stops) - ms(own)
    print(f"runs: {args.runs} (python {sys.version.split()[0]}, {sys.platform})")
    print(f"service's own exit after SIGTERM: median {ms(own):7.1f} ms")
    print(f"mpsctl stop_service():            median {ms(stops):7.1f} ms")
    print(f"stop overhead:                    {overhead:7.1f} ms   (target <= 100 ms)")
    print(f"start: spawn -> healthy:          median {ms(startups):7.1f} ms")
    print(f"start return after first healthy: median {ms(lags):7.1f} ms   (target <= 150 ms)")
    ok = overhead <= 100 and ms(lags) <= 150
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
