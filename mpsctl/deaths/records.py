"""Where one logged failure's record begins and ends: what tells a copy from a new death.

A process writes one failure once per log record. ``log.exception`` writes a stamped line with
the message and then the traceback, whose last line repeats the message; an app may re-embed
it (``Exception string: '...'``) just above the traceback that follows; uvicorn may echo it,
unstamped, next to the stamped line. Those are places where one failure was seen. A new
stamped line, a new traceback or a new request is a new record, hence a new failure, however
close in time or equal in figures. ``counting.merge`` decides with three marks per
occurrence, computed here from the lines around it:

* ``stamped``: the line carries its own time (a record of its own);
* ``follows``: the line ends a traceback; the line number of its ``Traceback (most recent
  call last):`` line;
* ``leads``: a traceback starts just below the message (its record continues into it); the
  line number of that ``Traceback`` line.
"""

from __future__ import annotations

import re

from mpsctl.deaths.line_prefix import has_time_prefix
from mpsctl.logtime import line_time

TRACEBACK = b"Traceback (most recent call last):"
#: a message's own continuation lines before the traceback it leads into
LEADS_WITHIN = 8
#: a traceback's frames above its last line
FRAMES_WITHIN = 400
_LINE = re.compile(rb"[^\n]*")


def stamped(text: str) -> bool:
    """Whether the line carries its own time (logging, ISO, syslog, dmesg stamps)."""
    return line_time(text) is not None or has_time_prefix(text)


def follows(data: bytes, start: int) -> int | None:
    """Lines above ``data[start]`` (the start of a line) to the ``Traceback`` line of the
    traceback this line ends, or None when the line does not end one."""
    pos, back = start, 0
    while pos > 0 and back < FRAMES_WITHIN:
        previous = data.rfind(b"\n", 0, pos - 1) + 1
        line = data[previous : pos - 1]
        back += 1
        if line.startswith(TRACEBACK) or line.endswith(TRACEBACK):
            return back
        if not line[:1].isspace():  # frames and their source lines are indented
            return None
        pos = previous
    return None


def leads(data: bytes, end: int) -> int | None:
    """Lines below the message that ends at ``data[end]`` to the ``Traceback`` line that
    continues its record, or None (a stamped line or blank gap first means a new record)."""
    pos = end
    for ahead in range(1, LEADS_WITHIN + 1):
        # the next line without its newline (past the end of data: an empty one)
        below = _LINE.match(data, pos + 1)
        assert below is not None  # "[^\n]*" matches anywhere, if only the empty string
        line = below.group()
        if line.startswith(TRACEBACK) or line.endswith(TRACEBACK):
            return ahead
        if not line.strip() or stamped(line.decode("utf-8", errors="replace")):
            return None
        pos = below.end()
    return None
