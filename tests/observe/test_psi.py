"""Linux memory pressure: this machine's real /proc/pressure/memory, and the thresholds that
put PSI on macOS's normal/warn/critical scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpsctl.observe.host import PSI_MEMORY, host_memory, parse_psi_memory, read_psi_memory


def psi_text(some10: float, full10: float) -> str:
    # the layout of Documentation/accounting/psi.rst, with chosen shares
    return (
        f"some avg10={some10:.2f} avg60=0.00 avg300=0.00 total=1\n"
        f"full avg10={full10:.2f} avg60=0.00 avg300=0.00 total=1\n"
    )


@pytest.mark.skipif(not PSI_MEMORY.exists(), reason="this kernel has no PSI")
def test_this_machines_psi_is_read_and_named_as_the_source() -> None:
    reading = read_psi_memory()
    assert 0 <= reading.some_avg10 <= 100
    host = host_memory(platform="linux")
    assert host.pressure == reading.level or host.pressure in ("normal", "warn", "critical")
    assert host.sources["pressure"] == "/proc/pressure/memory (PSI)"


@pytest.mark.parametrize(
    ("some10", "full10", "level"),
    [
        (0.0, 0.0, "normal"),
        (9.99, 4.99, "normal"),
        (10.0, 0.0, "warn"),
        (6.0, 5.0, "warn"),
        (99.0, 59.99, "warn"),
        (70.0, 60.0, "critical"),
    ],
)
def test_levels_on_macos_scale(some10: float, full10: float, level: str) -> None:
    assert parse_psi_memory(psi_text(some10, full10)).level == level


def test_without_psi_the_pressure_is_unknown_not_normal(tmp_path: Path) -> None:
    host = host_memory(platform="linux", psi_path=tmp_path / "absent")
    assert host.pressure is None
    assert any("absent" in note for note in host.notes)
    (tmp_path / "garbled").write_text("some avg10=x\n")
    assert host_memory(platform="linux", psi_path=tmp_path / "garbled").pressure is None


def test_the_exporter_gauge_follows_psi(tmp_path: Path) -> None:
    from mpsctl.monitor.prometheus import PRESSURE_VALUES

    psi = tmp_path / "memory"
    psi.write_text(psi_text(80.0, 65.0))
    level = host_memory(platform="linux", psi_path=psi).pressure
    assert PRESSURE_VALUES[level or ""] == 2
