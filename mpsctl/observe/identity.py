"""Is a process found by ``service.match`` the service? The rule, on plain facts.

A regex over command lines also finds a second copy of the app (staging, a neighbour loading
its model) and someone else's uvicorn. Such a process is never the service when:

- its argv names a port other than the service's: ``--port N``, ``--port=N``, ``-p N``,
  ``-pN``, ``--bind host:N`` / ``-b host:N`` (gunicorn), or a Unix socket (``--uds PATH``,
  ``--bind unix:PATH``): the service is reached over TCP at its URL's port;
- the pidfile names a different argv and the process started before the last ``start``
  (what mpsctl started is in the pidfile; an older process with another command line is
  someone else's);
- it listens, but not on the service's port;
- it does not listen yet, and its argv does not name the service's port: only a process that
  mpsctl started (the pidfile, checked before any match) or one that says it will serve the
  service's port may be taken for the service while it loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
        if word == "--uds" or flag == "--uds":
            found = UDS
        elif flag in _PORT_FLAGS and eq:
            found = _port(value) if _port(value) is not None else found
        elif word in _PORT_FLAGS and _port(following) is not None:
            found = _port(following)
        elif word.startswith("-p") and not word.startswith("--") and _port(word[2:]) is not None:
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
