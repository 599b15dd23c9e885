"""Which processes matching ``service.match`` are the service, and pidfile argv checks.

Read-only helpers of :func:`mpsctl.observe.processes.find_service`: a regex over command lines
finds candidates; the ports their trees listen on decide which one is the service.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import psutil

from mpsctl.errors import ConfigError
from mpsctl.observe.processes.tree import GONE, own_user, protected_pids, tree
from mpsctl.settings import Settings

Clock = Callable[[], float]


def compile_match(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"service.match: invalid regular expression {pattern!r}: {exc}") from None


def _absolute_words(cwd_of: Callable[[], str], cmdline: list[str]) -> str | None:
    """The command line with relative paths (``venv/bin/uvicorn``) made absolute."""
    if not any("/" in w and not w.startswith(("/", "-")) for w in cmdline):
        return None
    try:
        cwd = cwd_of()
    except (*GONE, psutil.AccessDenied, OSError):
        return None
    words = [
        os.path.normpath(os.path.join(cwd, w)) if "/" in w and not w.startswith(("/", "-"))
        and ":" not in w else w
        for w in cmdline
    ]  # fmt: skip
    return " ".join(words)


def _proc_command_lines() -> Iterator[tuple[int, str, bytes]]:
    """(pid, command line, raw bytes) of every process with a command line, from
    ``/proc/PID/cmdline``: one read per process and no process object, so a host with
    thousands of processes costs milliseconds, not one psutil object (four files read) per
    process. Zombies and kernel threads have an empty command line and are left out, as
    psutil's reading leaves them. The line is psutil's words joined by spaces."""
    for pid in psutil.pids():
        try:
            fd = os.open(f"/proc/{pid}/cmdline", os.O_RDONLY)
        except OSError:  # gone, or not ours to read
            continue
        chunks = []
        try:
            while chunk := os.read(fd, 1 << 16):  # a command line may be megabytes long
                chunks.append(chunk)
        except OSError:
            continue
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if data:
            line = data[:-1].replace(b"\0", b" ") if data.endswith(b"\0") else data
            yield pid, os.fsdecode(line.removesuffix(b" ") if line is data else line), data


def _words(data: bytes) -> list[str]:
    """psutil's argv from ``/proc/PID/cmdline``: NUL-separated, or one title rewritten with
    spaces."""
    sep = b"\0" if data.endswith(b"\0") else b" "
    words = data.removesuffix(sep).split(sep)
    if sep == b"\0" and len(words) == 1 and b" " in data:
        words = data.removesuffix(sep).split(b" ")
    return [os.fsdecode(w) for w in words]


def matching(pattern: str) -> list[psutil.Process]:
    """This user's processes whose command line matches ``pattern`` (never mpsctl itself
    or its ancestors). One pass over the process table; a process object is made only for
    a match."""
    regex = compile_match(pattern)
    protected = protected_pids()
    found = []
    if not os.path.isdir("/proc/self"):
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.pid in protected or proc.info.get("status") == psutil.STATUS_ZOMBIE:
                continue
            cmdline = proc.info.get("cmdline")
            if not cmdline:
                continue
            if not regex.search(" ".join(cmdline)):
                absolute = _absolute_words(proc.cwd, cmdline)
                if absolute is None or not regex.search(absolute):
                    continue
            if own_user(proc):
                found.append(proc)
        return found
    for pid, line, data in _proc_command_lines():
        if pid in protected:
            continue
        if not regex.search(line):
            if b"/" not in data:
                continue  # no relative path to make absolute
            cwd_of = partial(os.readlink, f"/proc/{pid}/cwd")
            absolute = _absolute_words(cwd_of, _words(data))
            if absolute is None or not regex.search(absolute):
                continue
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except GONE:
            continue
        except psutil.AccessDenied:
            pass  # another user's: own_user says no
        if own_user(proc):
            found.append(proc)
    return found


def listening_ports(procs: Iterable[psutil.Process]) -> set[int]:
    """The TCP ports these processes listen on (those we may not inspect are left out)."""
    ports: set[int] = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except (*GONE, psutil.AccessDenied):
            continue
        ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr)
    return ports


def is_the_service(root: psutil.Process, settings: Settings, clock: Clock) -> bool:
    """A match is the service when its tree listens on the service's port, or on no port
    while it is still loading (younger than start_timeout)."""
    ports = listening_ports(tree([root]))
    if settings.service.port in ports:
        return True
    if ports:
        return False
    try:
        age = clock() - root.create_time()
    except (*GONE, psutil.AccessDenied):
        return False
    return age <= settings.service.start_timeout


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


def roots_of(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Drop the matches that descend from another match (a reloader's worker)."""
    pids = {p.pid for p in procs}
    roots = []
    for proc in procs:
        try:
            if not any(parent.pid in pids for parent in proc.parents()):
                roots.append(proc)
        except (*GONE, psutil.AccessDenied):
            continue
    return roots
