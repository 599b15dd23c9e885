"""Durations as operators type them: ``90``, ``30s``, ``15m``, ``24h``, ``7d``, ``1h30m``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from mpsctl.errors import ConfigError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; a bare number is seconds. ValueError with a reason otherwise."""
    raw = text.strip().lower()
    if not raw:
        raise ValueError("empty duration")
    try:
        seconds = float(raw)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _PART.finditer(raw):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(raw):
            raise ValueError(f"invalid duration {text!r} (examples: 30s, 15m, 24h, 7d)") from None
    if not 0 <= seconds < math.inf:  # also refuses NaN, "inf" and "1e999"
        raise ValueError(f"invalid duration {text!r}")
    return seconds


@dataclass(frozen=True)
class Period:
    """A duration as typed (``24h``) and in seconds."""

    text: str
    seconds: float

    def before(self, moment: datetime | None = None) -> datetime:
        """``moment`` (default: now, UTC) minus this period; OverflowError before year 1."""
        return (moment or datetime.now(timezone.utc)) - timedelta(seconds=self.seconds)


def parse_period(text: str) -> Period:
    """A Period that reaches back no further than year 1. ValueError with a reason otherwise."""
    period = Period(text, parse_duration(text))
    try:
        period.before()
    except OverflowError:  # "1e12": 31,000 years
        raise ValueError(f"{text} is too long (it reaches back before the year 1)") from None
    return period


def seconds_setting(value: float, what: str, *, allow_zero: bool) -> float:
    """A duration flag or setting: finite, and > 0 (or >= 0 where 0 means "at once")."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{what}: expected a finite number of seconds {bound}, got {value:g}")
    return value
