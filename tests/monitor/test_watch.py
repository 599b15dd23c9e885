"""watch: the schedule (fake clock), sparklines, the live view."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from rich.console import Console

from mpsctl.monitor import watch_probes
from mpsctl.probe import ProbeResult, take_probe
from mpsctl.render.monitor import BLOCKS, Trends, sparkline, watch_sections
from mpsctl.settings import load_settings
from tests.conftest import free_port


class FakeTime:
    def __init__(self, probe_cost: float) -> None:
        self.now = 0.0
        self.probe_cost = probe_cost
        self.sleeps: list[float] = []
        self.probe_times: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds

    def probe(self) -> ProbeResult:
        self.probe_times.append(self.now)
        self.now += self.probe_cost
        return None  # type: ignore[return-value]


def run(fake: FakeTime, **kwargs: float) -> Iterator[ProbeResult]:
    return watch_probes(fake.probe, sleep=fake.sleep, clock=fake.clock, **kwargs)  # type: ignore[arg-type]


def test_ticks_keep_a_fixed_schedule_and_no_sleep_after_the_last() -> None:
    fake = FakeTime(probe_cost=0.5)
    assert len(list(run(fake, interval=2.0, count=3))) == 3
    assert fake.probe_times == [0.0, 2.0, 4.0]
    assert fake.sleeps == [1.5, 1.5]


def test_a_slow_probe_is_not_followed_by_a_burst() -> None:
    fake = FakeTime(probe_cost=5.0)
    list(run(fake, interval=2.0, count=3))
    assert fake.probe_times == [0.0, 5.0, 10.0]
    assert fake.sleeps == [0.0, 0.0]


def test_sparkline_scales_and_leaves_unknown_blank() -> None:
    assert sparkline([0, 50, 100], 0, 100) == "▁▅█"
    assert sparkline([None, 1.0, 2.0]) == " ▁█"
    assert sparkline([3.0, 3.0]) == BLOCKS[4] * 2
    assert sparkline([None, None]) == "  "


@pytest.fixture
def critical(monkeypatch: pytest.MonkeyPatch) -> ProbeResult:
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    return take_probe(load_settings())


def test_live_view_shows_trends_and_the_probe_tables(critical: ProbeResult) -> None:
    trends = Trends(window=60)
    for _ in range(70):
        trends.add(critical)
    assert len(trends.host_percent) == 60  # bounded window
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, color_system=None)
    for _key, make in watch_sections(critical, trends, 2.0):  # what `mpsctl watch` draws
        console.print(make())
    text = buffer.getvalue()
    assert "Last 60 samples" in text
    assert any(block in text for block in BLOCKS)  # the host trend
    assert "Verdict: CRITICAL" in text
    assert "Host memory" in text
    assert "Accelerator" in text


def test_every_sparkline_uses_one_stated_scale(critical: ProbeResult) -> None:
    """#13 item 20: bars are 0 to a stated whole (RAM; the accelerator's limit): a flat
    19 MiB service is the lowest block, not a full bar next to a limit 92 % used."""
    from dataclasses import replace

    from mpsctl.observe.accelerator import from_memory_report
    from mpsctl.observe.processes import ProcInfo, ServiceSnapshot

    mib, gib = 1024**2, 1024**3
    proc = ProcInfo(4242, 1, ("uvicorn", "app:app"), "me", 19 * mib, None, None, 4,
                    0.0, 10.0, {}, "sleeping")  # fmt: skip
    snapshot = ServiceSnapshot("pidfile", "ok", None, (4242,), (proc,))
    accelerator = from_memory_report({"device": "mps", "mps": {
        "current_allocated_bytes": 6 * gib, "driver_allocated_bytes": int(0.92 * 10 * gib),
        "recommended_max_bytes": 10 * gib, "high_watermark_ratio": 1.0,
        "low_watermark_ratio": 1.0, "limit_bytes": 10 * gib}})  # fmt: skip
    result = replace(critical, service=snapshot, accelerator=accelerator)
    trends = Trends(window=60)
    for _ in range(5):
        trends.add(result)
    buffer = io.StringIO()
    Console(file=buffer, width=160, color_system=None).print(trends.table())
    lines = buffer.getvalue().splitlines()
    assert critical.host is not None
    ram = critical.host.total_bytes
    (service,) = [line for line in lines if line.startswith("service memory")]
    (accel,) = [line for line in lines if line.startswith("accelerator held")]
    assert "(of 10.00 GiB limit)" in accel
    assert "RAM)" in service
    assert BLOCKS[0] * 5 in service  # 19 MiB of RAM
    assert BLOCKS[6] * 5 in accel  # 92 % of the limit
    assert ram > 0
    assert "0 to the whole in brackets" in buffer.getvalue()
