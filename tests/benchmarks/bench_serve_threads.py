"""Query latency of the demo service at 1 thread, 2 threads and torch's default, with one
competing busy loop on the machine (the ``[serve] threads`` default comes from this).

    python tests/benchmarks/bench_serve_threads.py [--queries 9] [--settings 1,2,0]

Starts one ``mpsctl serve --demo`` per setting (``MPSCTL_SERVE_THREADS``; 0 is torch's
default, one thread per core) and one ``while True: pass`` process, then sends the same
question to each service in turn (interleaved, a 0.3 s pause between queries so one
service's spinning threads do not land on the next one's query). Prints min / median /
max latency per setting. Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mpsctl.client import ServiceClient, read_token  # noqa: E402
from mpsctl.settings import load_settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402

QUESTION = "工商银行"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=9)
    parser.add_argument("--settings", default="1,2,0", help="serve.threads values (0: default)")
    parser.add_argument("--no-busy", action="store_true", help="without the competing loop")
    args = parser.parse_args()
    values = [int(v) for v in args.settings.split(",")]
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MPSCTL_HOME": home}
        env.pop("MPSCTL_CONFIG", None)
        subprocess.run([sys.executable, "-m", "mpsctl", "demo-model", f"{home}/demo-model"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        clients: dict[int, ServiceClient] = {}
        try:
            for value in values:
                port = free_port()
                service_env = {**env, "MPSCTL_SERVE_THREADS": str(value),
                               "MPSCTL_SERVICE_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
                log = open(f"{home}/serve-{value}.log", "wb")  # noqa: SIM115
                started.append(subprocess.Popen(
                    [sys.executable, "-m", "mpsctl", "serve", "--demo"], env=service_env,
                    stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
                settings = load_settings(environ=service_env)
                clients[value] = ServiceClient(settings.service, timeout=120)
            for value, client in clients.items():
                deadline = time.monotonic() + 300
                while not client.health(timeout=1).ok:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"threads={value}: not healthy in 300 s")
                    time.sleep(0.2)
                client.token = read_token(client.service)
                client.query(QUESTION)  # warm-up: first-call costs are not the steady state
            if not args.no_busy:
                started.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
                time.sleep(0.5)
            latencies: dict[int, list[float]] = {v: [] for v in values}
            for _ in range(args.queries):
                for value, client in clients.items():
                    reply = client.query(QUESTION)
                    assert reply.status == 200, reply
                    latencies[value].append(reply.latency_s)
                    time.sleep(0.3)
        finally:
            for client in clients.values():
                client.close()
            for proc in started:
                proc.terminate()
            for proc in started:
                proc.wait(timeout=30)
        for value in values:
            with open(f"{home}/serve-{value}.log", encoding="utf-8") as handle:
                used = [line.strip() for line in handle if "torch CPU threads" in line]
            print(f"threads={value}: service says: {used[0] if used else '?'}")
    busy = "no competing load" if args.no_busy else "one competing busy loop"
    print(f"{args.queries} queries each, interleaved, {busy}, {os.cpu_count()} CPUs")
    for value, times in latencies.items():
        label = "torch default" if value == 0 else f"{value} thread(s)"
        low, mid, high = (x * 1000 for x in (min(times), statistics.median(times), max(times)))
        print(f"  {label:16} min {low:7.0f} ms  median {mid:7.0f} ms  max {high:7.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
