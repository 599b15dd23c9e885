"""The scanner over every recorded memory-death sample: the same events as the parsers, each
kind in ``mpsctl oom --json``, grep's first pass equal to the Python one, copies counted once."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.deaths import scanner
from mpsctl.deaths.allocator import OomEvent
from mpsctl.deaths.counting import Found
from mpsctl.deaths.grep_pass import grep_path
from mpsctl.deaths.parsers import find_deaths
from mpsctl.deaths.scanner import find_events, scan_found
from mpsctl.observe.logtime import iso
from tests.conftest import FIXTURES, read_fixture
from tests.deaths.test_parsers import EXPECTED

HAS_GREP = grep_path() is not None


def copy(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes((FIXTURES / name).read_bytes())
    return path


def shape(found: list[Found]) -> list[tuple[str, int | None, tuple[object, ...]]]:
    return [(f.kind, f.line, f.identity()) for f in found]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scanner_finds_what_the_parsers_find(tmp_path: Path, name: str) -> None:
    path = copy(tmp_path, name)
    now = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    reference = [Found(e, None, e.line, e.time) for e in find_deaths(read_fixture(name), now=now)]
    python = [f for f in scan_found(path, prefilter=False) if not isinstance(f.event, OomEvent)]
    assert shape(python) == shape(reference)
    # the scanner also dates a line without a stamp by its record (the stamped line above)
    for got, ref in zip(python, reference, strict=True):
        assert got.when == (ref.when or got.when)
        assert got.when is not None or ref.when is None
    if HAS_GREP:
        assert shape(scan_found(path, prefilter=True)) == shape(scan_found(path, prefilter=False))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_oom_json_reports_each_kind_with_exact_figures(tmp_path: Path, name: str) -> None:
    path = copy(tmp_path, name)
    result = CliRunner().invoke(main, ["oom", "--json", str(path)])
    assert (result.exit_code, result.stderr) == (0, "")
    doc = json.loads(result.stdout)
    assert doc["schema"] == "mpsctl.oom/1"
    events = doc["events"]
    assert doc["count"] == len(events) == len(EXPECTED[name])
    for event, fields in zip(events, EXPECTED[name], strict=True):
        assert {key: event[key] for key in fields} == {k: jsonable(v) for k, v in fields.items()}
        assert event["summary"]
        assert event["advice"]
        assert event["seen_in"] == [{"file": str(path), "line": event["line"]}]


def jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, datetime):
        return iso(value)
    return value


def test_grep_and_python_agree_on_a_large_mixed_log(tmp_path: Path) -> None:
    """Every recorded sample, OOMs included, spread through ~40 MiB of ordinary lines."""
    samples = sorted(p.name for p in FIXTURES.glob("*.txt") if p.name.startswith(
        ("linux-", "gunicorn-", "uvicorn-", "torch-", "macos-jetsam-3", "macos-jetsam-4")
    ))  # fmt: skip
    filler = b"2026-01-21 19:38:40,123 INFO uvicorn.access 127.0.0.1 POST /generate 200\n" * 8000
    log = tmp_path / "big.log"
    with log.open("wb") as out:
        for name in samples:
            out.write(filler)
            out.write((FIXTURES / name).read_bytes())
    python = scan_found(log, prefilter=False)
    assert len([f for f in python if isinstance(f.event, OomEvent)]) >= 15
    assert len(python) >= 60
    assert HAS_GREP  # every supported system has one; without it only the Python pass runs
    assert shape(scan_found(log, prefilter=True)) == shape(python)


def test_one_failure_logged_six_ways_is_one_event(tmp_path: Path) -> None:
    """An app logging with ``log.exception`` into three files: message line + traceback line
    in each is six lines, one failure."""
    message = read_fixture("torch-mps-oom-6-gib.txt").strip().splitlines()[-1]
    message = message.split("RuntimeError: ", 1)[-1]
    logger = logging.getLogger("six-for-one")
    logger.propagate = False
    handlers = []
    for name in ("backend.log", "error_2026-01-21.log", "app_2026-01-21.log"):
        handler = logging.FileHandler(tmp_path / name)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        handlers.append(handler)
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        logger.exception("generation failed: %s", exc)
    for handler in handlers:
        logger.removeHandler(handler)
        handler.close()
    targets = [(p.name, p) for p in sorted(tmp_path.glob("*.log"))]
    report = find_events(targets)
    assert report.to_json()["count"] == 1
    [(found, _advice)] = report.events
    assert len(found.places) == 6
    assert {file for file, _line in found.places} == {name for name, _ in targets}


def test_an_overflowing_size_hides_nothing(tmp_path: Path) -> None:
    real = read_fixture("torch-mps-oom-6-gib.txt")
    bad = (
        "MPS backend out of memory (MPS allocated: " + "9" * 400 + " GB, other allocations: "
        "1.00 GB, max allowed: 18.13 GB). Tried to allocate 1.00 MB on private pool."
    )
    log = tmp_path / "error.log"
    log.write_text(f"2026-01-21 19:38:40 ERROR {bad}\n2026-01-21 19:38:41 ERROR x\n{real}")
    for prefilter in (True, False):
        found = scan_found(log, prefilter=prefilter)
        assert len(found) == 2
        assert isinstance(found[0].event, OomEvent)
        assert found[0].event.allocated_bytes is None
        assert "9" * 400 in found[0].event.raw
        assert found[1].event.requested_bytes == read_requested(real)


def read_requested(text: str) -> int | None:
    event = scanner.parse_oom(text)
    assert event is not None
    return event.requested_bytes


def test_grep_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpsctl.deaths import grep_pass

    monkeypatch.setattr(grep_pass, "_GREP", [])
    monkeypatch.setenv("MPSCTL_GREP", "")
    assert grep_path() is None
    monkeypatch.setattr(grep_pass, "_GREP", [])
    monkeypatch.delenv("MPSCTL_GREP")
    assert (grep_path() is None) == (not os.path.exists("/usr/bin/grep") and not HAS_GREP)


def test_a_grep_that_answers_otherwise_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grep printing its fields in another order must not send the parser astray."""
    from mpsctl.deaths import grep_pass

    log = copy(tmp_path, "torch-cpu-oom-2-cant-allocate-errcode12-CPUAllocator65.txt")
    other = tmp_path / "othergrep"
    other.write_text("#!/bin/sh\ncat >/dev/null\necho '7:1:CPUAllocator'\n")  # offset, line swapped
    other.chmod(0o755)
    monkeypatch.setattr(grep_pass, "_GREP", [])
    monkeypatch.setenv("MPSCTL_GREP", str(other))
    assert grep_path() == str(other)
    assert shape(scan_found(log)) == shape(scan_found(log, prefilter=False))
    assert [f.kind for f in scan_found(log)] == ["cpu_alloc"]
