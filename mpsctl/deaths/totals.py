"""Memory failures counted since the first probe: monotonic totals per service and kind.

The probe reports failures of the last hour, and the same failure again at every probe of
that hour: a gauge over a window, which an alert rule can only compare with its own past
(``offset``), so it fires late and not at all after a gap. Prometheus alerts on counters:
these totals grow by one per failure, whichever probe found it (cron's, the exporter's,
``watch``'s), and never go down.

Each failure the probe reports (already counted once by the scanner's rule: ``merge`` and
``counts``) has a key: its file, kind, summary and time (or time range). A key seen before
is not counted again; keys are remembered for twice the probe's window, longer than any
probe can report the same failure. The state is ``MPSCTL_HOME/oom_totals.json``, updated
under an exclusive lock (``oom_totals.lock``) and written atomically, so a cron probe and a
scrape at the same moment count a failure once. Deleting the file is the one reset: the
totals start again at 0, which Prometheus's ``increase()`` and ``rate()`` read as a
counter reset, not as a drop. A state file that cannot be read or parsed is never
overwritten: the totals are then unknown (the exporter omits them) until it is fixed or
deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from mpsctl.logtime import iso
from mpsctl.storage import atomic_write_json
from mpsctl.units import parse_time

SCHEMA = "mpsctl.oom_totals/1"
STATE_NAME = "oom_totals.json"
LOCK_NAME = "oom_totals.lock"


def kinds() -> tuple[str, ...]:
    """Every kind a total is kept for, present from the first probe (at 0) so that
    ``increase()`` sees the first failure of each kind."""
    # not the parsers' own KINDS: a probe whose log has not changed never loads the parsers
    from mpsctl.deaths.prefilter import DEATH_KINDS

    return ("oom", *DEATH_KINDS)


def state_path(home: Path) -> Path:
    return home / STATE_NAME


def event_key(event: dict[str, Any]) -> str:
    """What makes one reported failure itself: where, what, and when (or between when)."""
    return json.dumps(
        [
            event.get("file"),
            event.get("kind"),
            event.get("summary"),
            event.get("time"),
            event.get("time_range"),
        ],
        separators=(",", ":"),
    )


def read_totals(home: Path, service: str) -> dict[str, int] | None:
    """The totals of ``service`` by kind, 0 for a kind never seen; None when the state
    cannot be read. Nothing is written."""
    try:
        return _totals(_read(home), service)
    except (OSError, ValueError):
        return None


def count_events(
    home: Path,
    service: str,
    events: Iterable[dict[str, Any]],
    window_s: float,
    *,
    now: datetime | None = None,
) -> dict[str, int] | None:
    """Add the failures in ``events`` not counted before; return the totals by kind.

    When the state cannot be written (a read-only home) the totals read are returned
    unchanged: a counter that stays put is right, one that counts a failure twice is not.
    None when the state cannot be read.
    """
    moment = now or datetime.now(timezone.utc)
    keep_until = iso(moment + timedelta(seconds=2 * window_s))
    events = list(events)
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(home):
            doc = _read(home)
            entry = doc.setdefault("services", {}).setdefault(service, {})
            totals = _totals(doc, service)
            stored = entry.get("seen") or {}
            seen = {
                k: v
                for k, v in stored.items()
                if isinstance(v, str) and (parse_time(v) or moment) > moment
            }
            changed = len(seen) != len(stored) or not state_path(home).exists()
            for event in events:
                key = event_key(event)
                if key in seen:
                    continue
                seen[key] = keep_until
                kind = str(event.get("kind") or "oom")
                totals[kind] = totals.get(kind, 0) + 1
                changed = True
            if changed:
                entry["totals"] = totals
                entry["seen"] = seen
                doc["schema"] = SCHEMA
                atomic_write_json(state_path(home), doc)
            return dict(totals)
    except (OSError, ValueError):
        return read_totals(home, service)


def _totals(doc: dict[str, Any], service: str) -> dict[str, int]:
    entry = (doc.get("services") or {}).get(service) or {}
    stored = entry.get("totals") if isinstance(entry, dict) else None
    totals = dict.fromkeys(kinds(), 0)
    if isinstance(stored, dict):
        for kind, value in stored.items():
            if isinstance(value, int) and value >= 0:
                totals[str(kind)] = value
    return totals


def _read(home: Path) -> dict[str, Any]:
    """The state; {} when there is none yet. Raises OSError/ValueError when it exists but
    cannot be read or is not ours, so the caller never writes over it."""
    try:
        text = state_path(home).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    doc = json.loads(text)
    if not (isinstance(doc, dict) and isinstance(doc.get("services"), dict)):
        raise ValueError(f"{state_path(home)} is not an {SCHEMA} document")
    return doc


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
