"""A probe's walk through the house: each room is entered at most twice.

``mpsctl probe --json`` runs in-process under ``sys.setprofile``. A room is a module, except
``observe/processes/``, which is one unit (one entry, helpers that do not call back up). A
room is entered when a function of another room calls into it; one run of that function
enters it once however many of its functions it calls (``find_service`` reading the pidfile,
then the tree). A walk that goes back and forth between modules that are one idea shows up as
several runs entering the same module. Not counted: the foundation floor (units, settings,
paths...: the ground every room stands on), dunder methods (construction, comparison) and the
methods of a result value (a dataclass: ``to_json``, properties), which read what is in hand.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.control.pidfile import write_pidfile
from mpsctl.observe.processes import PidRecord
from tests.conftest import PYTHON, free_port, read_fixture
from tests.test_structure import FLOORS

MOST_VISITS = 2
ONE_UNIT = "mpsctl.observe.processes"
FOUNDATION = {f"mpsctl.{name}" for name in FLOORS[0]} | {"mpsctl"}


def unit_of(frame: FrameType) -> str | None:
    name = str(frame.f_globals.get("__name__", ""))
    if not name.startswith("mpsctl"):
        return None
    return ONE_UNIT if name.startswith(ONE_UNIT + ".") else name


def probe_visits() -> tuple[Counter[str], list[str], dict[str, Any]]:
    runs: dict[int, int] = {}  # a live frame -> the number of its run (dead frames' ids recur)
    serial = itertools.count(1)
    entered: set[tuple[int, str]] = set()  # (a function's run, the room it called into)
    path: list[str] = []

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event == "return":
            runs.pop(id(frame), None)
            return
        callee = unit_of(frame) if event == "call" else None
        if callee is None:
            return
        runs[id(frame)] = next(serial)
        caller = frame.f_back
        while caller is not None and unit_of(caller) is None:
            caller = caller.f_back
        code = frame.f_code.co_name
        this = frame.f_locals.get("self")
        if (
            caller is None
            or unit_of(caller) == callee
            or callee in FOUNDATION
            or code.startswith("__")
            or (this is not None and dataclasses.is_dataclass(this))
        ):
            return
        entered.add((runs.get(id(caller), 0), callee))
        path.append(f"{unit_of(caller)}.{caller.f_code.co_name} -> {callee}.{code}")

    runner = CliRunner()
    sys.setprofile(profile)
    try:
        result = runner.invoke(main, ["probe", "--json"])
    finally:
        sys.setprofile(None)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    visits = Counter(room for _visit, room in entered)
    return visits, path, json.loads(result.stdout)


@pytest.fixture
def service(tmp_path: Path, write_config):  # type: ignore[no-untyped-def]
    """A real process answering HTTP on 127.0.0.1, its pidfile, a log with a recorded OOM."""
    port = free_port()
    log = tmp_path / "service.log"
    log.write_text(read_fixture("torch-mps-oom-1.txt"), encoding="utf-8")
    write_config(
        f'[service]\nurl = "http://127.0.0.1:{port}"\nhealth_path = "/"\nlog_file = "{log}"\n'
    )
    child = subprocess.Popen(
        [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not any(c.laddr.port == port for c in psutil.Process(child.pid).net_connections()):
            assert time.monotonic() < deadline, "the stand-in service did not listen"
            time.sleep(0.05)
        proc = psutil.Process(child.pid)
        from mpsctl.paths import home_dir

        write_pidfile(home_dir() / "service.pid",
                      PidRecord(child.pid, proc.create_time(), tuple(proc.cmdline())))  # fmt: skip
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_probe_of_a_running_service_enters_each_room_at_most_twice(service) -> None:  # type: ignore[no-untyped-def]
    probe_visits()  # the first probe imports and opens the log cursor; the walk is the next
    visits, path, doc = probe_visits()
    assert doc["service"]["running"] is True
    assert doc["health"]["ok"] is True
    assert visits[ONE_UNIT] >= 1  # the walk really went through the rooms it counts
    assert visits["mpsctl.client"] >= 1
    over = {room: n for room, n in visits.items() if n > MOST_VISITS}
    assert over == {}, "\n".join(path)


def test_a_probe_of_a_dead_service_enters_each_room_at_most_twice(service) -> None:  # type: ignore[no-untyped-def]
    service.kill()
    service.wait()
    probe_visits()
    visits, path, doc = probe_visits()
    assert doc["service"]["pidfile_state"] == "stale"
    assert visits["mpsctl.deaths.how_it_died"] >= 1  # how it died was looked for
    over = {room: n for room, n in visits.items() if n > MOST_VISITS}
    assert over == {}, "\n".join(path)
