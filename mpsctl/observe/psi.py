"""Linux memory pressure (PSI, ``/proc/pressure/memory``) on macOS's three-level scale.

The kernel's pressure stall information (Documentation/accounting/psi.rst) says what share
of the last 10, 60 and 300 seconds tasks spent waiting for memory: ``some`` (at least one
task stalled) and ``full`` (all non-idle tasks stalled at once, no work done)::

    some avg10=0.00 avg60=0.00 avg300=0.00 total=0
    full avg10=0.00 avg60=0.00 avg300=0.00 total=0

macOS's own verdict (``kern.memorystatus_vm_pressure_level``) is ``normal``, ``warn`` (the
kernel compresses and swaps to keep up) or ``critical`` (jetsam kills processes). The same
meanings on Linux:

- ``critical``: ``full`` avg10 at least 60 %: the point where systemd-oomd's defaults act
  (``DefaultMemoryPressureLimit=60%``, oomd.conf(5)); the machine gets almost no work done.
- ``warn``: ``some`` avg10 at least 10 %, or ``full`` avg10 at least 5 %: tasks lose a
  noticeable share of their time to reclaim and swap-in.
- ``normal`` otherwise.

So ``mpsctl_host_memory_pressure_level`` (0/1/2) and ``MpsctlMemoryPressureCritical`` mean the
same on both systems. Without PSI (a kernel before 4.20, or booted with ``psi=0``: the file is
absent or reading it fails with EOPNOTSUPP) the level is unknown, never "normal".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PSI_MEMORY = Path("/proc/pressure/memory")
CRITICAL_FULL_AVG10 = 60.0
WARN_SOME_AVG10 = 10.0
WARN_FULL_AVG10 = 5.0


@dataclass(frozen=True)
class MemoryPressure:
    """The shares (percent) of the last 10 and 60 seconds tasks stalled on memory."""

    some_avg10: float
    some_avg60: float
    full_avg10: float
    full_avg60: float

    @property
    def level(self) -> str:
        """``normal``, ``warn`` or ``critical``: macOS's names (see the module docstring)."""
        if self.full_avg10 >= CRITICAL_FULL_AVG10:
            return "critical"
        if self.some_avg10 >= WARN_SOME_AVG10 or self.full_avg10 >= WARN_FULL_AVG10:
            return "warn"
        return "normal"


def parse_psi_memory(text: str) -> MemoryPressure:
    """The ``some`` and ``full`` lines of ``/proc/pressure/memory``; ValueError otherwise."""
    lines: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, _, rest = line.strip().partition(" ")
        if kind not in ("some", "full"):
            continue
        fields: dict[str, float] = {}
        for item in rest.split():
            name, sep, value = item.partition("=")
            if sep and name in ("avg10", "avg60"):
                fields[name] = float(value)
        if set(fields) != {"avg10", "avg60"}:
            raise ValueError(f"unrecognised PSI line: {line.strip()[:80]!r}")
        lines[kind] = fields
    if "some" not in lines:
        raise ValueError("no 'some' line")
    # the 'full' line exists for memory since 4.20; absent, nothing stalled everything
    full = lines.get("full", {"avg10": 0.0, "avg60": 0.0})
    return MemoryPressure(
        lines["some"]["avg10"], lines["some"]["avg60"], full["avg10"], full["avg60"]
    )


def read_psi_memory(path: Path = PSI_MEMORY) -> MemoryPressure:
    """Read and parse ``path``; OSError or ValueError when PSI is not available."""
    return parse_psi_memory(path.read_text(encoding="ascii"))
