"""Helpers for the monitoring tests: a real alert receiver and a real stand-in service.

- :class:`Receiver`: an ``http.server`` on 127.0.0.1:0 in a thread that records every POST
  (body parsed as JSON) and answers with the next status of ``statuses`` (then 200).
- :func:`start_stub_service`: a real subprocess answering ``GET /health`` with a fixed JSON
  body, whose command line carries a unique marker so ``service.match`` finds it. It stands
  in for a service whose MPS memory report cannot be produced on Linux (no ``torch.mps``);
  the report follows the documented ``mpsctl.memory/1`` format (our own format).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    url: str
    posts: list[Any] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    #: when each post arrived (``time.monotonic()``), in the order of ``posts``
    arrivals: list[float] = field(default_factory=list)


@contextmanager
def alert_receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    receiver = Receiver(url="", statuses=list(statuses or []))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with lock:
                receiver.posts.append(json.loads(body))
                receiver.arrivals.append(time.monotonic())
                status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


_STUB = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
BODY = sys.argv[2].encode()
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a):
        pass
server = HTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@dataclass(frozen=True)
class StubService:
    url: str
    marker: str
    proc: subprocess.Popen[str]

    def config(self, extra: str = "") -> str:
        """An mpsctl.toml that points at this service and finds it by its marker."""
        return (
            f'[service]\nname = "stub"\nurl = "{self.url}"\nmatch = "{self.marker}"\n'
            f'command = ["true"]\n{extra}'
        )


@contextmanager
def stub_service(
    memory: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Iterator[StubService]:
    marker = f"mpsctl-stub-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"status": "ok", "model_loaded": True, "memory": memory})
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUB, marker, body],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield StubService(f"http://127.0.0.1:{port}", marker, proc)
    finally:
        proc.terminate()
        proc.wait(10)


def mps_report(recommended_max: int, high: float, low: float = 0.5) -> dict[str, Any]:
    """A ``mpsctl.memory/1`` report as a service on MPS sends it (docs/memory-report.md)."""
    return {
        "schema": "mpsctl.memory/1",
        "device": "mps",
        "torch_version": "2.6.0",
        "pid": 4242,
        "rss_bytes": 812646400,
        "mps": {
            "current_allocated_bytes": 1073741824,
            "driver_allocated_bytes": 1400897536,
            "recommended_max_bytes": recommended_max,
            "high_watermark_ratio": high,
            "low_watermark_ratio": low,
            "high_watermark_source": "env",
            "low_watermark_source": "env",
            "limit_bytes": int(high * recommended_max),
        },
        "cuda": None,
    }
