"""A request head sent one byte at a time, each byte inside the idle timeout, must not hold
an exporter slot for ever: with every slot held that way, Prometheus's scrapes were all
refused."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request

import pytest

from mpsctl.monitor import exporter_server
from mpsctl.monitor.prometheus import start_exporter
from mpsctl.probe import take_probe
from mpsctl.settings import load_settings
from tests.monitor.test_prometheus import dead_url

__all__ = ["dead_url"]  # the fixture, shared


def test_request_heads_trickled_in_do_not_hold_every_exporter_slot(
    dead_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter_server._QuietHandler, "timeout", 1.0)
    monkeypatch.setattr(exporter_server._QuietHandler, "request_deadline", 2.0, raising=False)
    monkeypatch.setattr(exporter_server.BoundedWSGIServer, "max_connections", 4)
    settings = load_settings()
    exporter = start_exporter(lambda: take_probe(settings), "127.0.0.1", 0, min_interval=0)
    port = int(exporter.url.rsplit(":", 1)[1].split("/")[0])
    stop = threading.Event()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]

    def trickle() -> None:  # one byte per connection every 0.4 s: never idle for 1 s
        head = b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 1000
        for byte in head:
            if stop.is_set():
                return
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(bytes([byte]))
            time.sleep(0.4)

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        time.sleep(3.0)  # past the 2 s deadline, the trickling goes on
        with urllib.request.urlopen(exporter.url, timeout=5) as response:
            assert b"mpsctl_verdict" in response.read()
    finally:
        stop.set()
        sender.join(5)
        for sock in socks:
            sock.close()
        exporter.shutdown()
