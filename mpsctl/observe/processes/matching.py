"""Which processes matching ``service.match`` are the service, and pidfile argv checks.

Read-only helpers of :func:`mpsctl.observe.processes.find_service`: a regex over command lines
finds candidates; the ports their trees listen on decide which one is the service.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import psutil

from mpsctl.errors import ConfigError
from mpsctl.observe.processes.pidfile import PidRecord
from mpsctl.observe.processes.tree import GONE, living, own_user, protected_pids, tree
from mpsctl.observe.procfs import argv_matches, split_cmdline
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
            yield pid, _line(data), data


def _line(data: bytes) -> str:
    """psutil's command line from ``/proc/PID/cmdline``: the NUL-terminated words joined by
    spaces, or a title the process rewrote, less one trailing space."""
    if data.endswith(b"\0"):
        return os.fsdecode(data[:-1].replace(b"\0", b" "))
    return os.fsdecode(data.removesuffix(b" "))


def _words(data: bytes) -> list[str]:
    """psutil's argv from ``/proc/PID/cmdline`` (the one rule: ``procfs.split_cmdline``)."""
    return split_cmdline(os.fsdecode(data))


def matching(pattern: str) -> list[psutil.Process]:
    """This user's processes whose command line matches ``pattern`` (never mpsctl itself
    or its ancestors). One pass over the process table; a process object is made only for
    a match."""
    regex = compile_match(pattern)
    protected = protected_pids()
    if not os.path.isdir("/proc/self"):
        return _matching_psutil(regex, protected)
    found = []
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
        live = living(pid)
        if live is not None and own_user(live):  # another user's: own_user says no
            found.append(live)
    return found


def _matching_psutil(regex: re.Pattern[str], protected: set[int]) -> list[psutil.Process]:
    """``matching``'s pass where there is no ``/proc`` (macOS): psutil's process table."""
    found = []
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


def is_the_service(
    root: psutil.Process, settings: Settings, record: PidRecord | None = None
) -> bool:
    """A match is the service by the identity rule (``is_service``, below): the ports its
    argv names and its tree listens on, and what a stale pidfile ``record`` says."""
    try:
        argv = tuple(root.cmdline())
        created = root.create_time()
    except (*GONE, psutil.AccessDenied):
        return False
    candidate = Candidate(
        argv,
        frozenset(listening_ports(tree([root]))),
        created,
        record.argv if record is not None else None,
        record.create_time if record is not None else None,
    )
    same = record is None or argv_matches(record.argv, argv)
    return is_service(candidate, settings.service.port, argv_same=same)[0]


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


# --------------------------------------------------------------------------- identity
# Is a process found by ``service.match`` the service? The rule, on plain facts.
#
# A regex over command lines also finds a second copy of the app (staging, a neighbour loading
# its model) and someone else's uvicorn. Such a process is never the service when:
#
# - its argv names a port other than the service's: ``--port N``, ``--port=N``, ``-p N``,
#   ``-pN``, ``--bind host:N`` / ``-b host:N`` (gunicorn), or a Unix socket (``--uds PATH``,
#   ``--bind unix:PATH``): the service is reached over TCP at its URL's port;
# - the pidfile names a different argv and the process started before the last ``start``
#   (what mpsctl started is in the pidfile; an older process with another command line is
#   someone else's);
# - it listens, but not on the service's port;
# - it does not listen yet, and its argv does not name the service's port: only a process that
#   mpsctl started (the pidfile, checked before any match) or one that says it will serve the
#   service's port may be taken for the service while it loads.

#: what ``argv_port`` returns for a Unix socket
UDS = -1

_PORT_FLAGS = ("--port", "-p")
_BIND_FLAGS = ("--bind", "-b")


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def _bind(value: str) -> int | None:
    """``host:port``, ``[::1]:port``, ``:port`` -> port; ``unix:PATH`` -> UDS."""
    if value.startswith("unix:"):
        return UDS
    if ":" in value:
        return _port(value.rpartition(":")[2])
    return None


def argv_port(argv: Sequence[str]) -> int | None:
    """The port a server's argv says it serves: a number, ``UDS`` for a Unix socket, or None
    (the argv does not say; the last flag wins, as argparse and click read them)."""
    found: int | None = None
    words = list(argv)
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        flag, eq, value = word.partition("=")
        if flag == "--uds":
            found = UDS
        elif flag in _PORT_FLAGS and eq:
            found = _port(value) if _port(value) is not None else found
        elif word in _PORT_FLAGS and _port(following) is not None:
            found = _port(following)
        elif word.startswith("-p") and _port(word[2:]) is not None:  # -pN (never --port)
            found = _port(word[2:])
        elif flag in _BIND_FLAGS and eq:
            found = _bind(value) if _bind(value) is not None else found
        elif word in _BIND_FLAGS and _bind(following) is not None:
            found = _bind(following)
    return found


@dataclass(frozen=True)
class Candidate:
    """What is known of one process that matches ``service.match``."""

    argv: tuple[str, ...]
    listening: frozenset[int]  # TCP ports its tree listens on
    create_time: float
    #: the pidfile's argv and start time, when a (stale) pidfile names another process
    pidfile_argv: tuple[str, ...] | None = None
    pidfile_started: float | None = None


def is_service(candidate: Candidate, service_port: int, *, argv_same: bool) -> tuple[bool, str]:
    """(is it the service, why not); ``argv_same``: its argv is the pidfile's (or there is
    none to compare)."""
    named = argv_port(candidate.argv)
    if named == UDS:
        return False, "serves a Unix socket"
    if named is not None and named != service_port:
        return False, f"its argv names port {named}"
    if (
        not argv_same
        and candidate.pidfile_started is not None
        and candidate.create_time <= candidate.pidfile_started
    ):
        return False, "the pidfile names another command line, and it started before"
    if service_port in candidate.listening:
        return True, ""
    if candidate.listening:
        ports = ", ".join(str(p) for p in sorted(candidate.listening))
        return False, f"listens on {ports}"
    if named == service_port:
        return True, ""
    return False, "not listening, and its argv does not name the service's port"
