"""Whose kill a kill is, each rule at its boundary, in process: the names the kernel gives a
run, the runs file (torn lines, the pidfile's run, one run recorded twice), when a run ends
(the next start, or its own kill) and the two ways a kill is the service's (its pid while
that run was alive or at no time; its name while a run was alive, one second of slack
before the start). Kill lines are recorded ones (tests/fixtures); pids, names and times are
set here, one rule per test."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mpsctl.deaths.attribution import (
    RUNS,
    Run,
    _ends,
    names_of,
    read_runs,
    record_run,
    split,
)
from mpsctl.deaths.counting import Found
from mpsctl.deaths.parsers import find_deaths
from mpsctl.observe.processes import PidRecord
from tests.conftest import read_fixture

KILL = find_deaths(read_fixture("linux-oomkill-9-journalctl-python-systemd-unit.txt"))[0]
T0 = datetime(2026, 11, 28, 3, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def kill(pid: int, process: str = "worker", when: datetime | None = None) -> Found:
    return Found(event=replace(KILL, pid=pid, process=process), file="k.log", line=1, when=when)  # type: ignore[type-var]


A = Run(100, T0, frozenset({"uvicorn"}))
B = Run(200, at(100), frozenset({"uvicorn"}))


def test_the_names_are_the_first_three_words_basenames_as_the_kernel_cuts_them() -> None:
    argv = ["/v/bin/python3.11", "/v/bin/uvicorn", "app.main:app", "fourth-word"]
    assert names_of(argv) == {"python3.11", "uvicorn", "app.main:app"}
    assert names_of(["python", "-m", "uvicorn"]) == {"python", "uvicorn"}
    assert names_of(["/srv/bin/", "a-very-long-program-name"]) == {"a-very-long-pro"}
    assert names_of([]) == frozenset()


def test_runs_are_read_back_oldest_first_with_the_pidfiles_run(tmp_path: Path) -> None:
    record_run(tmp_path, 200, T0.timestamp() + 100, ["/v/bin/uvicorn", "app:app"])
    record_run(tmp_path, 100, T0.timestamp(), ["/v/bin/python", "-m", "uvicorn"])
    history = tmp_path / RUNS
    assert stat.S_IMODE(os.stat(history.parent).st_mode) == 0o700
    assert json.loads(history.read_text().splitlines()[0]) == {
        "pid": 200, "create_time": T0.timestamp() + 100, "argv": ["/v/bin/uvicorn", "app:app"]
    }  # fmt: skip
    current = PidRecord(300, T0.timestamp() + 200, ("/v/bin/gunicorn",))
    assert read_runs(tmp_path, current) == [
        Run(100, T0, frozenset({"python", "uvicorn"})),
        Run(200, at(100), frozenset({"uvicorn", "app:app"})),
        Run(300, at(200), frozenset({"gunicorn"})),
    ]
    assert read_runs(tmp_path, "invalid") == read_runs(tmp_path)  # a pidfile that is not one
    assert [r.pid for r in read_runs(tmp_path)] == [100, 200]


def test_torn_and_foreign_lines_are_skipped_not_the_rest(tmp_path: Path) -> None:
    history = tmp_path / RUNS
    history.parent.mkdir()
    good = {"pid": 7, "create_time": T0.timestamp(), "argv": ["/v/bin/uvicorn", 5, "x:app"]}
    history.write_text("\n".join([
        '{"pid": 5, "create_ti',  # torn
        "[1, 2]",
        json.dumps({"pid": "5", "create_time": 1.0}),
        json.dumps({"pid": 5, "create_time": "1.0"}),
        json.dumps({"pid": 6}),
        json.dumps({"pid": 8, "create_time": T0.timestamp() + 1, "argv": "uvicorn x:app"}),
        json.dumps(good),
    ]) + "\n", encoding="utf-8")  # fmt: skip
    assert read_runs(tmp_path) == [
        Run(7, T0, frozenset({"uvicorn", "x:app"})),
        Run(8, at(1), frozenset()),
    ]


def test_one_run_recorded_twice_is_one(tmp_path: Path) -> None:
    record_run(tmp_path, 100, 1000.001, ["/v/bin/uvicorn"])
    record_run(tmp_path, 100, 1000.004, ["/v/bin/uvicorn"])  # the same to 1/100 s
    assert len(read_runs(tmp_path)) == 1
    record_run(tmp_path, 100, 1000.02, ["/v/bin/uvicorn"])  # 2/100 s later: pid reused
    assert len(read_runs(tmp_path)) == 2


def test_a_home_that_cannot_hold_the_history_loses_the_record_not_the_start(
    tmp_path: Path,
) -> None:
    home = tmp_path / "a-file"
    home.write_text("")
    record_run(home, 100, 1.0, ["uvicorn"])  # no exception
    assert read_runs(home) == []
    assert read_runs(tmp_path / "missing") == []


def test_a_run_ends_at_the_next_start_or_its_own_kill() -> None:
    assert _ends([A, B], []) == [at(100), None]
    assert _ends([A], []) == [None]
    assert _ends([A, B], [kill(100, when=at(30))]) == [at(30), None]
    assert _ends([A, B], [kill(200, when=at(150)), kill(200, when=at(130))]) == [at(100), at(130)]
    # a kill of that pid from before the run (one second of slack) or with no time: not its end
    assert _ends([A, B], [kill(200, when=at(98)), kill(100, when=None)]) == [at(100), None]
    assert _ends([A, B], [kill(200, when=at(99))]) == [at(100), at(99)]
    assert _ends([A, B], [kill(100, when=at(150))]) == [at(100), None]  # after its end
    assert _ends([A, B], [kill(999, when=at(50))]) == [at(100), None]


def mine(item: Found, runs: list[Run] = [A, B], names: frozenset[str] = frozenset()) -> bool:  # noqa: B006
    got, others = split([item], runs, names)
    assert len(got) + len(others) == 1
    return got == [item]


def test_a_kill_of_a_runs_pid_while_it_was_alive_or_at_no_time_is_the_services() -> None:
    assert mine(kill(100, when=at(50)))
    assert mine(kill(100, when=None))
    assert mine(kill(100, when=at(-1)))  # the start's own second
    assert not mine(kill(100, when=at(-2)))
    assert mine(kill(100, when=at(100)))  # up to the next start, inclusive
    assert not mine(kill(100, when=at(101)))  # the pid reused by someone else later
    assert mine(kill(200, when=at(10_000)))  # the last run: no end
    assert not mine(kill(300, when=at(50)))
    assert not mine(kill(300, when=None))


def test_a_kill_by_the_services_name_while_a_run_was_alive_is_the_services() -> None:
    assert mine(kill(555, "uvicorn", when=at(50)))
    assert mine(kill(555, "uvicorn", when=at(-1)))
    assert not mine(kill(555, "uvicorn", when=at(-2)))  # before any run
    assert not mine(kill(555, "uvicorn", when=None))  # no time: only a pid can tie it
    assert not mine(kill(555, "python", when=at(50)))
    # a run killed at 30 has ended: a kill by its name at 30 or later is someone else's
    ended = [A]
    got, others = split([kill(100, when=at(30)), kill(555, "uvicorn", when=at(30))], ended,
                        frozenset())  # fmt: skip
    assert ([k.event.pid for k in got], [k.event.pid for k in others]) == ([100], [555])  # type: ignore[union-attr]
    got, _ = split([kill(100, when=at(30)), kill(555, "uvicorn", when=at(29))], ended,
                   frozenset())  # fmt: skip
    assert [k.event.pid for k in got] == [100, 555]  # type: ignore[union-attr]


def test_the_configured_names_stand_in_for_a_run_that_recorded_none() -> None:
    bare = [Run(100, T0, frozenset())]
    assert not mine(kill(555, "uvicorn", when=at(5)), bare)
    assert mine(kill(555, "uvicorn", when=at(5)), bare, frozenset({"uvicorn"}))
    # a run's own names win over the configured ones
    assert not mine(kill(555, "gunicorn", when=at(5)), [A], frozenset({"gunicorn"}))


def test_a_name_is_compared_as_the_kernel_cuts_it() -> None:
    long_run = [Run(100, T0, names_of(["/v/bin/a-very-long-program-name"]))]
    assert mine(kill(555, "a-very-long-program-name", when=at(5)), long_run)
    assert mine(kill(555, "a-very-long-pro", when=at(5)), long_run)
