"""``mpsctl status``: LSB states from the process table and one health check. Reads only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mpsctl.client import HealthCheck, health_now
from mpsctl.control.pidfile import (
    default_pidfile_path,
    foreign_pidfile,
)
from mpsctl.errors import StatusExit
from mpsctl.observe import processes
from mpsctl.settings import Settings
from mpsctl.units import utc_now_iso

if TYPE_CHECKING:
    from mpsctl.deaths.how_it_died import DeathCause


@dataclass(frozen=True)
class StatusResult:
    name: str
    state: Literal["running", "dead", "stopped", "unknown"]
    exit_code: StatusExit
    url: str
    snapshot: processes.ServiceSnapshot | None
    health: HealthCheck | None
    time: str
    error: str | None = None
    #: how it died, when the pidfile names a process that is gone (``deaths.how_it_died``)
    death: DeathCause | None = None

    @property
    def pid(self) -> int | None:
        return self.snapshot.roots[0] if self.snapshot and self.snapshot.roots else None

    @property
    def uptime_s(self) -> float | None:
        if self.snapshot is None or self.pid is None:
            return None
        return next((p.uptime_s for p in self.snapshot.processes if p.pid == self.pid), None)

    def to_json(self) -> dict[str, Any]:
        snap = self.snapshot
        health = self.health
        return {
            "schema": "mpsctl.status/1",
            "time": self.time,
            "name": self.name,
            "state": self.state,
            "exit_code": int(self.exit_code),
            "url": self.url,
            "pid": self.pid,
            "found_by": snap.found_by if snap else None,
            "pidfile_state": snap.pidfile_state if snap else None,
            "uptime_s": None if self.uptime_s is None else round(self.uptime_s, 1),
            "rss_bytes": snap.total_rss_bytes if snap and snap.running else None,
            "footprint_bytes": snap.total_footprint_bytes if snap else None,
            "processes": len(snap.processes) if snap else None,
            "health": None
            if health is None
            else {
                "ok": health.ok,
                "status": health.status,
                "latency_ms": health.latency_ms,
                "error": health.error,
            },
            "error": self.error,
            "death": None if self.death is None else self.death.to_json(),
            # processes that match service.match but are not the service (another port, a
            # copy still loading): named, never the service
            "others": [{"pid": p.pid, "command": p.command} for p in (snap.others if snap else ())],
        }


def service_status(settings: Settings) -> StatusResult:
    """LSB status: 0 running, 1 dead but pidfile, 3 not running, 4 unknown. Reads only."""
    name, url, now = settings.service.name, settings.service.url, utc_now_iso()
    try:
        snapshot = processes.find_service(settings)
    except Exception as exc:  # status must answer 4 (unknown), whatever psutil raises
        return StatusResult(name, "unknown", StatusExit.UNKNOWN, url, None, None, now, str(exc))
    health = health_now(settings)
    foreign = foreign_pidfile(settings, snapshot)
    if foreign:
        return StatusResult(name, "unknown", StatusExit.UNKNOWN, url, None, health, now, foreign)
    if snapshot.running:
        return StatusResult(name, "running", StatusExit.RUNNING, url, snapshot, health, now)
    if health.ok:
        # something answers, but no process we can name: not started by mpsctl, no match
        msg = "the service answers but its process is unknown (set service.match)"
        return StatusResult(name, "unknown", StatusExit.UNKNOWN, url, snapshot, health, now, msg)
    if snapshot.pidfile_state in ("stale", "reused"):
        # imported here: the log and system-log readers cost a running or stopped status
        # tens of milliseconds, and only a dead service needs them
        from mpsctl.deaths.how_it_died import how_it_died

        death = how_it_died(settings, snapshot)
        return StatusResult(
            name, "dead", StatusExit.DEAD_PIDFILE, url, snapshot, health, now, death=death
        )
    if snapshot.pidfile_state == "invalid":
        msg = (
            f"the pidfile {snapshot.pidfile_path or default_pidfile_path(settings)} cannot be "
            "read (`mpsctl stop` removes an unparseable one)"
        )
        return StatusResult(name, "unknown", StatusExit.UNKNOWN, url, snapshot, health, now, msg)
    return StatusResult(name, "stopped", StatusExit.NOT_RUNNING, url, snapshot, health, now)
