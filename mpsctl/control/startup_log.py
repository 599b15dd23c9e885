"""What a starting service is doing, read from its own log while ``start`` waits for health.

The reference service logs each step of its start-up (importing torch, building the demo
checkpoint, loading the model, uvicorn listening); uvicorn logs the last steps for any
service built on it. ``follow_phases`` reads the lines a start appends and reports each
recognised step as one short phrase through a callback (``Events.phase`` in ``start``).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from mpsctl.storage import open_regular

#: how often the log is read while waiting: a phase shows at most this late
POLL_S = 0.1
#: at most this much of a new line is read into a phrase (a traceback line can be huge)
MAX_LINE = 4096
#: bytes read per poll: a service that writes gigabytes at once is read in steps
MAX_READ = 1024 * 1024

# (pattern searched in a log line, phrase: str.format of the pattern's groups)
PHASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"importing torch and transformers$"), "importing torch and transformers"),
    (re.compile(r"building the demo checkpoint \((\S+)\)"),
     "building the demo checkpoint (first start only: a few seconds of training)"),
    (re.compile(r"built the demo checkpoint in ([\d.]+) s"),
     "built the demo checkpoint in {0} s"),
    (re.compile(r"loading model (\S+) on (\w+)$"), "loading model {0} on {1}"),
    (re.compile(r"model loaded in ([\d.]+) s"), "model loaded in {0} s; starting the server"),
    (re.compile(r"Waiting for application startup"), "application start-up"),
    (re.compile(r"Uvicorn running on (\S+)"), "listening on {0}; waiting for a healthy answer"),
)  # fmt: skip


def phase_of(line: str) -> str | None:
    """The phrase for a log line that marks a start-up step, else None."""
    for pattern, phrase in PHASES:
        found = pattern.search(line.rstrip())
        if found:
            return phrase.format(*found.groups())
    return None


class _Follower:
    def __init__(self, path: Path, offset: int, on_phase: Callable[[str], None]) -> None:
        self.path, self.offset, self.on_phase = path, offset, on_phase
        self.partial = b""
        self.stop = threading.Event()

    def read_new(self) -> None:
        """Report the phases of the complete lines appended since the last read."""
        try:
            fd = open_regular(self.path)
            try:
                data = os.pread(fd, MAX_READ, self.offset)  # a burst is read over several polls
            finally:
                os.close(fd)
        except OSError:
            return  # the log is start's own file: a failure to read it only costs the phases
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[-MAX_LINE:]
        for raw in lines:
            phase = phase_of(raw[-MAX_LINE:].decode("utf-8", "replace"))
            if phase is not None:
                self.on_phase(phase)

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            self.read_new()


@contextlib.contextmanager
def follow_phases(path: Path, offset: int, on_phase: Callable[[str], None]) -> Iterator[None]:
    """Report start-up phases from the lines written to ``path`` after byte ``offset``,
    from a background thread while the block runs, and once more as it ends (so the
    last lines before a healthy answer are reported too)."""
    follower = _Follower(path, offset, on_phase)
    thread = threading.Thread(target=follower.run, name="mpsctl-startup-log", daemon=True)
    thread.start()
    try:
        yield
    finally:
        follower.stop.set()
        thread.join()
        follower.read_new()
