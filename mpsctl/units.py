"""Sizes, percentages, durations and UTC timestamps, to and from text: shared by the library
and render/."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

KIB = 1024
MIB = 1024**2
GIB = 1024**3
#: the largest value a ``*_bytes`` field may hold: JSON readers and Prometheus choke beyond it
MAX_INT = 2**63 - 1


def fmt_bytes(value: int | float | None, unknown: str = "unknown") -> str:
    """``7.47 GiB``, ``384.00 KiB``; ``None`` is shown as unknown, never as 0."""
    if value is None:
        return unknown
    size = float(value)
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"


def fmt_percent(value: float | None, unknown: str = "unknown") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return unknown
    return f"{value:.1f}%"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso_utc(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 timestamp (``Z`` or offset) as an aware UTC datetime; None if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


# --------------------------------------------------------------------------- figures in log text
def to_int(digits: str, scale: int = 1) -> int | None:
    """``"3558264", 1024`` -> 3643662336; None when the value does not fit in 63 bits.

    A corrupted or hostile log line may carry hundreds of digits: that field becomes None and
    the event is still reported, with the raw text kept.
    """
    if not digits.isdigit() or len(digits) > 19:
        return None
    value = int(digits) * scale
    return value if value <= MAX_INT else None


def size_value(number: str, scale: int) -> int | None:
    """``"3072", 1024**2`` -> 3221225472; decimals allowed; None when it does not fit."""
    if len(number) > 24:
        return None
    try:
        value = round(float(number) * scale)
    except (ValueError, OverflowError):
        return None
    return value if 0 <= value <= MAX_INT else None
