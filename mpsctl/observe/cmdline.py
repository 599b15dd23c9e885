"""A process's command line as the process table shows it, and whether it is the argv
``start`` ran. Standard library only: a bare ``mpsctl stop`` checks it before psutil is loaded
(``mpsctl.control.quick_stop``), and must decide as the full path does. READ-ONLY."""

from __future__ import annotations

import os


def split_cmdline(data: str) -> list[str]:
    """The words of ``/proc/PID/cmdline`` (decoded) as psutil's ``Process.cmdline`` gives
    them: NUL-separated, empty words kept; a process that rewrote its title with spaces and
    no trailing NUL (setproctitle) is split on the spaces."""
    if not data:
        return []
    sep = "\0" if data.endswith("\0") else " "
    if data.endswith(sep):
        data = data[:-1]
    words = data.split(sep)
    if sep == "\0" and len(words) == 1 and " " in data:
        words = data.split(" ")
    return words


def argv_matches(recorded: tuple[str, ...], cmdline: tuple[str, ...]) -> bool:
    """Is ``cmdline`` (what the process table shows) the ``recorded`` argv start ran?

    A script's interpreter is prepended by the kernel (``python /venv/bin/uvicorn ...``) and
    exec may turn the program into its full path, so the program is compared by its name
    and the arguments as the tail of the command line.
    """
    if not recorded or not cmdline:
        return True  # nothing to compare: an old pidfile, or a command line we may not read
    if tuple(cmdline) == tuple(recorded):
        return True
    program = os.path.basename(recorded[0])
    rest = tuple(recorded[1:])
    if len(cmdline) == 1 and " " in cmdline[0]:  # a rewritten process title
        return program in cmdline[0]
    if rest and tuple(cmdline[-len(rest) :]) != rest:
        return False
    head = cmdline[: len(cmdline) - len(rest)] if rest else cmdline
    return any(os.path.basename(w) == program for w in head)
