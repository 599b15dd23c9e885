"""Every path counts a corpus file's deaths alike: ``mpsctl oom --json`` (its ``deaths``), the
probe (its cursor reading the file as new bytes), the exporter (the probe's count) and
``report`` (the history records two probes write)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.deaths.cursor import new_events
from mpsctl.monitor.report import count_oom_events
from tests.corpus.test_corpus import BY_NAME, CORPUS

#: a window wide enough for every recorded time (the oldest texts are from 2010s)
FOREVER_S = 100 * 365 * 24 * 3600.0


def probe_events(tmp_path: Path, text: bytes) -> list[dict]:  # type: ignore[type-arg]
    """The probe's events for ``text`` appended to a log its cursor had already read."""
    home = tmp_path / "home"
    log = tmp_path / "service.log"
    log.write_bytes(b"")
    t0 = datetime.now(timezone.utc)
    assert new_events(home, [log], FOREVER_S, now=t0) == []
    with log.open("ab") as out:
        out.write(text)
    return new_events(home, [log], FOREVER_S, now=t0 + timedelta(minutes=1))


def history_record(events: list[dict]) -> dict:  # type: ignore[type-arg]
    """What ``monitor.history`` writes for one probe's events (count and times)."""
    return {
        "oom_events": len(events),
        "oom_times": sorted(str(e["time"]) for e in events if e.get("time")),
    }


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_oom_probe_exporter_and_report_agree(tmp_path: Path, name: str) -> None:
    source = CORPUS / name
    path = tmp_path / source.name
    path.write_bytes(source.read_bytes())
    result = CliRunner().invoke(main, ["oom", "--json", str(path)])
    assert result.exit_code == 0, result.output
    oom = json.loads(result.stdout)["deaths"]
    events = probe_events(tmp_path, source.read_bytes())
    exporter = len(events)  # mpsctl_oom_events: the probe's count (monitor.history.oom_count)
    record = history_record(events)
    report = count_oom_events([record, record])  # two probes in a row see the same deaths
    wanted = sum(1 for e in BY_NAME[name].get("event", []) if not e.get("after_timeout"))
    assert (oom, exporter, report) == (wanted, wanted, wanted)
