"""Which ``service.match`` hits are the service: the rule on plain facts, each case."""

from __future__ import annotations

import pytest

from mpsctl.observe.processes.matching import UDS, Candidate, argv_port, is_service

UVICORN = ("/srv/mvp/venv/bin/python", "/srv/mvp/venv/bin/uvicorn", "app.main:app")


@pytest.mark.parametrize(
    ("words", "port"),
    [
        (("--port", "8000"), 8000),
        (("--port=8001",), 8001),
        (("-p", "8002"), 8002),
        (("-p8003",), 8003),
        (("--bind", "127.0.0.1:8004"), 8004),
        (("--bind=0.0.0.0:8005",), 8005),
        (("-b", "[::1]:8006"), 8006),
        (("--bind", "unix:/run/app.sock"), UDS),
        (("--uds", "/run/app.sock"), UDS),
        (("--uds=/run/app.sock",), UDS),
        (("--host", "127.0.0.1"), None),
        ((), None),
        (("--port", "http"), None),
        (("--port", "70000"), None),
        (("--port", "0"), None),
        (("--port", "8000", "--port", "9000"), 9000),  # the last one wins
        (("--port", "8000", "--port=oops"), 8000),
        (("--bind", "localhost"), None),
        (("--proxy-headers",), None),
        (("-p",), None),
    ],
)
def test_argv_port(words: tuple[str, ...], port: int | None) -> None:
    assert argv_port((*UVICORN, *words)) == port


def test_another_port_in_the_argv_is_never_the_service() -> None:
    loading = Candidate((*UVICORN, "--port", "50467"), frozenset(), 100.0)
    assert is_service(loading, 8000, argv_same=True) == (False, "its argv names port 50467")
    listening_here = Candidate((*UVICORN, "--port=9000"), frozenset({8000}), 100.0)
    assert is_service(listening_here, 8000, argv_same=True) == (False, "its argv names port 9000")
    uds = Candidate((*UVICORN, "--uds", "/tmp/s"), frozenset(), 100.0)
    assert is_service(uds, 8000, argv_same=True) == (False, "serves a Unix socket")


def test_a_not_yet_listening_process_needs_the_services_port_in_its_argv() -> None:
    ours = Candidate((*UVICORN, "--port", "8000"), frozenset(), 100.0)
    assert is_service(ours, 8000, argv_same=True) == (True, "")
    silent = Candidate(UVICORN, frozenset(), 100.0)
    assert is_service(silent, 8000, argv_same=True) == (
        False,
        "not listening, and its argv does not name the service's port",
    )


def test_listening_decides_when_the_argv_says_nothing() -> None:
    assert is_service(Candidate(UVICORN, frozenset({8000, 9100}), 1.0), 8000,
                      argv_same=True) == (True, "")  # fmt: skip
    assert is_service(Candidate(UVICORN, frozenset({9100, 9000}), 1.0), 8000,
                      argv_same=True) == (False, "listens on 9000, 9100")  # fmt: skip


def test_an_older_process_with_another_argv_than_the_pidfile_is_someone_elses() -> None:
    older = Candidate((*UVICORN, "--port", "8000"), frozenset({8000}), 100.0,
                      ("uvicorn", "other:app"), 200.0)  # fmt: skip
    why = "the pidfile names another command line, and it started before"
    assert is_service(older, 8000, argv_same=False) == (False, why)
    same_second = Candidate(UVICORN, frozenset({8000}), 200.0, ("x",), 200.0)
    assert is_service(same_second, 8000, argv_same=False) == (False, why)
    # started after the last start (by hand, since): the pidfile does not speak for it
    newer = Candidate(UVICORN, frozenset({8000}), 200.5, ("uvicorn", "other:app"), 200.0)
    assert is_service(newer, 8000, argv_same=False) == (True, "")
    # the same argv as the pidfile: the record does not rule it out
    assert is_service(older, 8000, argv_same=True) == (True, "")
    # no pidfile time: nothing to compare
    unknown = Candidate(UVICORN, frozenset({8000}), 100.0, ("x",), None)
    assert is_service(unknown, 8000, argv_same=False) == (True, "")
