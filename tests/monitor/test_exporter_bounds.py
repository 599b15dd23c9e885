"""The exporter's HTTP server under idle connections: a bounded number of threads, and
idle connections closed, so a scrape still gets its answer."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest

from mpsctl.monitor import exporter_server
from mpsctl.monitor.prometheus import Exporter, start_exporter, start_services_exporter
from mpsctl.probe import take_probe
from mpsctl.settings import Settings, load_settings
from tests.monitor.test_prometheus import dead_url

__all__ = ["dead_url"]  # the fixture, shared


def one_service(settings: Settings) -> Exporter:
    return start_exporter(lambda: take_probe(settings), "127.0.0.1", 0, min_interval=0)


def several(settings: Settings) -> Exporter:
    probes = [(lambda: take_probe(settings), settings.home)] * 2
    return start_services_exporter(probes, "127.0.0.1", 0, min_interval=0)


@pytest.mark.parametrize("start", [one_service, several])
def test_idle_connections_to_the_exporter_neither_pile_up_threads_nor_stay_open(
    dead_url: str, monkeypatch: pytest.MonkeyPatch, start: Callable[[Settings], Exporter]
) -> None:
    monkeypatch.setattr(exporter_server._QuietHandler, "timeout", 1.0)
    monkeypatch.setattr(exporter_server.BoundedWSGIServer, "max_connections", 8)
    settings = load_settings()
    before = threading.active_count()
    exporter = start(settings)
    port = int(exporter.url.rsplit(":", 1)[1].split("/")[0])
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    try:
        time.sleep(0.3)
        assert threading.active_count() <= before + 1 + 8
        time.sleep(1.5)  # past the idle timeout: every held connection is closed
        for sock in socks:
            sock.settimeout(1)
            with contextlib.suppress(OSError):
                assert sock.recv(1024) == b""
        with urllib.request.urlopen(exporter.url, timeout=5) as response:
            assert b"mpsctl_verdict" in response.read()
    finally:
        for sock in socks:
            sock.close()
        exporter.shutdown()
