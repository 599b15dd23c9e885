"""``/health`` latency under protocol-level attacks, next to an idle baseline, for two servers.

Serves the reference service (the tiny demo checkpoint on the CPU) in a child process with an
open-file limit of 256 (macOS's default soft limit), three ways:

- ``httptools``: uvicorn's default protocol when httptools is installed, default settings
  (what ``mpsctl serve`` ran before the bounds);
- ``h11``: uvicorn's h11 protocol, default settings (its 16 KiB head limit, nothing else);
- ``bounded``: ``mpsctl.server.protocol.bounded_config`` (h11, 64 KiB head limit, header
  timeout, connection limit below the open-file limit with the oldest idle closed first),
  after ``raise_open_file_limit`` as ``mpsctl serve`` does.

For each: the median of a few ``/health`` requests while idle, then the worst ``/health``
latency while each attack runs: one client sending a 100 MB header, 300 connections with a
half-sent request head, 300 idle keep-alive connections. A request that fails or takes over
10 s prints as such. Target: every figure of ``bounded`` under 1 s.

    python tests/benchmarks/bench_http_attacks.py [--header-mb 100] [--connections 300]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

OPEN_FILES = 256
VARIANTS = ("httptools", "h11", "bounded")
TIMEOUT = 10.0


def serve(variant: str, model: str, port: int) -> None:
    """Child process: serve the reference service on 127.0.0.1:port."""
    import uvicorn

    from mpsctl.server.app import ServiceConfig, create_service
    from mpsctl.server.model import ModelHolder

    holder = ModelHolder(device="cpu", max_new_tokens=8)
    holder.load(model)
    service = create_service(holder, ServiceConfig(token="bench-token"))
    if variant == "bounded":
        from mpsctl.server.protocol import bounded_config, raise_open_file_limit

        raise_open_file_limit()
        config = bounded_config(service.asgi, "127.0.0.1", port, log_level="critical")
    else:
        config = uvicorn.Config(
            service.asgi, host="127.0.0.1", port=port, http=variant, log_level="critical"
        )
    uvicorn.Server(config).run()


def health(port: int) -> float:
    """Seconds for one GET /health on a new connection; inf if it failed or timed out."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError:
        return float("inf")
    if not answer.startswith(b"HTTP/1.1 200"):
        return float("inf")
    return time.monotonic() - started


def worst_health(port: int, count: int = 5) -> float:
    results = []
    for _ in range(count):
        results.append(health(port))
        time.sleep(0.1)
    return max(results)


@contextlib.contextmanager
def big_header(port: int, megabytes: int) -> Iterator[None]:
    stop = threading.Event()

    def send() -> None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * (1 << 20)
            for _ in range(megabytes):
                if stop.is_set():
                    break
                sock.sendall(chunk)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    time.sleep(0.3)  # the upload is under way
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@contextlib.contextmanager
def many_connections(port: int, count: int, keep_alive: bool) -> Iterator[None]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            except OSError:
                break
            socks.append(sock)
            if keep_alive:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                with contextlib.suppress(OSError):
                    sock.recv(65536)
            else:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        yield
    finally:
        for sock in socks:
            sock.close()


def limit_open_files() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, hard))


def measure(variant: str, model: str, args: argparse.Namespace) -> dict[str, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", variant, "--model", model, "--port", str(port)],
        preexec_fn=limit_open_files,
    )
    try:
        deadline = time.monotonic() + 120
        while health(port) == float("inf"):
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{variant}: the service did not start")
            time.sleep(0.3)
        idle = statistics.median(health(port) for _ in range(10))
        attacks: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
            f"{args.header_mb} MB header": lambda: big_header(port, args.header_mb),
            f"{args.connections} half-open": lambda: many_connections(
                port, args.connections, keep_alive=False
            ),
            f"{args.connections} idle keep-alive": lambda: many_connections(
                port, args.connections, keep_alive=True
            ),
        }
        figures = {"idle (median)": idle}
        for name, attack in attacks.items():
            with attack():
                figures[name] = worst_health(port)
            time.sleep(1)
        return figures
    finally:
        child.terminate()
        child.wait(30)


def shown(seconds: float) -> str:
    return "failed" if seconds == float("inf") else f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--header-mb", type=int, default=100)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.model, args.port)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "demo")
        subprocess.run([sys.executable, "-m", "mpsctl", "demo-model", model], check=True,
                       capture_output=True)  # fmt: skip
        results = {v: measure(v, model, args) for v in VARIANTS}
    print(f"/health latency, worst of 5 (open-file limit {OPEN_FILES})")
    print(f"{'':<28}" + "".join(f"{v:>12}" for v in VARIANTS))
    for name in results["bounded"]:
        cells = (results[v][name] for v in VARIANTS)
        print(f"{name:<28}" + "".join(f"{shown(c):>12}" for c in cells))
    ok = all(v < 1.0 for v in results["bounded"].values())
    print("target (bounded < 1 s under every attack):", "met" if ok else "NOT met")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
