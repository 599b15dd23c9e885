"""mpsctl_oom_events_total: each memory failure counted once across probes, by kind, never
down; a damaged state file is left alone and the counter is then unknown, not 0."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mpsctl.cli import main
from mpsctl.deaths.totals import count_events, kinds, read_totals, state_path
from tests.conftest import free_port, read_fixture

HOUR = 3600.0


def totals_in_textfile(
    write_config,  # type: ignore[no-untyped-def]
    log: Path,
    prom: Path,
) -> dict[str, float]:
    write_config(
        f'[service]\nname = "mvp"\nurl = "http://127.0.0.1:{free_port()}"\n'
        f'log_file = "{log}"\nmatch = "no-such-process-xyz"\ncommand = ["true"]\n'
    )
    result = CliRunner().invoke(main, ["probe", "--prometheus", str(prom)])
    assert result.exit_code in (1, 2), result.stderr
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(prom.read_text(encoding="utf-8"))
        for sample in family.samples
        if sample.name == "mpsctl_oom_events_total"
    }


def test_probes_count_each_failure_once_by_kind(
    tmp_path: Path,
    write_config,  # type: ignore[no-untyped-def]
) -> None:
    log, prom = tmp_path / "backend.log", tmp_path / "mpsctl.prom"
    log.write_text("starting\n")
    first = totals_in_textfile(write_config, log, prom)
    # every kind is there from the first probe, at 0: increase() sees the first failure
    assert first == dict.fromkeys(kinds(), 0.0)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with log.open("a") as out:
        out.write(f"{stamp} ERROR {read_fixture('torch-mps-oom-3.txt').strip()}\n")
    assert totals_in_textfile(write_config, log, prom)["oom"] == 1
    # the same failure is in the next probe's hour too: not counted again
    assert totals_in_textfile(write_config, log, prom)["oom"] == 1
    with log.open("a") as out:  # uvicorn's stderr: a CPU allocator failure, no timestamp
        out.write(read_fixture("torch-cpu-oom-2-cant-allocate-errcode12-CPUAllocator65.txt"))
    after = totals_in_textfile(write_config, log, prom)
    assert (after["oom"], after["cpu_alloc"]) == (1, 1)
    assert totals_in_textfile(write_config, log, prom) == after


def test_a_timed_failure_is_remembered_past_the_probes_window(tmp_path: Path) -> None:
    event = {"file": "/l", "kind": "oom", "summary": "s", "time": "2026-01-01T00:00:00Z"}
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert count_events(tmp_path, "mvp", [event], HOUR, now=now)["oom"] == 1  # type: ignore[index]
    # reported again by every probe of its hour (and a reset cursor could find it again)
    later = now + timedelta(minutes=119)
    assert count_events(tmp_path, "mvp", [event], HOUR, now=later)["oom"] == 1  # type: ignore[index]
    other = {**event, "file": "/other"}  # another service's counts are its own
    assert count_events(tmp_path, "other", [other], HOUR, now=later)["oom"] == 1  # type: ignore[index]
    assert read_totals(tmp_path, "mvp")["oom"] == 1  # type: ignore[index]


def test_a_damaged_state_is_never_overwritten(tmp_path: Path) -> None:
    state_path(tmp_path).write_text('{"services": {"mvp": {"totals": {"oom": 7}}', "utf-8")
    event = {"file": "/l", "kind": "oom", "summary": "s", "time": None}
    assert count_events(tmp_path, "mvp", [event], HOUR) is None  # unknown, not 0
    assert state_path(tmp_path).read_text("utf-8").endswith("}}")
    # deleting it is the documented reset
    state_path(tmp_path).unlink()
    assert count_events(tmp_path, "mvp", [event], HOUR) == {**dict.fromkeys(kinds(), 0), "oom": 1}
    assert json.loads(state_path(tmp_path).read_text("utf-8"))["schema"] == "mpsctl.oom_totals/1"
