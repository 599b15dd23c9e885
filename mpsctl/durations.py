"""Durations as operators type them: ``90``, ``30s``, ``15m``, ``24h``, ``7d``, ``1h30m``."""

from __future__ import annotations

import math
import re

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
