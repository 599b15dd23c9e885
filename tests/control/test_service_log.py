"""The service log: appended, rotated by size before a start, never a lost line."""

from __future__ import annotations

import os
from pathlib import Path

from mpsctl.control import service_log


def test_rotation_keeps_backups_and_drops_only_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    for run in range(4):
        log.write_text(f"run {run}\n" * 100)
        assert service_log.rotate_if_needed(log, max_bytes=10, backups=2)
    assert not log.exists()
    assert (tmp_path / "service.log.1").read_text().startswith("run 3")
    assert (tmp_path / "service.log.2").read_text().startswith("run 2")
    assert not (tmp_path / "service.log.3").exists()


def test_no_rotation_below_the_limit_or_without_backups(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text("x" * 100)
    assert not service_log.rotate_if_needed(log, max_bytes=1000, backups=3)
    assert not service_log.rotate_if_needed(log, max_bytes=10, backups=0)
    assert not service_log.rotate_if_needed(log, max_bytes=0, backups=3)
    assert not service_log.rotate_if_needed(tmp_path / "missing.log", max_bytes=1, backups=3)
    assert log.read_text() == "x" * 100


def test_append_never_truncates_and_tail_reads_this_run_only(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text("earlier run\n")
    fd = service_log.open_append(log)
    offset = os.fstat(fd).st_size
    try:
        for n in range(30):
            service_log.append_line(fd, f"line {n}")
    finally:
        os.close(fd)
    assert log.read_text().startswith("earlier run\nline 0\n")
    tail = service_log.tail_lines(log, 20, offset=offset)
    assert tail == [f"line {n}" for n in range(10, 30)]
    assert service_log.tail_lines(log, 5, offset=log.stat().st_size) == []
