"""The monitoring-plugin line: every figure that can change the state carries warn/crit, read
by nagiosplugin's own range parser to the same state as the exit code; plain ASCII."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import nagiosplugin
import pytest

from mpsctl.errors import ProbeExit
from mpsctl.observe.host import HostMemory
from mpsctl.probe import HealthFigures, ProbeResult, judge
from mpsctl.render.nagios import nagios_line
from mpsctl.settings import load_settings
from tests.test_probe import OK_HEALTH, UNKNOWN, snapshot

GIB = 1024**3
FAILED = HealthFigures(True, False, None, None, "no answer", None)


def host(swap_used: int = 0, pressure: str | None = None) -> HostMemory:
    return HostMemory(16 * GIB, 8 * GIB, 8 * GIB, 50.0, 4 * GIB, 8 * GIB, swap_used,
                      None, None, pressure, None, "linux")  # fmt: skip


def perfdata_state(line: str) -> ProbeExit:
    """The worst state nagiosplugin's Range gives the fields that have thresholds."""
    worst = ProbeExit.OK
    for item in line.split(" | ", 1)[1].split():
        value, *fields = item.split("=", 1)[1].split(";")
        number = float(value.rstrip("%sB"))
        warn, crit = [*fields, "", ""][:2]
        if crit and not nagiosplugin.Range(crit).match(number):
            return ProbeExit.CRITICAL
        if warn and not nagiosplugin.Range(warn).match(number):
            worst = ProbeExit.WARNING
    return worst


@pytest.mark.parametrize(
    ("parts", "level"),
    [
        ({}, ProbeExit.OK),
        ({"health": FAILED}, ProbeExit.CRITICAL),
        ({"host": host(swap_used=int(0.6 * 8 * GIB))}, ProbeExit.WARNING),
        ({"host": host(swap_used=int(0.9 * 8 * GIB))}, ProbeExit.CRITICAL),
        ({"host": host(pressure="warn")}, ProbeExit.WARNING),
        ({"host": host(pressure="critical")}, ProbeExit.CRITICAL),
        ({"host": host(pressure="warn"), "pressure_judged": "critical"}, ProbeExit.OK),
        ({"host": host(pressure="critical"), "pressure_judged": "critical"}, ProbeExit.CRITICAL),
        ({"host": host(pressure="critical"), "pressure_judged": "off"}, ProbeExit.OK),
        ({"oom_events": ({"kind": "oom"},)}, ProbeExit.WARNING),
    ],
)
def test_perfdata_state_is_the_exit_code(parts: dict[str, Any], level: ProbeExit) -> None:
    judged = parts.pop("pressure_judged", "warn")
    thresholds = replace(load_settings().thresholds, memory_pressure=judged)
    args = {"host": host(), "service": snapshot(), "health": OK_HEALTH, "accelerator": UNKNOWN,
            "oom_events": (), "thresholds": thresholds, **parts}  # fmt: skip
    findings = tuple(judge(**args))
    result = ProbeResult("2026-01-01T00:00:00Z", "svc", "http://x", args["host"],
                         args["service"], args["health"], UNKNOWN, args["oom_events"],
                         findings, args["thresholds"])  # fmt: skip
    line = nagios_line(result)
    assert result.verdict == level, result.reasons
    assert perfdata_state(line) == level, line


def test_the_line_is_plain_ascii() -> None:
    health = HealthFigures(True, False, None, None, "`boom` — café… ≥ 5", None)
    args = {"host": host(), "service": snapshot(), "health": health, "accelerator": UNKNOWN,
            "oom_events": (), "thresholds": load_settings().thresholds}  # fmt: skip
    result = ProbeResult("2026-01-01T00:00:00Z", "sérvice", "http://x", args["host"],
                         args["service"], health, UNKNOWN, (), tuple(judge(**args)),
                         args["thresholds"])  # fmt: skip
    line = nagios_line(result)
    assert line.isascii()
    assert "'boom' - cafe... >= 5" in line
