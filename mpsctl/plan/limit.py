"""The two ceilings a plan meets: the allocator's, and the machine's RAM.

1. **No allocator error.** MPS: PyTorch refuses an allocation once the process's Metal
   memory would pass ``high watermark ratio x recommendedMaxWorkingSetSize``
   (aten/src/ATen/mps/MPSAllocator); CUDA: the device's total x the per-process fraction;
   CPU: the RAM available.
2. **No swap, no jetsam.** RAM less what the OS keeps for itself (:data:`OS_RESERVE_BYTES`).
   On Apple Silicon the GPU's memory *is* RAM: with a high ratio above RAM / working set
   (PyTorch's default 1.7 on every Mac up to 96 GB) the first ceiling lies above RAM, and
   a plan that meets only that one swaps, or is killed, before any out-of-memory error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

from mpsctl.errors import ConfigError
from mpsctl.plan.workingset import rule_working_set, working_set
from mpsctl.torch_env import DEFAULT_HIGH_RATIO as TORCH_DEFAULT_HIGH_RATIO
from mpsctl.torch_env import DEFAULT_LOW_RATIO as TORCH_DEFAULT_LOW_RATIO
from mpsctl.torch_env import DEFAULT_LOW_RATIO_DISCRETE, MAX_RATIO
from mpsctl.units import GIB

#: RAM the OS keeps for itself. macOS wires about 2 GiB for the kernel and drivers (recorded
#: readings: 1938M wired on a 16 GB Mac, 123,968 and 142,222 wired 16 KiB pages = 1.89 and
#: 2.17 GiB on 16 and 32 GB Macs, tests/fixtures/macos-top-physmem-3 and macos-vm_stat-1/5),
#: which no process can claim; another 2 GiB is left for the OS's own processes
#: (WindowServer, launchd's daemons) and the compressor's working room, so that the
#: service alone never pushes the machine into swap. ``--os-reserve`` sets another figure.
OS_RESERVE_BYTES = 4 * GIB
OS_RESERVE_SOURCE = ("default: ~2 GiB the OS wires (recorded macOS readings) + 2 GiB for its "
                     "own processes")  # fmt: skip


@dataclass(frozen=True)
class Limit:
    device: str
    #: the allocator's ceiling
    limit_bytes: int
    source: str
    ram_bytes: int
    ram_source: str
    recommended_max_bytes: int | None = None
    recommended_source: str | None = None
    high_ratio: float | None = None
    low_ratio: float | None = None
    #: where the high ratio came from, and what PyTorch's default would make of it
    ratio_source: str | None = None
    reserve_bytes: int = OS_RESERVE_BYTES
    reserve_source: str = OS_RESERVE_SOURCE
    #: True where the device's memory is the machine's RAM (Apple Silicon, the CPU): then
    #: the model's memory counts against the RAM ceiling too
    unified: bool = True

    @property
    def above_ram(self) -> bool:
        return self.limit_bytes > self.ram_bytes

    @property
    def ram_ceiling_bytes(self) -> int:
        """The second ceiling: RAM less the OS's reserve."""
        return max(0, self.ram_bytes - self.reserve_bytes)


def estimated_working_set(ram: int) -> tuple[int, str]:
    return rule_working_set(ram)


def effective_low(high: float, low: float | None, *, discrete: bool = False) -> float:
    """PyTorch's default low ratio caps the low one when none is set: min(high, default)
    (1.4 on unified memory, 1.0 on a discrete GPU)."""
    default = DEFAULT_LOW_RATIO_DISCRETE if discrete else TORCH_DEFAULT_LOW_RATIO
    return low if low is not None else min(high, default)


@dataclass(frozen=True)
class MacFacts:
    """What is known of the Mac beyond its RAM: a reading, the chip, a discrete GPU."""

    working_set: int | None = None
    chip: str | None = None
    discrete_gpu: int | None = None


