"""One found memory failure, whatever its kind, and the rule that counts each failure once.

The scanner (``scanner``) finds caching-allocator messages (``OomEvent``) and every other
memory death (``parsers.DeathEvent``); both become a ``Found``: the event, where it was seen
and when. A time is either exact (the line's or its record's stamp) or, for a line without
one found by the probe's cursor, an honest range: after the previous scan, before this one.

``merge`` counts one failure once. An app that logs an exception with ``log.exception``
writes the message line and then the traceback's ``RuntimeError:`` line with the same text,
often into several files at once (the service log, an error log, an app log): those are one
failure, reported once with every place it was seen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from mpsctl.deaths.allocator import OomEvent
from mpsctl.deaths.allocator import summary as oom_summary
from mpsctl.deaths.parsers import DeathEvent
from mpsctl.observe.logtime import iso

AnyEvent = OomEvent | DeathEvent

#: copies of one failure are written within this of each other (log handlers flush at once)
SAME_FAILURE_S = 5.0
#: a traceback's last line is this close below the line that logged it, in the same file
SAME_FAILURE_LINES = 200

#: fields that say where or when, or how the message was worded, not what failed
_PLACE_KEYS = frozenset({"file", "line", "time", "raw", "summary", "complete", "when"})


@dataclass(frozen=True)
class Found:
    """One memory failure: the event, its first place and time, and every place it was seen."""

    event: AnyEvent
    file: str | None
    line: int | None
    when: datetime | None = None
    #: no exact time: the line was written after ``after`` and before ``before``
    after: datetime | None = None
    before: datetime | None = None
    places: tuple[tuple[str | None, int | None], ...] = ()

    @property
    def kind(self) -> str:
        return self.event.kind

    @property
    def backend(self) -> str | None:
        return getattr(self.event, "backend", None)

    def summary(self) -> str:
        if isinstance(self.event, OomEvent):
            return oom_summary(self.event)
        from mpsctl.deaths.advice import summary

        return summary(self.event)

    def time_text(self) -> str | None:
        """``2026-01-21T03:16:52Z`` or ``between 03:10 and 03:15`` (UTC), or None."""
        if self.when is not None:
            return iso(self.when)
        if self.after is not None and self.before is not None:
            return f"between {iso(self.after)} and {iso(self.before)}"
        return None

    def identity(self) -> tuple[Any, ...]:
        """What failed, without where, when or the wording around it."""
        doc = _base_doc(self.event)
        return tuple(sorted((k, repr(v)) for k, v in doc.items() if k not in _PLACE_KEYS))

    def to_json(self) -> dict[str, Any]:
        """The ``mpsctl.oom/1`` event: kind, backend, figures, place, time, summary, raw last."""
        doc = _base_doc(self.event)
        raw = doc.pop("raw", None)
        doc.pop("summary", None)
        doc["file"] = self.file
        doc["line"] = self.line
        doc["time"] = None if self.when is None else iso(self.when)
        doc["time_range"] = (
            None
            if self.when is not None or self.after is None or self.before is None
            else {"after": iso(self.after), "before": iso(self.before)}
        )
        doc["seen_in"] = [
            {"file": f, "line": n} for f, n in self.places or ((self.file, self.line),)
        ]
        doc["summary"] = self.summary()
        doc["raw"] = raw
        return doc


def _base_doc(event: AnyEvent) -> dict[str, Any]:
    if isinstance(event, OomEvent):
        return event.as_dict()
    return event.to_json()


def _close(a: Found, b: Found) -> bool:
    if a.when is not None and b.when is not None:
        return abs((a.when - b.when).total_seconds()) <= SAME_FAILURE_S
    if a.file == b.file and a.line is not None and b.line is not None:
        return abs(a.line - b.line) <= SAME_FAILURE_LINES
    return False


def merge(found: list[Found]) -> list[Found]:
    """One entry per failure: equal figures seen within ``SAME_FAILURE_S`` (or, without times,
    within ``SAME_FAILURE_LINES`` lines of one file) are one failure, listing every place.

    Input order is kept (the first place is the entry's); a later copy only adds its place.
    """
    kept: list[Found] = []
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for item in found:
        key = item.identity()
        indices = by_key.setdefault(key, [])
        for index in reversed(indices[-8:]):  # copies are near each other: look back a little
            other = kept[index]
            if _close(other, item):
                places = other.places or ((other.file, other.line),)
                when = other.when or item.when
                kept[index] = replace(other, places=(*places, (item.file, item.line)), when=when)
                break
        else:
            indices.append(len(kept))
            kept.append(item)
    return kept


def window_start(found: Found) -> datetime | None:
    """The earliest the failure can have happened (for ``--since`` and the probe's window)."""
    return found.when if found.when is not None else found.after


def within(found: Found, cutoff: datetime) -> bool:
    """Newer than ``cutoff``, as far as its time or range can tell (a range that ends after
    the cutoff may be newer, so it is kept)."""
    if found.when is not None:
        return found.when >= cutoff
    if found.before is not None:
        return found.before >= cutoff - timedelta(0)
    return True
