"""One found memory failure, whatever its kind, and the rule that counts each failure once.

The scanner (``scanner``) finds caching-allocator messages (``OomEvent``) and every other
memory death (``parsers.DeathEvent``); both become a ``Found``: the event, where it was seen
and when. A time is either exact (the line's or its record's stamp) or, for a line without
one found by the probe's cursor, an honest range: after the previous scan, before this one.

``merge`` counts one failure once, and ``counted`` is the one count every path uses (``oom``,
the probe and so the exporter, report and alerts, ``status``): the failures once each, memory
deaths only. Copies of one failure are one: the message a handler logged and its traceback's
last line, an exception string re-embedded above its traceback, an unstamped echo next to the
stamped line (see ``records``), and the same failure written into several files at once (the
service log, an error log, an app log) within ``SAME_FAILURE_S``. Separate failures never
merge, however close in time or equal in figures: in one file, every stamped line and every
new traceback is a new record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from mpsctl.deaths.allocator import OomEvent
from mpsctl.deaths.allocator import summary as oom_summary
from mpsctl.deaths.line_prefix import time_note
from mpsctl.deaths.parsers import DeathEvent
from mpsctl.deaths.systemd_oomd import OomdKill
from mpsctl.logtime import iso

AnyEvent = OomEvent | DeathEvent

#: copies of one failure are written within this of each other (log handlers flush at once)
SAME_FAILURE_S = 5.0
#: an unstamped echo of a stamped line is written right next to it (lines)
ECHO_LINES = 3

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
    #: the line carries its own time; ``follows``/``leads``: the line numbers of the traceback
    #: it ends or that continues its record (``records``); for telling copies from deaths
    stamped: bool = False
    follows: int | None = None
    leads: int | None = None
    #: another process's kill, listed only when asked for (``attribution``)
    other: bool = False

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

    def time_note(self) -> str | None:
        """What the stamp the time was read from does not say (no year, no zone), or None."""
        if self.when is None:
            return None
        return time_note(self.event.raw.partition("\n")[0])

    def identity(self) -> tuple[Any, ...]:
        """What failed, without where, when or the wording around it."""
        doc = _base_doc(self.event)
        return tuple(sorted((k, repr(v)) for k, v in doc.items() if k not in _PLACE_KEYS))

    def to_json(self) -> dict[str, Any]:
        """The ``mpsctl.oom/1`` event: kind, backend, figures, place, time, summary, raw last."""
        doc = _base_doc(self.event)
        raw = doc.pop("raw")
        doc.pop("summary", None)
        doc["file"] = self.file
        doc["line"] = self.line
        doc["time"] = None if self.when is None else iso(self.when)
        doc["time_note"] = self.time_note()
        doc["time_range"] = (
            None
            if self.when is not None or self.after is None or self.before is None
            else {"after": iso(self.after), "before": iso(self.before)}
        )
        doc["seen_in"] = [
            {"file": f, "line": n} for f, n in self.places or ((self.file, self.line),)
        ]
        if self.other:
            doc["other_process"] = True
        doc["summary"] = self.summary()
        doc["raw"] = raw
        return doc


def _base_doc(event: AnyEvent) -> dict[str, Any]:
    if isinstance(event, OomEvent):
        return event.as_dict()
    return event.to_json()


def _same_record(earlier: Found, later: Found) -> bool:
    """Whether two equal failures in one file are one record written twice (``records``)."""
    if earlier.stamped and later.stamped:
        return False  # each stamped line is a record of its own
    if earlier.stamped or later.stamped:
        bare, stamped = (later, earlier) if earlier.stamped else (earlier, later)
        if bare.when is not None and bare.when == stamped.when:
            return True  # the traceback under the stamped line: its record's time
        return (
            bare.follows is None
            and earlier.line is not None
            and later.line is not None
            and later.line - earlier.line <= ECHO_LINES
        )
    if later.follows is not None and later.follows == earlier.leads:
        return True  # the traceback the earlier message leads into ends with this line
    # both inside one stamped record (its time), and no traceback began between them
    return (
        earlier.when is not None
        and earlier.when == later.when
        and (later.follows is None or later.follows <= (earlier.line or 0))
    )


def _in_line_order(indices: list[int], found: list[Found]) -> list[int]:
    return sorted(indices, key=lambda i: (found[i].line is None, found[i].line or 0, i))


def merge(found: list[Found]) -> list[Found]:
    """One entry per failure, listing every place it was seen; input order is kept (the first
    place is the entry's). In each file, in line order, a copy is folded into the occurrence
    of the same record (``_same_record``); then one failure per file is matched across files
    when both have times within ``SAME_FAILURE_S`` (a file without times cannot say which
    failure of another file it repeats, so it is not matched).
    """
    copy_of: dict[int, int] = {}
    by_file: dict[str | None, list[int]] = {}
    for index, item in enumerate(found):
        by_file.setdefault(item.file, []).append(index)
    for indices in by_file.values():
        last: dict[tuple[Any, ...], int] = {}
        for index in _in_line_order(indices, found):
            key = found[index].identity()
            earlier = last.get(key)
            if earlier is not None and _same_record(found[earlier], found[index]):
                copy_of[index] = copy_of.get(earlier, earlier)
            last[key] = index
    kept: list[Found] = []
    files: list[set[str | None]] = []
    slot: dict[int, int] = {}
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for index, item in enumerate(found):
        if index in copy_of:
            continue
        key = item.identity()
        candidates = by_key.setdefault(key, [])
        for position in reversed(candidates[-8:]):
            other = kept[position]
            if item.file in files[position] or other.when is None or item.when is None:
                continue
            if abs((other.when - item.when).total_seconds()) <= SAME_FAILURE_S:
                slot[index] = position
                files[position].add(item.file)
                break
        else:
            slot[index] = len(kept)
            candidates.append(len(kept))
            kept.append(item)
            files.append({item.file})
    _fold_observers(kept, slot)
    places: list[list[tuple[str | None, int | None]]] = [[] for _ in kept]
    times: list[datetime | None] = [item.when for item in kept]
    for index, item in enumerate(found):
        position = slot[copy_of.get(index, index)]
        places[position].append((item.file, item.line))
        times[position] = times[position] or item.when  # an echo's record may be stamped
    return [
        item if len(places[p]) == 1 else replace(item, places=tuple(places[p]), when=times[p])
        for p, item in enumerate(kept)
    ]


def _fold_observers(kept: list[Found], slot: dict[int, int]) -> None:
    """systemd's note that the kernel killed a process of a unit, read from another log than
    the kernel's report: where that kill was seen (within ``SAME_FAILURE_S``), not a kill."""
    kernel = [p for p, item in enumerate(kept) if item.kind == "kernel_oom_kill" and item.when]
    if not kernel:
        return
    moved: dict[int, int] = {}
    for position, item in enumerate(kept):
        if not isinstance(item.event, OomdKill) or item.event.by != "kernel" or not item.when:
            continue
        when = item.when
        near = [p for p in kernel if abs((kept[p].when - when).total_seconds()) <= SAME_FAILURE_S]  # type: ignore[operator]
        if near:
            moved[position] = near[0]
    if not moved:
        return
    for index, position in list(slot.items()):
        slot[index] = moved.get(position, position)
    survivors = sorted(set(slot.values()))
    renumber = {old: new for new, old in enumerate(survivors)}
    kept[:] = [kept[p] for p in survivors]
    for index, position in slot.items():
        slot[index] = renumber[position]


def without_lines(item: Found) -> Found:
    """``item`` for a reader that did not read the file from its start: line numbers there
    count from where the read began, so none is reported."""
    return replace(item, line=None, places=tuple((file, None) for file, _ in item.places))


def counts(item: Found) -> bool:
    """Whether a found event is a memory failure (what every count counts): not an invalid
    watermark setting, not a gunicorn SIGKILL after its own WORKER TIMEOUT."""
    from mpsctl.deaths.parsers import is_memory_death

    if isinstance(item.event, OomEvent):
        return item.event.kind == "oom"
    return is_memory_death(item.event)


def counted(found: list[Found]) -> list[Found]:
    """The one count: each failure once (``merge``), memory deaths only (``counts``)."""
    return [item for item in merge(found) if counts(item)]


def window_start(found: Found) -> datetime | None:
    """The earliest the failure can have happened (for ``--since`` and the probe's window)."""
    return found.when if found.when is not None else found.after


def within(found: Found, cutoff: datetime) -> bool:
    """Newer than ``cutoff``, as far as its time or range can tell (a range that ends after
    the cutoff may be newer, so it is kept)."""
    if found.when is not None:
        return found.when >= cutoff
    if found.before is not None:
        return found.before >= cutoff
    return True
