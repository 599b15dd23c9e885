"""macOS/iOS jetsam kills (memorystatus), from log lines and JetsamEvent ``.ips`` reports.

* Unified log / syslog: ``memorystatus: killing_specific_process pid 2776 [Pythonista3]
  (per-process-limit 10) - memorystatus_available_pages: 42511`` (also ``killing_top_process``,
  ``killing_idle_process``), ``Process Tunnel [1509] killed by jetsam reason per-process-limit``,
  and the line before such a kill, ``<name>[pid] exceeded mem limit: ActiveHard 3072 MB (fatal)``
  (its limit belongs to the kill of the same pid; a limit line without a name, as newer
  systems print it, to the next kill for a limit, and it is a kill of its own, incomplete,
  when that kill is not in the text). A copy may wrap a record after the
  process's name or after "limit:"; a line naming the same pid next to its kill (the
  reporting daemon's "killed by jetsam reason", a second kernel line) is that kill again.
* ``JetsamEvent-*.ips``: a one-line JSON header, then a JSON body whose ``processes`` entries
  carry ``"reason"`` for the ones jetsam killed; sizes are pages (``rpages``) of the report's
  ``pageSize``; only entries with ``rpages`` count, so other JSON logs with a "reason" key
  are not mistaken for one. Reports are read as text, not with ``json``: copies are often
  cut, wrapped or elided, and a killed entry must still be found in what is left.

``zone_map_exhaustion: ... Waking up memorystatus thread`` is the kernel asking jetsam to act,
not a kill, so it is no event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar

from mpsctl.deaths.torch_errors import json_doc
from mpsctl.logtime import line_time
from mpsctl.units import size_value, to_int

# The kernel's kill line, with or without its "memorystatus: " prefix; the reason in
# parentheses with its priority and, on newer systems, more fields ("(per-process-limit 100 16s
# rf:-)"), or as "jetsam_reason->osr_code: N", or left out. Several records can run together on
# one line when the log lost its newlines: each is read (finditer), and a page count that runs
# into the next record's stamp is no figure.
_KILLING = re.compile(
    r"(?P<how>killing_[a-z_]+|memorystatus_do_kill) pid (?P<pid>\d+) "
    r"\[(?P<name>[^\]]*)\]"
    r"(?: \((?P<reason>[\w-]+)(?: (?P<code>\d+))?[^)]*\))?"
    r"(?: jetsam_reason->osr_code: (?P<osr>\d+))?(?: \.\.\.)?(?: (?P<kb>\d+)KB)?"
    r"(?: - memorystatus_available_pages: (?P<avail>\d+)(?![\d.]))?"
)
_KILLED_BY = re.compile(
    r"Process (?P<name>.+?) \[(?P<pid>\d+)\] killed by jetsam reason (?P<reason>[\w-]+)"
)
# "<name> [pid] exceeded mem limit: ActiveHard 50 MB (fatal)"; newer systems may leave out the
# name and pid, and the kill line that follows names them
_EXCEEDED = re.compile(
    r"(?:(?:-> |memorystatus: |^)(?P<name>[^\s\[][^\[]*?) ?\[(?P<pid>\d+)\] )?exceeded mem limit: "
    r"(?P<which>\w+) (?P<mb>\d+(?:\.\d+)?) MB(?P<fatal> \(fatal\))?"
)
#: a process dies once: a line naming the same pid this close to its kill (the reporting
#: daemon's "Process X [N] killed by jetsam reason ...", the kernel's second line) is that kill
_SAME_KILL_LINES = 20
#: a fatal limit line without a pid belongs to the next kill for a limit at most this many
#: lines below it: the kernel kills right after printing it, but a log copy puts its own
#: lines between ("killing process N [x] in high band", the process's corpse note, each
#: record's stamp line and a blank line when the copy wraps records)
_NAMELESS_LIMIT_LINES = _SAME_KILL_LINES
#: the reasons a kill for a fatal limit is given (the kill line may leave its reason out)
_LIMIT_REASONS = frozenset({None, "per-process-limit"})
#: a record wrapped by whoever copied it: its fields go on in the next line
_WRAPPED = re.compile(r"(?:exceeded mem limit:|killing\w* (?:pid )?\d+ \[[^\]]*\])\s*$")
_REASON = re.compile(r'"reason"\s*:\s*"([^"]*)"')
_PAGE_SIZE = re.compile(r'"pageSize"\s*:\s*(\d+)')
_REPORT_DATE = re.compile(r'"date"\s*:\s*"([^"]+)"')
_JSON_INT = r'"{}"\s*:\s*(\d+)'
_JSON_STR = r'"{}"\s*:\s*"([^"]*)"'


@dataclass(frozen=True)
class JetsamKill:
    """A process jetsam killed for memory. ``reason`` as printed: per-process-limit, highwater,
    vm-pageshortage, vnode-limit, zone-map-exhaustion, fc-thrashing, ..."""

    kind: ClassVar[str] = "jetsam_kill"
    raw: str
    pid: int | None = None
    process: str | None = None
    reason: str | None = None
    limit_bytes: int | None = None  # the per-process limit, from "exceeded mem limit"
    limit_kind: str | None = None  # "ActiveHard", "InactiveHard", ...
    footprint_bytes: int | None = None  # "NNNKB" in newer killing_* lines
    resident_pages: int | None = None  # .ips "rpages"
    page_size: int | None = None  # .ips "pageSize" (None when the copy lacks it)
    available_pages: int | None = None  # memorystatus_available_pages at the kill
    source: str = "log"  # "log" | "ips"
    complete: bool = True  # False: only the fatal "exceeded mem limit" line was found
    line: int | None = None
    time: datetime | None = None
    derived: ClassVar[tuple[str, ...]] = ("resident_bytes",)

    @property
    def resident_bytes(self) -> int | None:
        if self.resident_pages is None or self.page_size is None:
            return None
        return self.resident_pages * self.page_size

    def to_json(self) -> dict[str, Any]:
        return json_doc(self)


def find_jetsam(text: str, lines: list[str]) -> list[tuple[int, JetsamKill]]:
    """``(0-based line index, event)`` for every jetsam kill in ``text`` (split into ``lines``)."""
    found: list[tuple[int, JetsamKill]] = []
    if '"reason"' in text and '"rpages"' in text:
        found.extend(_find_ips(text))
    limits: dict[str, tuple[int, str, re.Match[str]]] = {}
    nameless: tuple[int, str, re.Match[str]] | None = None
    #: nameless fatal limits whose kill line is not in the text: each still a kill
    unclaimed: list[tuple[int, str, re.Match[str]]] = []
    #: pid -> (position in ``found``, line index) of the log kills read so far
    kills: dict[int, tuple[int, int]] = {}
    for index in range(len(lines)):
        line = _unwrapped(lines, index)
        if "exceeded mem limit" in line:
            exceeded = _EXCEEDED.search(line)
            if exceeded and exceeded.group("fatal"):
                if exceeded.group("pid"):
                    limits[exceeded.group("pid")] = (index, line.rstrip(), exceeded)
                else:
                    if nameless is not None:  # a second one before any kill: the first's is lost
                        unclaimed.append(nameless)
                    nameless = (index, line.rstrip(), exceeded)
            continue
        matches: list[re.Match[str]] = []
        if "killing_" in line or "memorystatus_do_kill" in line:
            matches = list(_KILLING.finditer(line))
        if not matches and "killed by jetsam" in line:
            matches = [m for m in [_KILLED_BY.search(line)] if m is not None]
        for match in matches:
            groups = match.groupdict()
            raw = line.rstrip() if len(matches) == 1 else match.group(0)
            values: dict[str, Any] = {}
            start = index
            limit = limits.pop(match.group("pid"), None)
            if limit is None and nameless is not None:
                if index - nameless[0] > _NAMELESS_LIMIT_LINES:
                    unclaimed.append(nameless)  # too far above to be this kill's
                    nameless = None
                elif groups.get("reason") in _LIMIT_REASONS:
                    limit, nameless = nameless, None
            if limit is not None:
                start, limit_raw, exceeded = limit
                raw = f"{limit_raw}\n{raw}"
                values.update(_limit_values(exceeded))
            kill = JetsamKill(
                raw=raw,
                pid=to_int(match.group("pid")),
                process=match.group("name"),
                reason=groups.get("reason"),
                footprint_bytes=None if not groups.get("kb") else to_int(groups["kb"], 1024),
                available_pages=None if not groups.get("avail") else to_int(groups["avail"]),
                **values,
            )
            seen = kills.get(kill.pid) if kill.pid is not None else None
            if seen is not None and index - seen[1] <= _SAME_KILL_LINES:
                position = seen[0]
                found[position] = (found[position][0], _same_kill(found[position][1], kill))
                continue
            if kill.pid is not None:
                kills[kill.pid] = (len(found), index)
            found.append((start, kill))
    if nameless is not None:
        unclaimed.append(nameless)
    for start, limit_raw, exceeded in [*limits.values(), *unclaimed]:
        # "(fatal)" means the kill follows; the text ends before it
        found.append(
            (
                start,
                JetsamKill(
                    raw=limit_raw,
                    pid=to_int(exceeded.group("pid") or ""),
                    process=exceeded.group("name"),
                    complete=False,
                    **_limit_values(exceeded),
                ),
            )
        )
    return found


def _unwrapped(lines: list[str], index: int) -> str:
    """The line, and the next one when the record was wrapped after a name or "limit:"."""
    line = lines[index]
    if index + 1 < len(lines) and lines[index + 1].strip() and _WRAPPED.search(line):
        return f"{line.rstrip()} {lines[index + 1].strip()}"
    return line


def _same_kill(first: JetsamKill, again: JetsamKill) -> JetsamKill:
    """One kill seen on two lines: the first one's figures, completed by the second's."""
    missing = {
        name: getattr(again, name)
        for name in ("process", "reason", "limit_bytes", "limit_kind", "footprint_bytes")
        if getattr(first, name) is None and getattr(again, name) is not None
    }
    return replace(first, raw=f"{first.raw}\n{again.raw}", **missing)


def _limit_values(exceeded: re.Match[str]) -> dict[str, Any]:
    return {
        "limit_bytes": size_value(exceeded.group("mb"), 1024**2),
        "limit_kind": exceeded.group("which"),
    }


def _find_ips(text: str) -> list[tuple[int, JetsamKill]]:
    """Killed ``processes`` entries of a JetsamEvent report (whole, cut or elided)."""
    page = _PAGE_SIZE.search(text)
    page_size = None if page is None else to_int(page.group(1))
    date = _REPORT_DATE.search(text)
    when = None if date is None else line_time(date.group(1))
    found: list[tuple[int, JetsamKill]] = []
    for reason in _REASON.finditer(text):
        start, end = _enclosing_object(text, reason.start())
        entry = text[start:end]
        pid = re.search(_JSON_INT.format("pid"), entry)
        # a process entry of a jetsam report, not some other JSON with a "reason"
        if pid is None or '"rpages"' not in entry:
            continue
        name = re.search(_JSON_STR.format("name"), entry)
        rpages = re.search(_JSON_INT.format("rpages"), entry)
        found.append(
            (
                text.count("\n", 0, start),
                JetsamKill(
                    raw=entry,
                    pid=to_int(pid.group(1)),
                    process=None if name is None else name.group(1),
                    reason=reason.group(1),
                    resident_pages=None if rpages is None else to_int(rpages.group(1)),
                    page_size=page_size,
                    source="ips",
                    time=when,
                ),
            )
        )
    return found


def _enclosing_object(text: str, pos: int) -> tuple[int, int]:
    """The span of the innermost ``{...}`` around ``pos`` (to the text's edge where cut)."""
    depth = 0
    start = 0
    for index in range(pos - 1, -1, -1):
        char = text[index]
        if char == "}":
            depth += 1
        elif char == "{":
            if depth == 0:
                start = index
                break
            depth -= 1
    depth = 0
    end = len(text)
    for index in range(pos, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                end = index + 1
                break
            depth -= 1
    return start, end
