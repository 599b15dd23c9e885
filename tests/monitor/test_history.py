"""Probe history: compact day files, unknown stays null, retention, tolerant reading."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.monitor.history import (
    day_file,
    history_record,
    prune_history,
    read_history,
    record_probe,
)
from mpsctl.probe import ProbeResult, take_probe
from mpsctl.settings import load_settings
from tests.conftest import free_port


@pytest.fixture
def dead_url(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MPSCTL_SERVICE_URL", url)
    return url


@pytest.fixture
def critical(dead_url: str) -> ProbeResult:
    return take_probe(load_settings())


def test_record_keeps_unknown_figures_null(critical: ProbeResult) -> None:
    record = history_record(critical)
    assert record["schema"] == "mpsctl.history/1"
    assert record["verdict"] == "CRITICAL"
    assert record["service_running"] is False
    # a stopped service has no memory and no accelerator figures: null, never 0
    assert record["service_rss_bytes"] is None
    assert record["accelerator_limit_bytes"] is None
    assert record["host_total_bytes"] > 0
    assert record["health_ok"] is False


def test_record_appends_to_the_utc_day_file(critical: ProbeResult, isolated_home: Path) -> None:
    first = record_probe(isolated_home, critical, retention_days=30)
    second = record_probe(isolated_home, critical, retention_days=30)
    assert first.path == second.path
    assert first.path.name == f"probe-{critical.time[:10]}.jsonl"
    lines = first.path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["verdict"] for line in lines] == ["CRITICAL", "CRITICAL"]


def test_a_record_after_a_truncated_line_is_kept(
    critical: ProbeResult, isolated_home: Path
) -> None:
    """#13 item 12: a day file ending in a torn line (a writer killed mid-write): the next
    record starts a new line and is read back; only the torn line is lost."""
    first = record_probe(isolated_home, critical, retention_days=30)
    whole = first.path.read_bytes()
    first.path.write_bytes(whole + whole[: len(whole) // 2])  # the second record, torn
    record_probe(isolated_home, critical, retention_days=30)
    lines = first.path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert json.loads(lines[-2])["verdict"] == "CRITICAL"
    assert len(read_history(isolated_home, datetime.now(timezone.utc) - timedelta(days=1))) == 2


def test_retention_deletes_only_old_day_files(isolated_home: Path) -> None:
    today = date(2026, 3, 10)
    keep = day_file(isolated_home, today - timedelta(days=6))
    old = day_file(isolated_home, today - timedelta(days=7))
    other = isolated_home / "history" / "fix.jsonl"
    for path in (keep, old, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n", encoding="utf-8")
    assert prune_history(isolated_home, 7, today) == [old]
    assert keep.exists()
    assert other.exists()
    assert not old.exists()


def test_retention_never_deletes_what_only_looks_like_a_day_file(isolated_home: Path) -> None:
    today = date(2026, 3, 10)
    directory = isolated_home / "history"
    directory.mkdir(parents=True)
    names = ["probe-2020-01-01.jsonl\n", "probe-2020-01-01.jsonl.bak", "xprobe-2020-01-01.jsonl",
             "probe-2020-01-01.json"]  # fmt: skip
    strangers = [directory / name for name in names]
    for path in strangers:
        path.write_text("mine\n", encoding="utf-8")
    (directory / "probe-2020-01-02.jsonl").mkdir()  # a directory with the name
    outside = isolated_home / "precious.txt"
    outside.write_text("keep\n", encoding="utf-8")
    (directory / "probe-2020-01-03.jsonl").symlink_to(outside)
    assert prune_history(isolated_home, 7, today) == []
    assert all(path.exists() for path in strangers)
    assert (directory / "probe-2020-01-02.jsonl").is_dir()
    assert (directory / "probe-2020-01-03.jsonl").is_symlink()
    assert outside.read_text(encoding="utf-8") == "keep\n"


def test_read_history_skips_torn_lines_and_filters_by_time(isolated_home: Path) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    path = day_file(isolated_home, now.date())
    path.parent.mkdir(parents=True)
    inside = (now - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    path.write_text(
        json.dumps({"time": inside, "verdict": "OK"}) + "\n"
        + '{"time": "torn\n'
        + "[1, 2]\n"
        + json.dumps({"time": "not a time", "verdict": "OK"}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    records = read_history(isolated_home, now - timedelta(hours=1), now)
    assert [r["time"] for r in records] == [inside]


def test_probe_record_flag_writes_one_line_and_keeps_the_exit_code(
    dead_url: str, isolated_home: Path
) -> None:
    result = CliRunner().invoke(main, ["probe", "--json", "--record"])
    assert result.exit_code == 2, result.stderr
    files = list((isolated_home / "history").glob("probe-*.jsonl"))
    assert len(files) == 1
    (line,) = files[0].read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["time"] == json.loads(result.stdout)["time"]


def test_an_unwritable_history_is_a_warning_not_a_failure(
    dead_url: str, isolated_home: Path
) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "history").write_text("a file where the directory should be")
    result = CliRunner().invoke(main, ["probe", "--record"])
    assert result.exit_code == 2
    assert "history not recorded" in result.stderr


def test_failed_log_scan_is_unknown_oom_count(critical: ProbeResult) -> None:
    failed = replace(critical, oom_events=None, errors=("log scan: permission denied",))
    assert history_record(failed)["oom_events"] is None
    assert history_record(replace(critical, errors=()))["oom_events"] == len(
        critical.oom_events or ()
    )
