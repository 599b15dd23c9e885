"""report: statistics over a recorded history, restarts from fix's audit trail, the plot."""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.monitor.history import day_file
from mpsctl.monitor.report import count_oom_events
from mpsctl.stress_results import percentile

GIB = 1024**3
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def sample(ago: timedelta, verdict: str, host_pct: float, **extra: Any) -> dict[str, Any]:
    """One line in the documented mpsctl.history/1 format."""
    record: dict[str, Any] = {
        "schema": "mpsctl.history/1", "time": iso(NOW - ago), "source": "probe",
        "service": "mvp", "verdict": verdict, "reasons": [],
        "host_total_bytes": 16 * GIB, "host_used_bytes": int(host_pct / 100 * 16 * GIB),
        "host_available_bytes": int((100 - host_pct) / 100 * 16 * GIB),
        "host_used_percent": host_pct, "swap_total_bytes": 0, "swap_used_bytes": 0,
        "swap_used_percent": None, "service_running": True, "service_rss_bytes": None,
        "service_footprint_bytes": None, "accelerator_device": "mps",
        "accelerator_allocated_bytes": None, "accelerator_held_bytes": None,
        "accelerator_limit_bytes": 8 * GIB, "accelerator_limit_percent": None,
        "health_ok": True, "health_latency_ms": 12.0, "oom_events": 0, "oom_times": [],
    }  # fmt: skip
    record.update(extra)
    return record


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


@pytest.fixture
def history(isolated_home: Path) -> Path:
    oom_time = iso(NOW - timedelta(hours=2, minutes=10))
    records = [
        sample(timedelta(hours=30), "CRITICAL", 99.0),  # outside --since 24h
        sample(timedelta(hours=3), "OK", 40.0, service_rss_bytes=2 * GIB,
               accelerator_held_bytes=1 * GIB),
        sample(timedelta(hours=2), "WARNING", 60.0, service_footprint_bytes=3 * GIB,
               service_rss_bytes=1 * GIB, accelerator_held_bytes=2 * GIB, oom_events=1,
               oom_times=[oom_time]),
        sample(timedelta(hours=1), "CRITICAL", 80.0, service_running=False, health_ok=False,
               health_latency_ms=None, accelerator_limit_bytes=None, oom_events=1,
               oom_times=[oom_time]),
        sample(timedelta(minutes=30), "OK", 50.0, service_rss_bytes=int(2.5 * GIB),
               accelerator_held_bytes=1 * GIB),
    ]  # fmt: skip
    for record in records:
        when = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        write_lines(day_file(isolated_home, when.date()), [json.dumps(record)])
    write_lines(day_file(isolated_home, NOW.date()), ['{"time": "torn', "not json at all"])
    fix = isolated_home / "history" / "fix.jsonl"
    write_lines(fix, [
        json.dumps({"time": iso(NOW - timedelta(hours=40)), "result": "fixed", "restarted": True}),
        json.dumps({"time": iso(NOW - timedelta(hours=2)), "trigger": "if-unhealthy",
                    "result": "healthy", "restarted": False}),
        '{"time": "2026-',
        json.dumps({"time": iso(NOW - timedelta(minutes=50)), "trigger": "if-unhealthy",
                    "result": "fixed", "restarted": True, "message": "restarted; verdict OK"}),
        json.dumps({"time": iso(NOW - timedelta(minutes=49)), "trigger": "if-unhealthy",
                    "result": "locked", "restarted": False}),
        json.dumps(["not", "a", "record"]),
    ])  # fmt: skip
    return isolated_home


