"""The time prefixes of system log lines.

Kernel, systemd and jetsam lines reach us under many prefixes: dmesg's uptime ``[12345.678901]``,
``dmesg -T``'s ``[Sat Nov 28 03:16:52 2026]``, syslog/kern.log's ``Nov 28 03:16:52 host kernel:``
(no year), rsyslog's and ``journalctl -o short-iso``'s ISO 8601 stamps, ``journalctl -o
short-full``'s ``Sat 2026-11-28 03:16:52 UTC``. All functions here are pure: the year a syslog
line belongs to, the machine's boot time and the local zone are passed in, never looked up.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo

from mpsctl.observe.logtime import line_time

_MON = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_MONTHS = {name: number for number, name in enumerate(_MON[1:-1].split("|"), 1)}

_DMESG_T = re.compile(rf"^\[[A-Z][a-z]{{2}} {_MON} +(\d{{1,2}}) (\d\d):(\d\d):(\d\d) (\d{{4}})\]")
_UPTIME = re.compile(r"\[\s*(\d{1,12})\.(\d{1,9})\]")
_SYSLOG = re.compile(rf"^{_MON} +(\d{{1,2}}) (\d\d):(\d\d):(\d\d)(?:\.(\d{{1,9}}))?\s")
_SHORT_FULL = re.compile(
    r"^[A-Z][a-z]{2} (\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? "
    r"(UTC|GMT|[+-]\d{4}|[A-Z]{2,5})\b"
)
_ISO_START = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d")
_ISO_WITH_OFFSET = re.compile(
    r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?\s?(?:Z|[+-]\d\d:?\d\d)(?!\d)"
)
#: how far into the line a syslog-style stamp may sit before an uptime stamp (host + program)
_UPTIME_WITHIN = 96


def has_time_prefix(line: str) -> bool:
    """Whether ``line`` starts with any of the stamps this module reads (for line joining)."""
    return bool(
        _DMESG_T.match(line)
        or _SYSLOG.match(line)
        or _SHORT_FULL.match(line)
        or _ISO_START.match(line)
        or _UPTIME.match(line)
    )


def _local(moment: datetime, zone: tzinfo | None) -> datetime:
    """A naive wall-clock stamp in ``zone`` (None: this machine's zone) as aware UTC."""
    if zone is None:
        return moment.astimezone(timezone.utc)
    return moment.replace(tzinfo=zone).astimezone(timezone.utc)


def _micro(fraction: str | None) -> int:
    return int(((fraction or "") + "000000")[:6])


def prefix_time(
    line: str,
    *,
    now: datetime | None = None,
    boot: datetime | None = None,
    zone: tzinfo | None = None,
) -> datetime | None:
    """The time a system log line was written, as aware UTC, or None when it cannot be known.

    ``now``: when the log is read; a syslog stamp has no year, so it gets ``now``'s year, or the
    year before when that would put it more than a day in the future (December lines read in
    January). Without ``now`` such a line has no time.
    ``boot``: the machine's boot time; dmesg's uptime stamps become wall time only with it.
    ``zone``: the zone naive stamps were written in (None: this machine's local zone).
    """
    match = _DMESG_T.match(line)
    if match:
        month, day, hour, minute, second, year = match.groups()
        return _build(int(year), _MONTHS[month], day, hour, minute, second, None, zone)
    match = _SHORT_FULL.match(line)
    if match:
        year, month, day, hour, minute, second, fraction, name = match.groups()
        moment = _naive(int(year), int(month), day, hour, minute, second, fraction)
        if moment is None:
            return None
        if name in ("UTC", "GMT"):
            return moment.replace(tzinfo=timezone.utc)
        if name[0] in "+-":
            offset = (int(name[1:3]) * 60 + int(name[3:5])) * (1 if name[0] == "+" else -1)
            return (moment - timedelta(minutes=offset)).replace(tzinfo=timezone.utc)
        return _local(moment, zone)  # an abbreviation like CET: ambiguous, so the local zone
    match = _SYSLOG.match(line)
    if match:
        if now is None:
            return None
        month, day, hour, minute, second, fraction = match.groups()
        moment = _build(now.year, _MONTHS[month], day, hour, minute, second, fraction, zone)
        reference = now if now.tzinfo else _local(now, zone)
        if moment is not None and moment > reference + timedelta(days=1):
            moment = _build(now.year - 1, _MONTHS[month], day, hour, minute, second, fraction, zone)
        return moment
    if _ISO_START.match(line):
        stamp = line_time(line)  # a naive stamp comes back read as this machine's local time
        if stamp is not None and zone is not None and not _ISO_WITH_OFFSET.match(line):
            stamp = _local(stamp.astimezone().replace(tzinfo=None), zone)
        return stamp
    match = _UPTIME.search(line, 0, _UPTIME_WITHIN)
    if match and boot is not None:
        seconds, fraction = match.groups()
        return boot.astimezone(timezone.utc) + timedelta(
            seconds=int(seconds), microseconds=_micro(fraction)
        )
    return None


def uptime_seconds(line: str) -> float | None:
    """dmesg's seconds-since-boot stamp of ``line`` (also after a syslog prefix), or None."""
    match = _UPTIME.search(line, 0, _UPTIME_WITHIN)
    return None if match is None else float(f"{match.group(1)}.{match.group(2)}")


def _naive(
    year: int, month: int, day: str, hour: str, minute: str, second: str, fraction: str | None
) -> datetime | None:
    try:
        return datetime(
            year, month, int(day), int(hour), int(minute), int(second), _micro(fraction)
        )
    except ValueError:  # Feb 30, second 61: a damaged line, not a time
        return None


def _build(
    year: int,
    month: int,
    day: str,
    hour: str,
    minute: str,
    second: str,
    fraction: str | None,
    zone: tzinfo | None,
) -> datetime | None:
    moment = _naive(year, month, day, hour, minute, second, fraction)
    return None if moment is None else _local(moment, zone)


_NAIVE_STAMP = re.compile(
    r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?!\d|[.,]\d|\s?(?:Z|[+-]\d\d:?\d\d))"
)


def time_note(line: str) -> str | None:
    """What a line's stamp does not say, for a time read from it (None: it says it all)."""
    if _SHORT_FULL.match(line) or _ISO_WITH_OFFSET.match(line):
        return None
    if _SYSLOG.match(line):
        return "no year or zone in the log: the log file's year, this machine's local time"
    if _DMESG_T.match(line):
        return "no zone in the log: read as this machine's local time"
    if _ISO_START.match(line) or _NAIVE_STAMP.search(line, 0, 96):
        return "no zone in the log: read as this machine's local time"
    if _UPTIME.search(line, 0, _UPTIME_WITHIN):
        return "seconds since boot, dated with this machine's boot time"
    return None