def _reported_working_set(report: dict[str, Any] | None) -> int | None:
    mps = report.get("mps") if report else None
    value = mps.get("recommended_max_bytes") if isinstance(mps, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _ratio_source(ratio: float, high: float | None, high_source: str | None,
                  recommended: int) -> str:  # fmt: skip
    if high is None:
        return f"PyTorch's default {TORCH_DEFAULT_HIGH_RATIO:g} (no ratio set)"
    where = high_source or "set"
    if where == "default":
        where = "mpsctl's default [memory] high_watermark_ratio"
    elif not where.startswith("flag"):
        where = f"[memory] high_watermark_ratio ({where})"
    if ratio == TORCH_DEFAULT_HIGH_RATIO:
        return f"{where} {ratio:g} (PyTorch's default too)"
    # PyTorch prints its limit in GiB under a "GB" label: "max allowed: 18.13 GB"
    torch_limit = TORCH_DEFAULT_HIGH_RATIO * recommended / GIB
    return (f"{where} {ratio:g} (PyTorch's default would be {TORCH_DEFAULT_HIGH_RATIO:g}: "
            f"max allowed {torch_limit:.2f} GB on this Mac)")  # fmt: skip


def mps_limit(
    ram: int, ram_source: str, high: float | None, low: float | None,
    report: dict[str, Any] | None, *, mac: MacFacts | None = None,
    high_source: str | None = None, reserve: tuple[int, str] | None = None,
) -> Limit:  # fmt: skip
    mac = mac or MacFacts()
    recommended, rec_source = working_set(
        ram, reported=_reported_working_set(report), given=mac.working_set,
        discrete_gpu=mac.discrete_gpu, chip=mac.chip,
    )  # fmt: skip
    reserve_bytes, reserve_source = reserve or (OS_RESERVE_BYTES, OS_RESERVE_SOURCE)
    unified = mac.discrete_gpu is None
    ratio = TORCH_DEFAULT_HIGH_RATIO if high is None else high
    ratio_source = _ratio_source(ratio, high, high_source, recommended)
    base = Limit("mps", 0, "", ram, ram_source, recommended, rec_source,
                 ratio_source=ratio_source, reserve_bytes=reserve_bytes,
                 reserve_source=reserve_source, unified=unified)  # fmt: skip
    if ratio == 0.0:
        # 0.0 turns PyTorch's check off: nothing refuses an allocation before memory runs
        # out, and past RAM macOS swaps instead of raising an out-of-memory error
        memory = ram if unified else recommended
        return replace(base, limit_bytes=memory, source="high ratio 0.0 disables the MPS "
                       "limit: the memory itself is the only ceiling", high_ratio=0.0,
                       low_ratio=low)  # fmt: skip
    return replace(base, limit_bytes=int(ratio * recommended),
                   source=f"high ratio {ratio:g} x recommended working set", high_ratio=ratio,
                   low_ratio=effective_low(ratio, low, discrete=not unified))  # fmt: skip


def cuda_limit(
    ram: int, ram_source: str, report: dict[str, Any] | None, *,
    gpu_memory: tuple[int, str] | None = None, reserve: tuple[int, str] | None = None,
) -> Limit:  # fmt: skip
    """The service's own figure (device total x its per-process fraction), else a size
    given or read from NVML (fraction 1.0: PyTorch's default)."""
    cuda = report.get("cuda") if report else None
    limit = cuda.get("limit_bytes") if isinstance(cuda, dict) else None
    reserve_bytes, reserve_source = reserve or (OS_RESERVE_BYTES, OS_RESERVE_SOURCE)
    base = Limit("cuda", 0, "", ram, ram_source, reserve_bytes=reserve_bytes,
                 reserve_source=reserve_source, unified=False)  # fmt: skip
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return replace(base, limit_bytes=limit, source="the service's memory report (device "
                       "total x per-process fraction)")  # fmt: skip
    if gpu_memory is not None:
        return replace(base, limit_bytes=gpu_memory[0], source=f"{gpu_memory[1]} (per-process "
                       "fraction 1.0, PyTorch's default)")  # fmt: skip
    raise ConfigError(
        "--device cuda: the GPU's memory is unknown: give --gpu-memory SIZE (e.g. 80GiB), "
        "or plan with the service running"
    )


def cpu_limit(
    ram: int, ram_source: str, available: int | None, source: str = "RAM available now",
    *, reserve: tuple[int, str] | None = None,
) -> Limit:  # fmt: skip
    reserve_bytes, reserve_source = reserve or (OS_RESERVE_BYTES, OS_RESERVE_SOURCE)
    everything = f"RAM ({ram_source}): all of it, as available is unknown"
    base = Limit("cpu", ram, everything, ram, ram_source, reserve_bytes=reserve_bytes,
                 reserve_source=reserve_source)  # fmt: skip
    if available is None:
        return base
    return replace(base, limit_bytes=min(available, ram), source=source)


def ram_ceiling_ratio(limit: Limit) -> float | None:
    """The largest high ratio (2 decimals, rounded down) whose limit stays within RAM less
    the OS's reserve (on a discrete GPU: within its memory)."""
    if limit.device != "mps" or not limit.recommended_max_bytes:
        return None
    room = limit.ram_ceiling_bytes if limit.unified else limit.recommended_max_bytes
    return min(MAX_RATIO, math.floor(100 * room / limit.recommended_max_bytes) / 100)


_UNITS = {"b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
          "mib": 1024**2, "g": GIB, "gb": GIB, "gib": GIB, "t": 1024**4, "tb": 1024**4,
          "tib": 1024**4}  # fmt: skip
_SIZE = re.compile(r"((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)([a-z]*)")
#: sizes a plan takes: below 1 MiB no model runs; above 1 PiB no machine has
MIN_SIZE_BYTES = 1024**2
MAX_SIZE_BYTES = 1024**5


def parse_size(text: str) -> int:
    """``16GiB``, ``16GB``, ``16g``, ``17179869184B``: a Mac sold with "16 GB" has 16 GiB,
    so GB and GiB both mean 2**30 here. A number without a unit is refused: ``16`` would
    be 16 bytes, never what was meant."""
    raw = text.strip().lower().replace(" ", "")
    match = _SIZE.fullmatch(raw)
    if match is None:
        raise ValueError(f"expected a size like 16GiB, got {text!r}")
    number, unit = match.groups()
    if not unit:
        raise ValueError(f"{text} has no unit: did you mean {number}GiB? (or {number}B for "
                         "bytes)")  # fmt: skip
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r} in {text!r} (use B, KiB, MiB, GiB, TiB)")
    value = float(number) * _UNITS[unit]
    if value < MIN_SIZE_BYTES:
        raise ValueError(f"{text} is less than 1 MiB")
    if value > MAX_SIZE_BYTES:
        raise ValueError(f"{text} is more than 1 PiB")
    return int(value)