def test_report_statistics_verdicts_ooms_and_restarts(history: Path) -> None:
    result = CliRunner().invoke(main, ["report", "--since", "24h", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "mpsctl.report/1"
    assert doc["samples"] == 4
    host = doc["figures"]["host_used_percent"]
    assert (host["min"], host["avg"], host["p95"], host["max"]) == (40.0, 57.5, 80.0, 80.0)
    service = doc["figures"]["service_memory_bytes"]  # footprint preferred over RSS
    assert service["count"] == 3  # the stopped sample is unknown, not 0
    assert (service["min"], service["max"]) == (2 * GIB, 3 * GIB)
    assert doc["figures"]["accelerator_allocated_bytes"] is None
    assert doc["verdicts"] == {"OK": 2, "WARNING": 1, "CRITICAL": 1, "UNKNOWN": 0}
    assert doc["oom_events"] == 1  # seen by two probes, one event
    assert [r["result"] for r in doc["restarts"]] == ["fixed"]
    assert doc["fix_runs"] == {"fixed": 1, "healthy": 1, "locked": 1}
    assert doc["accelerator_limit_bytes"] == 8 * GIB


def test_report_for_people(history: Path) -> None:
    result = CliRunner().invoke(main, ["report"])
    assert result.exit_code == 0, result.stderr
    assert "host memory used" in result.stdout
    assert "Restarts by fix: 1" in result.stdout
    assert "restarted; verdict OK" in result.stdout


def test_plot_is_a_png(history: Path, tmp_path: Path) -> None:
    target = tmp_path / "memory.png"
    result = CliRunner().invoke(main, ["report", "--plot", str(target)])
    assert result.exit_code == 0, result.stderr
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1024


def test_plot_without_matplotlib_is_one_clear_line(
    history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(main, ["report", "--plot", str(tmp_path / "m.png")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "mpsctl: error: --plot needs matplotlib: pip install 'mpsctl[plot]'"
    )


def test_empty_history_says_how_to_record(isolated_home: Path) -> None:
    result = CliRunner().invoke(main, ["report", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["samples"] == 0
    assert "mpsctl probe --record" in result.stderr


def test_bad_since_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["report", "--since", "yesterday"])
    assert result.exit_code == 2
    assert result.stderr.startswith("mpsctl: error: --since:")


def test_percentile_is_nearest_rank() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 100.0], 95) == 100.0
    assert percentile(list(map(float, range(1, 101))), 95) == 95.0


def test_oom_count_without_event_times_adds_increases_only() -> None:
    counts = [{"oom_events": n} for n in (0, 1, 1, 2, 0, 1)]
    assert count_oom_events(counts) == 3


def test_oom_count_an_unknown_scan_is_not_a_reset() -> None:
    # the same event seen before and after a probe whose log scan failed (null): one event
    counts = [{"oom_events": n} for n in (1, None, 1)]
    assert count_oom_events(counts) == 1
    assert count_oom_events([{"oom_events": None}]) == 0


def test_report_rows_have_distinct_labels() -> None:
    """#13 item 23: no two rows of the report read the same (host memory used % and bytes)."""
    from mpsctl.monitor.report import FIGURES

    labels = [label for label, _unit in FIGURES.values()]
    assert len(labels) == len(set(labels))


def _session(home: Path, start: datetime, count: int, step_s: int) -> None:
    for i in range(count):
        when = start + timedelta(seconds=i * step_s)
        record = sample(NOW - when, "OK", 40.0 + i % 3)  # no accelerator figure at all
        write_lines(day_file(home, when.date()), [json.dumps(record)])


def test_plot_labels_legend_and_gaps(isolated_home: Path) -> None:
    """#13 item 23: the PNG's x labels are distinct over a few minutes, a figure never
    measured has no (empty) legend entry, and no line is drawn across a gap in sampling."""
    pytest.importorskip("matplotlib")  # the plot extra; installed with the test extra
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpsctl.monitor.report import build_report, report_figure

    start = NOW - timedelta(hours=3)
    _session(isolated_home, start, 13, 10)  # two minutes, every 10 s
    short = build_report(isolated_home, start - timedelta(minutes=1), NOW)
    fig = report_figure(short)
    fig.canvas.draw()
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(labels) >= 3
    assert len(labels) == len(set(labels)), labels
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "accelerator held" not in legend
    assert "host used" in legend
    plt.close(fig)

    _session(isolated_home, start + timedelta(hours=1), 7, 10)  # an hour later
    gapped = build_report(isolated_home, start - timedelta(minutes=1), NOW)
    fig = report_figure(gapped)
    (ax,) = fig.axes
    (host,) = [line for line in ax.get_lines() if line.get_label() == "host used"]
    ys = list(host.get_ydata())
    nans = [i for i, y in enumerate(ys) if math.isnan(y)]
    assert nans == [13]  # one break, between the two sessions
    plt.close(fig)


def test_report_says_how_the_service_died_once(isolated_home: Path) -> None:
    died = "mvp died at 03:16:52: killed by the kernel OOM killer (anon-rss 3.39 GiB)"
    records = [
        sample(timedelta(hours=2), "CRITICAL", 60.0, service_running=False, death=died),
        sample(timedelta(hours=1), "CRITICAL", 60.0, service_running=False, death=died),
        sample(timedelta(minutes=30), "OK", 50.0, death=None),
    ]
    for record in records:
        when = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        write_lines(day_file(isolated_home, when.date()), [json.dumps(record)])
    result = CliRunner().invoke(main, ["report", "--since", "24h", "--json"])
    assert json.loads(result.stdout)["deaths"] == [died]
    text = CliRunner().invoke(main, ["report", "--since", "24h"], env={"COLUMNS": "200"})
    assert died in text.stdout
