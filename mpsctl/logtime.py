"""The timestamp a log line starts with: logging, ISO 8601, loguru and gunicorn forms."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

# A log line's own timestamp: logging's asctime (``2026-01-21 19:38:40,123``), ISO 8601 with
# ``T``/``Z``/offset, loguru (``.123``), gunicorn (``[2026-01-21 19:38:40 +0000]``).
_TIMESTAMP = re.compile(
    r"(?<!\d)(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(?:\s?(Z|[+-]\d{2}:?\d{2})(?!\d))?"
)
_TIMESTAMP_WITHIN = 64  # the stamp must start near the line start, not inside the message


def line_time(line: str) -> datetime | None:
    """The timestamp a log line starts with, as aware UTC; naive stamps are local time."""
    match = _TIMESTAMP.search(line, 0, _TIMESTAMP_WITHIN + 40)
    if match is None or match.start() > _TIMESTAMP_WITHIN:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7) or "0"
    micro = int((fraction + "000000")[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second, micro)
    except ValueError:
        return None
    zone = match.group(8)
    if zone is None:
        # The service runs on this machine, so its naive stamps are in our local time.
        return moment.astimezone(timezone.utc)
    if zone == "Z":
        return moment.replace(tzinfo=timezone.utc)
    sign = 1 if zone[0] == "+" else -1
    digits = zone[1:].replace(":", "")
    offset = sign * (int(digits[:2]) * 60 + int(digits[2:4]))
    return (moment - timedelta(minutes=offset)).replace(tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
