"""Monitoring built on the probe: history, alerts, Prometheus, report, doctor, cron, watch.

:func:`after_probe` is what ``mpsctl probe --record/--alert-url/--alert-cmd/--prometheus``
runs once the verdict is known. None of it can change the probe's exit code: a full disk,
an unreachable webhook or a missing ``prometheus_client`` is a warning on stderr, because a
monitoring check that fails for its own plumbing hides the service's real state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mpsctl.errors import MpsctlError
from mpsctl.probe import ProbeResult
from mpsctl.settings import Settings

Warn = Callable[[str], None]


def record(settings: Settings, result: ProbeResult, warn: Warn, *, source: str = "probe") -> None:
    """Append ``result`` to the history; a failure is a warning."""
    from mpsctl.monitor.history import record_probe

    try:
        record_probe(
            settings.home, result, retention_days=settings.history.retention_days, source=source
        )
    except OSError as exc:
        warn(f"history not recorded: {exc.strerror or exc}")


def after_probe(
    settings: Settings,
    result: ProbeResult,
    *,
    record_history: bool = False,
    alert_url: str | None = None,
    alert_cmd: str | None = None,
    prometheus: Path | None = None,
    warn: Warn,
) -> None:
    """History, Prometheus textfile, alerts (in that order: the slowest last).

    ``alert_url`` / ``alert_cmd`` default to ``[alerts] url`` / ``command``; with neither,
    no alert is sent.
    """
    if record_history:
        record(settings, result, warn)
    if prometheus is not None:
        from mpsctl.monitor.prometheus import write_textfile

        if prometheus.suffix != ".prom":
            warn(
                f"--prometheus {prometheus}: node_exporter's textfile collector reads only "
                "*.prom files"
            )
        try:
            write_textfile(prometheus, result, settings.home)
        except MpsctlError as exc:
            warn(f"--prometheus: {exc}")
    url, command = alert_url or settings.alerts.url, alert_cmd or settings.alerts.command
    if not (url or command):
        return
    from mpsctl.monitor.alerts import notify_on_change, targets_from

    targets = targets_from(url, command)
    try:
        deliveries = notify_on_change(settings.home, result, targets)
    except OSError as exc:  # the state file could not be written
        warn(f"alert state not saved: {exc.strerror or exc}")
        return
    for delivery in deliveries:
        if not delivery.ok:
            warn(
                f"{delivery.kind} ({delivery.verdict}) not delivered to "
                f"{delivery.target.shown}: {delivery.detail}; "
                "the next probe tries again"
            )


def watch_probes(
    probe: Callable[[], ProbeResult],
    *,
    interval: float,
    count: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[ProbeResult]:
    """Probe every ``interval`` seconds (``count`` times, or until interrupted).

    Ticks are on a fixed schedule, so a 0.3 s probe does not stretch a 2 s interval; a probe
    slower than the interval is followed by the next one at once, without a catch-up burst.
    No sleep after the last probe.
    """
    taken = 0
    next_at = clock()
    while count is None or taken < count:
        yield probe()
        taken += 1
        if count is not None and taken >= count:
            return
        next_at += interval
        delay = next_at - clock()
        if delay < 0:
            next_at = clock()
            delay = 0.0
        sleep(delay)
