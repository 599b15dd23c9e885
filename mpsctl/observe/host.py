"""Host memory: psutil everywhere, plus what macOS's own tools know and psutil does not.

What psutil's figures mean on macOS (psutil ``_psosx.py``), which is not what Activity
Monitor shows:

- ``available`` = inactive + free pages; ``percent`` = (total - available) / total.
- ``used`` = active + wired pages. Compressed memory is in no psutil field, so on a Mac
  whose model has pushed the rest of memory into the compressor, ``used`` looks small.
- ``free`` = free - speculative pages.
- Activity Monitor's "Memory Used" = app memory + wired + compressed; ``vm_stat`` does not
  expose app memory directly, so ``used_bytes`` stays psutil's and the compressor is
  reported on its own (``compressed_bytes``), next to top's own split (``physmem``).

On macOS the extra figures come from ``vm_stat``, ``sysctl vm.swapusage``,
``sysctl kern.memorystatus_vm_pressure_level`` and ``top -l 1 -n 0``, run through one
seam, a :data:`CommandRunner`. A command that is missing, fails, times out or prints
something unparsable leaves its figures ``None`` and adds a note; it never raises.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

if TYPE_CHECKING:
    from mpsctl.observe.macos import SwapUsage, TopPhysMem, VmStat

#: Runs ``argv`` (no shell) and returns its stdout; raises ``OSError`` (e.g.
#: ``FileNotFoundError``) or ``subprocess.SubprocessError`` when the command fails.
CommandRunner = Callable[[list[str]], str]

# A probe runs from cron every minute: a wedged tool must not hold it up for long.
COMMAND_TIMEOUT_S = 2.0

VM_STAT = ["vm_stat"]
SWAPUSAGE = ["sysctl", "vm.swapusage"]
PRESSURE_LEVEL = ["sysctl", "kern.memorystatus_vm_pressure_level"]
TOP = ["top", "-l", "1", "-n", "0"]

#: the pressure level as a number (Prometheus's gauge, the perfdata): macOS's own names,
#: and Linux's PSI put on the same scale (``parse_psi_memory``)
PRESSURE_LEVELS = {"normal": 0, "warn": 1, "critical": 2}

JSON_KEYS = (
    "total_bytes",
    "available_bytes",
    "used_bytes",
    "percent",
    "free_bytes",
    "swap_total_bytes",
    "swap_used_bytes",
    "wired_bytes",
    "compressed_bytes",
    "pressure",
    "physmem",
    "platform",
)

_T = TypeVar("_T")


def run_command(argv: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    """The default :data:`CommandRunner`: ``argv`` without a shell, stdout as text."""
    # LC_ALL=C: sysctl prints "1024,00M" under a comma locale; C keeps figures uniform.
    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
        stdin=subprocess.DEVNULL,
    )
    return completed.stdout


@dataclass(frozen=True)
class HostMemory:
    """One reading of host memory; ``None`` means unknown, never zero.

    ``total``/``available``/``used``/``percent``/``free`` are psutil's (see the module
    docstring for their macOS meaning). ``swap_*`` come from ``sysctl vm.swapusage`` on
    macOS when it answers, else psutil. ``wired_bytes`` and ``compressed_bytes`` are
    known on macOS only (``vm_stat``, else top's rounded figures); ``compressed_bytes``
    is physical memory the compressor occupies. ``pressure`` is macOS's own verdict
    (``normal``/``warn``/``critical``), or Linux's PSI on that scale (``parse_psi_memory``).
    ``physmem`` is top's ``PhysMem`` line in bytes
    (``used_bytes``, ``wired_bytes``, ``compressor_bytes``, ``unused_bytes``).
    ``sources`` names where each figure came from; ``notes`` say why one is missing.
    """

    total_bytes: int
    available_bytes: int
    used_bytes: int
    percent: float
    free_bytes: int
    swap_total_bytes: int
    swap_used_bytes: int
    wired_bytes: int | None
    compressed_bytes: int | None
    pressure: str | None
    physmem: dict[str, int | None] | None
    platform: str
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: exactly the keys in :data:`JSON_KEYS`."""
        data = {key: getattr(self, key) for key in JSON_KEYS}
        if self.physmem is not None:
            data["physmem"] = dict(self.physmem)
        return data


def _failure(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "command not found"
    if isinstance(exc, subprocess.CalledProcessError):
        return f"exit status {exc.returncode}"
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"no answer within {exc.timeout:g} s"
    if isinstance(exc, ValueError):
        return f"unparsable output ({exc})"
    return str(exc) or type(exc).__name__


def _observe(
    runner: CommandRunner, argv: list[str], parse: Callable[[str], _T], notes: list[str]
) -> _T | None:
    try:
        return parse(runner(list(argv)))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        notes.append(f"{' '.join(argv)}: {_failure(exc)}")
        return None


# --------------------------------------------------------------------------- Linux PSI
#: Linux memory pressure (PSI, ``/proc/pressure/memory``) on macOS's three-level scale.
#:
#: The kernel's pressure stall information (Documentation/accounting/psi.rst) says what share
#: of the last 10, 60 and 300 seconds tasks spent waiting for memory: ``some`` (at least one
#: task stalled) and ``full`` (all non-idle tasks stalled at once, no work done)::
#:
#:     some avg10=0.00 avg60=0.00 avg300=0.00 total=0
#:     full avg10=0.00 avg60=0.00 avg300=0.00 total=0
#:
#: macOS's own verdict (``kern.memorystatus_vm_pressure_level``) is ``normal``, ``warn`` (the
#: kernel compresses and swaps to keep up) or ``critical`` (jetsam kills processes). The same
#: meanings on Linux:
#:
#: - ``critical``: ``full`` avg10 at least 60 %: the point where systemd-oomd's defaults act
#:   (``DefaultMemoryPressureLimit=60%``, oomd.conf(5)); the machine gets almost no work done.
#: - ``warn``: ``some`` avg10 at least 10 %, or ``full`` avg10 at least 5 %: tasks lose a
#:   noticeable share of their time to reclaim and swap-in.
#: - ``normal`` otherwise.
#:
#: So ``mpsctl_host_memory_pressure_level`` (0/1/2) and ``MpsctlMemoryPressureCritical`` mean the
#: same on both systems. Without PSI (a kernel before 4.20, or booted with ``psi=0``: the file is
#: absent or reading it fails with EOPNOTSUPP) the level is unknown, never "normal".
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


def host_memory(
    runner: CommandRunner | None = None,
    *,
    platform: str | None = None,
    psi_path: Path | None = None,
) -> HostMemory:
    """Read host memory now. ``platform`` (default ``sys.platform``) and ``runner`` let
    the macOS path run anywhere on recorded outputs; psutil always reads this machine.
    On Linux, ``pressure`` comes from PSI (``psi_path``, default ``/proc/pressure/memory``)
    on macOS's scale (``parse_psi_memory`` above)."""
    platform = sys.platform if platform is None else platform
    virtual = psutil.virtual_memory()
    swap = psutil.swap_memory()
    sources = dict.fromkeys(
        ("total_bytes", "available_bytes", "used_bytes", "percent", "free_bytes"),
        "psutil.virtual_memory",
    )
    sources["swap_total_bytes"] = sources["swap_used_bytes"] = "psutil.swap_memory"
    notes: list[str] = []
    swap_total, swap_used = int(swap.total), int(swap.used)
    wired: int | None = None
    compressed: int | None = None
    pressure: str | None = None
    physmem: dict[str, int | None] | None = None

    if platform == "darwin":
        # the parsers (and their regexes) are imported only where they are used
        from mpsctl.observe.macos import (
            parse_pressure_level,
            parse_swapusage,
            parse_top_physmem,
            parse_vm_stat,
        )

        run = run_command if runner is None else runner
        vm_stat: VmStat | None = _observe(run, VM_STAT, parse_vm_stat, notes)
        swapusage: SwapUsage | None = _observe(run, SWAPUSAGE, parse_swapusage, notes)
        pressure = _observe(run, PRESSURE_LEVEL, parse_pressure_level, notes)
        top: TopPhysMem | None = _observe(run, TOP, parse_top_physmem, notes)

        if swapusage is not None:
            swap_total, swap_used = swapusage.total_bytes, swapusage.used_bytes
            sources["swap_total_bytes"] = sources["swap_used_bytes"] = "sysctl vm.swapusage"
        if pressure is not None:
            sources["pressure"] = "sysctl kern.memorystatus_vm_pressure_level"
        if top is not None:
            physmem = top.as_dict()
            sources["physmem"] = "top -l 1 -n 0"

        # vm_stat counts pages exactly; top rounds to a few digits, so it is the fallback.
        psutil_wired = getattr(virtual, "wired", None)
        if vm_stat is not None and vm_stat.wired_bytes is not None:
            wired, sources["wired_bytes"] = vm_stat.wired_bytes, "vm_stat"
        elif psutil_wired is not None:
            wired, sources["wired_bytes"] = int(psutil_wired), "psutil.virtual_memory"
        elif top is not None:
            wired, sources["wired_bytes"] = top.wired_bytes, "top -l 1 -n 0 (rounded)"
        if vm_stat is not None and vm_stat.compressed_bytes is not None:
            compressed, sources["compressed_bytes"] = vm_stat.compressed_bytes, "vm_stat"
        elif top is not None and top.compressor_bytes is not None:
            compressed = top.compressor_bytes
            sources["compressed_bytes"] = "top -l 1 -n 0 (rounded)"

    elif platform.startswith("linux"):
        source = psi_path or PSI_MEMORY
        try:
            pressure = read_psi_memory(source).level
            sources["pressure"] = f"{source} (PSI)"
        except (OSError, ValueError) as exc:
            notes.append(f"{source}: {exc.strerror if isinstance(exc, OSError) else exc}")

    return HostMemory(
        total_bytes=int(virtual.total),
        available_bytes=int(virtual.available),
        used_bytes=int(virtual.used),
        percent=float(virtual.percent),
        free_bytes=int(virtual.free),
        swap_total_bytes=swap_total,
        swap_used_bytes=swap_used,
        wired_bytes=wired,
        compressed_bytes=compressed,
        pressure=pressure,
        physmem=physmem,
        platform=platform,
        sources=sources,
        notes=tuple(notes),
    )
