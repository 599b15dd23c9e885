"""systemd's memory kills: systemd-oomd killing (or marking) a cgroup for memory pressure or
swap use, and systemd's note that the kernel's OOM killer killed a process of a unit.

A pure parser over log lines; one kill written over several adjacent lines is one event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar

from mpsctl.deaths.torch_errors import json_doc
from mpsctl.units import to_int

# "Killed|Marked <cgroup> [for killing] due to ...": systemd 247-252 name the pressure or swap
# use, 253 and later "memory used (N) / total (N) and swap used (N) / total (N) being more
# than 90.00%". A quoted or cut line may lack the "systemd-oomd[N]: " prefix or the reason, and
# a cgroup may be elided with "…"; a line without either prefix or reason is not oomd's.
_OOMD_KILL = re.compile(
    r"(?P<prefix>systemd-oomd(?:\[\d+\])?: )?(?P<verb>Killed|Marked) (?P<cgroup>[/…]\S*)"
    r"(?P<reason>(?: for killing)? due to (?P<trigger>memory pressure|swap used|memory used)"
    r"(?: for (?P<monitored>/\S+))?"
    r"(?: being (?P<pressure>[\d.]+)% > (?P<limit>[\d.]+)%)?(?: for > (?P<duration>\w+))?)?"
)
_OOMD_FIGURES = re.compile(
    r"memory used \((?P<mu>\d+)\)(?: / total \((?P<mt>\d+)\))?"
    r"(?: and swap used \((?P<su>\d+)\)(?: / total \((?P<st>\d+)\))?)?"
    r"(?: being more than (?P<limit>[\d.]+)%)?"
)
_OOMD_ATTEMPT = re.compile(r"systemd-oomd(?:\[\d+\])?: oomd attempting to kill (\d+) with")
_OOMD_UNIT = re.compile(r"(?:systemd\[\d+\]: )?(\S+): systemd-oomd killed (\d+) process\(es\)")
_UNIT_OOM = re.compile(r"(\S+): A process of this unit has been killed by the OOM killer")


@dataclass(frozen=True)
class OomdKill:
    """A cgroup killed for memory, as systemd saw it.

    ``by="systemd-oomd"``: userspace oomd killed (or marked for killing) ``cgroup`` because of
    memory pressure or swap use. ``by="kernel"``: systemd's note that the kernel's OOM killer
    killed a process in ``unit`` (the kernel log has the details); systemd writes it for the
    unit and each slice above it at once, so adjacent lines form one event listing ``units``.
    """

    kind: ClassVar[str] = "oomd_kill"
    raw: str
    by: str  # "systemd-oomd" | "kernel"
    cgroup: str | None = None
    unit: str | None = None
    units: tuple[str, ...] = ()
    monitored_cgroup: str | None = None
    trigger: str | None = None  # "memory pressure" | "swap used" | "memory used"
    pressure_percent: str | None = None  # as printed, e.g. "51.07"
    limit_percent: str | None = None
    duration: str | None = None  # e.g. "20s"
    pids: tuple[int, ...] = ()  # "oomd attempting to kill N" just before
    processes_killed: int | None = None
    marked: bool = False  # newer wording: "Marked ... for killing"
    #: systemd 253+: the machine's memory and swap use that crossed the limit, in bytes
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    swap_total_bytes: int | None = None
    line: int | None = None
    time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return json_doc(self)


def find_oomd(lines: list[str]) -> list[tuple[int, OomdKill]]:
    found: list[tuple[int, OomdKill]] = []
    attempts: list[int] = []
    last_unit_line = -2
    for index, line in enumerate(lines):
        if "systemd-oomd" in line or " due to " in line:
            attempt = _OOMD_ATTEMPT.search(line)
            if attempt:
                pid = to_int(attempt.group(1))
                if pid is not None:
                    attempts.append(pid)
                continue
            match = _OOMD_KILL.search(line)
            if match and (match.group("prefix") or match.group("reason")):
                cgroup = match.group("cgroup")
                figures = _OOMD_FIGURES.search(line, match.end("cgroup"))
                numbers = {} if figures is None else _figures(figures)
                found.append(
                    (
                        index,
                        OomdKill(
                            raw=line.rstrip(),
                            by="systemd-oomd",
                            cgroup=cgroup,
                            unit=cgroup.rsplit("/", 1)[-1],
                            units=(cgroup.rsplit("/", 1)[-1],),
                            monitored_cgroup=match.group("monitored"),
                            trigger=match.group("trigger"),
                            pressure_percent=match.group("pressure"),
                            limit_percent=match.group("limit") or numbers.pop("limit", None),
                            duration=match.group("duration"),
                            pids=tuple(attempts),
                            marked=match.group("verb") == "Marked",
                            **numbers,
                        ),
                    )
                )
                attempts = []
                continue
            counted = _OOMD_UNIT.search(line)
            if counted:
                _count_oomd(found, index, line, counted)
        elif "killed by the OOM killer" in line:
            match = _UNIT_OOM.search(line)
            if match is None:
                continue
            previous = found[-1] if found else None
            if (
                previous is not None
                and index == last_unit_line + 1
                and isinstance(previous[1], OomdKill)
                and previous[1].by == "kernel"
            ):
                event = previous[1]
                found[-1] = (
                    previous[0],
                    replace(
                        event, units=(*event.units, match.group(1)), raw=f"{event.raw}\n{line}"
                    ),
                )
            else:
                unit = match.group(1)
                found.append(
                    (index, OomdKill(raw=line.rstrip(), by="kernel", unit=unit, units=(unit,)))
                )
            last_unit_line = index
    return found


def _figures(match: re.Match[str]) -> dict[str, Any]:
    names = {"mu": "memory_used_bytes", "mt": "memory_total_bytes", "su": "swap_used_bytes",
             "st": "swap_total_bytes"}  # fmt: skip
    values: dict[str, Any] = {
        field: to_int(match.group(group)) for group, field in names.items() if match.group(group)
    }
    if match.group("limit"):
        values["limit"] = match.group("limit")
    return values


def _count_oomd(
    found: list[tuple[int, OomdKill]], index: int, line: str, counted: re.Match[str]
) -> None:
    """Attach "<unit>: systemd-oomd killed N process(es)" to its kill, or report it alone."""
    unit, count = counted.group(1), to_int(counted.group(2))
    for position in range(len(found) - 1, -1, -1):
        start, event = found[position]
        if isinstance(event, OomdKill) and event.unit == unit and event.processes_killed is None:
            found[position] = (
                start,
                replace(event, processes_killed=count, raw=f"{event.raw}\n{line.rstrip()}"),
            )
            return
    found.append(
        (
            index,
            OomdKill(
                raw=line.rstrip(),
                by="systemd-oomd",
                unit=unit,
                units=(unit,),
                processes_killed=count,
            ),
        )
    )
