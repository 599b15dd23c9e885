"""Requests/s through the pure-ASGI ConcurrencyLimit vs no middleware vs a BaseHTTPMiddleware.

The obvious alternative is a Starlette ``BaseHTTPMiddleware`` holding an ``asyncio.Semaphore(3)``
around ``call_next``. This script serves one trivial FastAPI endpoint three ways, each with
the same uvicorn settings in its own process, loads them with ``wrk`` on 127.0.0.1
(a threaded Python client if wrk is missing; it says so), interleaving the variants over a
few rounds, and prints the median rate of each and the ratios.

Targets: limiter >= 0.95 x no middleware; limiter >= 2 x the BaseHTTPMiddleware one.

    python tests/benchmarks/bench_limiter.py [--duration 5] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

VARIANTS = ("none", "limiter", "basehttp")


def build_app(variant: str) -> Any:
    import asyncio

    from fastapi import FastAPI
    from starlette.middleware.base import BaseHTTPMiddleware

    from mpsctl.server.limiter import ConcurrencyLimit

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    if variant == "limiter":
        # queue large enough that no request is refused: same work as the semaphore's queue
        return ConcurrencyLimit(app, max_concurrent=3, max_queue=1024, queue_timeout=30)
    if variant == "basehttp":
        semaphore = asyncio.Semaphore(3)

        async def limit(request: Any, call_next: Any) -> Any:
            async with semaphore:
                return await call_next(request)

        app.add_middleware(BaseHTTPMiddleware, dispatch=limit)
    return app


def serve(variant: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        build_app(variant), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _pin(cpu: int | None) -> Any:
    """A preexec_fn pinning the child to one CPU, so server and load never share a core."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


SERVER_CPU = _cpus()[0] if len(_cpus()) >= 2 else None
LOAD_CPU = _cpus()[1] if len(_cpus()) >= 2 else None


def run_wrk(port: int, duration: float, connections: int) -> tuple[float, int]:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:g}s",
         f"http://127.0.0.1:{port}/ping"],
        capture_output=True, text=True, check=True, preexec_fn=_pin(LOAD_CPU),
    ).stdout  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, int(bad.group(1)) if bad else 0


def run_python_client(port: int, duration: float, connections: int) -> tuple[float, int]:
    counts = [0] * connections
    errors = [0] * connections
    stop = time.monotonic() + duration

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            conn.request("GET", "/ping")
            response = conn.getresponse()
            response.read()
            counts[i] += 1
            errors[i] += response.status != 200

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / duration, sum(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    wrk = shutil.which("wrk")
    load = run_wrk if wrk else run_python_client
    print(f"load generator: {'wrk (' + wrk + ')' if wrk else 'Python threads (wrk not found)'}")
    print(f"{args.connections} connections, {args.duration:g} s x {args.rounds} rounds per variant")
    impl = [name for name in ("httptools", "uvloop") if importlib.util.find_spec(name)]
    print(
        f"uvicorn parser/loop: {', '.join(impl) or 'h11 + asyncio (pip install uvicorn[standard])'}"
    )
    if SERVER_CPU is not None:
        print(f"server pinned to CPU {SERVER_CPU}, load generator to CPU {LOAD_CPU}")
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for variant in VARIANTS:
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", variant, "--port", str(port)],
                preexec_fn=_pin(SERVER_CPU),
            )
            servers[variant] = (proc, port)
        for _proc, port in servers.values():
            wait_ready(port)
        for _ in range(args.rounds):
            for variant in VARIANTS:
                rate, bad = load(servers[variant][1], args.duration, args.connections)
                rates[variant].append(rate)
                print(f"  {variant:8} {rate:10.0f} req/s  non-2xx: {bad}")
    finally:
        for proc, _port in servers.values():
            proc.terminate()
            proc.wait(10)
    median = {v: statistics.median(r) for v, r in rates.items()}
    print("median req/s: " + ", ".join(f"{v} {median[v]:.0f}" for v in VARIANTS))
    vs_none = median["limiter"] / median["none"]
    vs_basehttp = median["limiter"] / median["basehttp"]
    print(f"limiter / no middleware = {vs_none:.3f}  (target >= 0.95)")
    print(f"limiter / BaseHTTPMiddleware+Semaphore(3) = {vs_basehttp:.2f}x  (target >= 2x)")


if __name__ == "__main__":
    main()
