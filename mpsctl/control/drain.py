"""Drain before a planned stop: let the queries in flight finish, refuse new ones.

``stop``, ``restart``, ``fix`` and the watchdog's memory-critical restart call
:func:`begin` before signalling. A service that does not answer its health check (hung,
dead, stopped) is not drained: nothing it holds will finish. Otherwise:

- the number in flight is the memory report's ``limiter.in_flight``; without a report,
  the service's established connections on its port say whether any client is there
  (0: nothing to wait for), the count stays unknown;
- the reference service is asked to drain (``POST /admin/drain``): it answers new queries
  503 + Retry-After while mpsctl polls ``in_flight`` down to 0, for up to
  ``[service] drain_timeout``; then the usual SIGTERM, with ``stop_timeout``;
- another app (the endpoint answers 404) is drained by uvicorn's own graceful shutdown:
  SIGTERM closes the listening socket and uvicorn waits for the requests in flight, so
  SIGKILL comes ``drain_timeout + stop_timeout`` after SIGTERM instead of ``stop_timeout``.

Every stop says how many queries finished (drained) and how many were cut, or "unknown".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from mpsctl.client import HealthCheck, ServiceClient, read_token
from mpsctl.control.watchdog import in_flight
from mpsctl.errors import ClientError, ConfigError
from mpsctl.observe.processes.tree import open_connections
from mpsctl.settings import Settings

#: seconds between two polls of in_flight while the reference service drains
POLL_S = 0.2

How = Literal["none", "service", "sigterm", "skipped", "off"]


@dataclass(frozen=True)
class Drain:
    how: How  # none: nothing in flight; service: drained by the endpoint; sigterm: by
    # uvicorn's shutdown; skipped: not healthy (hung or dead); off: drain_timeout 0
    in_flight: int | None  # when the stop began; None: unknown
    drained: int | None
    cut: int | None
    waited_s: float
    note: str = ""
    #: seconds added to stop_timeout between SIGTERM and SIGKILL (the sigterm way)
    extra_s: float = 0.0

    def text(self) -> str:
        def count(n: int | None) -> str:
            return "unknown" if n is None else str(n)

        return f"{count(self.drained)} drained, {count(self.cut)} cut"

    def to_json(self) -> dict[str, Any]:
        return {
            "how": self.how,
            "in_flight": self.in_flight,
            "drained": self.drained,
            "cut": self.cut,
            "waited_s": round(self.waited_s, 3),
            "note": self.note,
        }


def _report(check: HealthCheck) -> int | None:
    body = check.body
    memory = body.get("memory") if isinstance(body, dict) else None
    limiter = memory.get("limiter") if isinstance(memory, dict) else None
    if not isinstance(limiter, dict) or "in_flight" not in limiter:
        return None
    return in_flight(memory)


def _client(settings: Settings) -> ServiceClient:
    try:
        token = read_token(settings.service)
    except ConfigError:
        token = None  # the drain is refused (401): drained by SIGTERM instead
    return ServiceClient(settings.service, token=token)


def begin(
    settings: Settings,
    pids: tuple[int, ...],
    *,
    health: Callable[[Settings, float], HealthCheck],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Drain:
    """Wait for the queries in flight (the module doc's rule); returns what happened."""
    service = settings.service
    limit = service.drain_timeout
    if limit <= 0:
        return Drain("off", None, None, None, 0.0, "drain_timeout is 0")
    check = health(settings, service.health_timeout)
    if not check.ok:
        why = check.error or "no answer"
        return Drain("skipped", None, None, None, 0.0, f"not drained: not healthy ({why})")
    count = _report(check)
    if count is None and open_connections(pids, urlsplit(service.url).port) == 0:
        count = 0
    if count == 0:
        return Drain("none", 0, 0, 0, 0.0)
    client = _client(settings)
    began = clock()
    try:
        try:
            asked = client.drain(timeout=min(service.health_timeout, limit))
        except ClientError as exc:
            return Drain("skipped", count, None, None, 0.0, f"not drained: {exc}")
        if not 200 <= asked.status < 300:
            note = "uvicorn finishes them after SIGTERM (no drain endpoint)"
            return Drain("sigterm", count, None, None, 0.0, note, extra_s=limit)
        left = count if count is not None else _report_of(asked.body)
        while left and clock() - began < limit:
            sleep(POLL_S)
            answer = health(settings, service.health_timeout)
            now = _report(answer)
            if now is not None:
                left = now
        start = count if count is not None else left
        cut = left or 0
        drained = None if start is None else max(0, start - cut)
        note = "" if not cut else f"{cut} still in flight after {limit:g} s"
        return Drain("service", start, drained, cut, clock() - began, note)
    finally:
        client.close()


def _report_of(body: Any) -> int | None:
    if isinstance(body, dict) and isinstance(body.get("in_flight"), int):
        return int(body["in_flight"])
    return None


def after_stop(drain: Drain, outcomes: list[str]) -> Drain:
    """The sigterm way's counts, once the processes ended: all gone on SIGTERM (uvicorn
    answered every request in flight) -> all drained; a SIGKILL -> unknown."""
    if drain.how != "sigterm":
        return drain
    clean = all(o in ("SIGTERM", "exited") for o in outcomes)
    if clean:
        return replace(drain, drained=drain.in_flight, cut=0)
    return replace(drain, note=f"{drain.note}; SIGKILL came before they finished")
