"""fix's audit trail: one JSON line per run, read back by the restart-loop guard."""

from __future__ import annotations

import time
from pathlib import Path

from mpsctl.control import audit
from mpsctl.units import iso_utc


def test_append_and_count_recent_restarts(tmp_path: Path) -> None:
    path = audit.fix_history_path(tmp_path)
    now = time.time()
    audit.append_record(path, {"time": iso_utc(now - 7200), "restarted": True})
    audit.append_record(path, {"time": iso_utc(now - 60), "restarted": True})
    audit.append_record(path, {"time": iso_utc(now - 30), "restarted": False})
    with path.open("a") as handle:
        handle.write('{"torn": \n')  # a half-written line must not break the guard

    assert len(audit.read_records(path)) == 3
    assert len(audit.restarts_within(path, 3600, now)) == 1
    assert len(audit.restarts_within(path, 3 * 3600, now)) == 2
    assert path.read_text().count("\n") == 4


def test_missing_history_is_empty(tmp_path: Path) -> None:
    assert audit.restarts_within(tmp_path / "none.jsonl", 3600, time.time()) == []
