"""The exporter's HTTP server: prometheus_client's WSGI app on a bounded threading server.

prometheus_client's ``start_http_server`` gives every connection a thread that waits for the
request forever: 200 idle connections held 200 threads. Here a connection that sends nothing
for ``IDLE_TIMEOUT_S`` is closed, and past ``MAX_CONNECTIONS`` at once a new one is closed at
once instead of getting a thread. Scrapers send one request per connection and finish in
milliseconds, so neither bound touches them. prometheus_client is imported by the caller.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

#: seconds a connection may wait between bytes of its request before it is closed
IDLE_TIMEOUT_S = 5.0
#: connections served at once (each one a thread)
MAX_CONNECTIONS = 32


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT_S  # socketserver sets it on the connection's socket

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (one line per scrape would bury everything else)."""


class BoundedWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    max_connections = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def start_bounded_server(
    host: str, port: int, registry: Any
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on ``host:port`` from a daemon thread; OSError if it cannot bind."""
    from prometheus_client import make_wsgi_app

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("ExporterServer", (BoundedWSGIServer,), {"address_family": family})
    server: WSGIServer = make_server(
        host, port, make_wsgi_app(registry), server_class, _QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="mpsctl-exporter", daemon=True)
    thread.start()
    return server, thread
