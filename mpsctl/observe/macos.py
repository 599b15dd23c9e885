"""Pure parsers of macOS memory tools' text output.

No subprocess here: ``host.py`` runs the commands through its runner seam and hands the
text over, so every parser is tested on Linux against the recorded outputs in
``tests/fixtures/``. Figures come back as integer bytes; malformed input raises
``ValueError`` with a short reason.

Units: ``top`` and ``sysctl vm.swapusage`` print K/M/G/T meaning powers of 1024.

Only the commands ``host.py`` runs have parsers here. The rest of what a Mac can tell comes
from better sources: the total from psutil (``hw.memsize``), a process's phys_footprint from
``proc_pid_rusage`` in ``procs.py`` (exact, no subprocess, unlike ``footprint``), its RSS
from psutil (unlike ``ps``), and the pressure level from sysctl (``memory_pressure`` only
adds a free percentage).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_UNIT_POWER = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}

# A size as these tools print it: ``438M``, ``1024,00M`` (comma locale), ``0.00M``.
_SIZE = r"(\d+(?:[.,]\d+)?)\s*([KMGTP]?)B?"


def _to_bytes(number: str, unit: str) -> int:
    return round(float(number.replace(",", ".")) * 1024 ** _UNIT_POWER[unit.upper()])


# --------------------------------------------------------------------------- top
@dataclass(frozen=True)
class TopPhysMem:
    """The ``PhysMem:`` line of ``top -l 1 -n 0``, rounded as top prints it.

    ``used`` is everything not ``unused`` (top's own split, not Activity Monitor's
    "Memory Used"); ``compressor`` is ``None`` on OS X 10.9-era output that omits it.
    """

    used_bytes: int
    wired_bytes: int
    compressor_bytes: int | None
    unused_bytes: int

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


_PHYSMEM = re.compile(
    rf"PhysMem:\s*{_SIZE}\s+used\s*\((?P<inner>[^)]*)\)\s*,\s*{_SIZE}\s+unused",
    re.IGNORECASE,
)
_PHYSMEM_PART = re.compile(rf"^{_SIZE}\s+(\w+)$", re.IGNORECASE)


def parse_top_physmem(text: str) -> TopPhysMem:
    """Parse the ``PhysMem:`` line; ``text`` may be the whole top header."""
    match = _PHYSMEM.search(text)
    if match is None:
        raise ValueError("no 'PhysMem: <n> used (...), <n> unused' line")
    parts: dict[str, int] = {}
    for part in match["inner"].split(","):
        item = _PHYSMEM_PART.match(part.strip())
        if item is None:
            raise ValueError(f"unrecognised PhysMem part: {part.strip()!r}")
        parts[item[3].lower()] = _to_bytes(item[1], item[2])
    if "wired" not in parts:
        raise ValueError("PhysMem line has no wired figure")
    return TopPhysMem(
        used_bytes=_to_bytes(match[1], match[2]),
        wired_bytes=parts["wired"],
        compressor_bytes=parts.get("compressor"),
        unused_bytes=_to_bytes(match[4], match[5]),
    )


# --------------------------------------------------------------------------- vm_stat
@dataclass(frozen=True)
class VmStat:
    """``vm_stat`` figures; a ``*_bytes`` field is ``None`` when its line is absent.

    ``compressed_bytes`` is "Pages occupied by compressor" (physical memory the
    compressor holds -- the figure top calls ``compressor``), not "Pages stored in
    compressor" (the uncompressed size of what it holds). ``counts`` keeps every
    numeric line as printed, label without quotes, for anything not exposed here.
    """

    page_size: int
    free_bytes: int | None
    active_bytes: int | None
    inactive_bytes: int | None
    speculative_bytes: int | None
    wired_bytes: int | None
    compressed_bytes: int | None
    purgeable_bytes: int | None
    swapins: int | None
    swapouts: int | None
    counts: dict[str, int] = field(default_factory=dict)


_PAGE_SIZE = re.compile(r"page size of (\d+) bytes")
_VM_STAT_LINE = re.compile(r'^"?(?P<label>[^":]+)"?:\s*(?P<value>\d+)\.?\s*$')
_VM_STAT_PAGES = {
    "free_bytes": "Pages free",
    "active_bytes": "Pages active",
    "inactive_bytes": "Pages inactive",
    "speculative_bytes": "Pages speculative",
    "wired_bytes": "Pages wired down",
    "compressed_bytes": "Pages occupied by compressor",
    "purgeable_bytes": "Pages purgeable",
}


def parse_vm_stat(text: str) -> VmStat:
    """Parse ``vm_stat`` output; partial output (``| head``) gives ``None`` for the rest."""
    header = _PAGE_SIZE.search(text)
    if header is None:
        raise ValueError("no '(page size of N bytes)' header")
    page_size = int(header[1])
    if page_size <= 0:
        raise ValueError(f"page size {page_size} is not positive")
    counts: dict[str, int] = {}
    for raw in text.splitlines():
        line = raw.strip()
        # The header and blank lines carry no figure; "label: N." lines are the data.
        if ":" not in line or _PAGE_SIZE.search(line):
            continue
        match = _VM_STAT_LINE.match(line)
        if match is None:
            raise ValueError(f"unrecognised vm_stat line: {line[:60]!r}")
        counts[match["label"].strip()] = int(match["value"])

    def pages(label: str) -> int | None:
        return None if label not in counts else counts[label] * page_size

    return VmStat(
        page_size=page_size,
        **{name: pages(label) for name, label in _VM_STAT_PAGES.items()},
        swapins=counts.get("Swapins"),
        swapouts=counts.get("Swapouts"),
        counts=counts,
    )


# --------------------------------------------------------------------------- sysctl
@dataclass(frozen=True)
class SwapUsage:
    """``sysctl vm.swapusage``; sysctl rounds to 0.01 MiB, so bytes are that exact."""

    total_bytes: int
    used_bytes: int
    free_bytes: int
    encrypted: bool


_SWAP_FIGURE = re.compile(rf"\b(total|used|free)\s*=\s*{_SIZE}", re.IGNORECASE)


def parse_swapusage(text: str) -> SwapUsage:
    """Parse ``vm.swapusage: total = 4096.00M  used = ...M  free = ...M  (encrypted)``."""
    figures = {m[1].lower(): _to_bytes(m[2], m[3]) for m in _SWAP_FIGURE.finditer(text)}
    missing = [name for name in ("total", "used", "free") if name not in figures]
    if missing:
        raise ValueError(f"vm.swapusage without {', '.join(missing)}")
    return SwapUsage(
        total_bytes=figures["total"],
        used_bytes=figures["used"],
        free_bytes=figures["free"],
        encrypted="(encrypted)" in text,
    )


# xnu's NOTE_MEMORYSTATUS_PRESSURE_* values: a bit mask, hence 1/2/4 and no 3.
PRESSURE_LEVELS = {1: "normal", 2: "warn", 4: "critical"}

_PRESSURE_LEVEL = re.compile(r"^(?:kern\.memorystatus_vm_pressure_level\s*[:=]\s*)?(\d+)\s*$")


def parse_pressure_level(text: str) -> str:
    """``kern.memorystatus_vm_pressure_level: 4`` (or ``sysctl -n``'s bare ``4``) -> a name.

    Other sysctl lines in ``text`` are skipped; ``ValueError`` when the level is missing
    or not 1, 2 or 4.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if line.startswith("kern.memorystatus_vm_pressure_level")]
    candidates = named or (lines if len(lines) == 1 else [])
    if not candidates:
        raise ValueError("no kern.memorystatus_vm_pressure_level value")
    match = _PRESSURE_LEVEL.match(candidates[0])
    if match is None:
        raise ValueError(f"unrecognised pressure level line: {candidates[0]!r}")
    level = int(match[1])
    if level not in PRESSURE_LEVELS:
        raise ValueError(f"unknown memory pressure level {level} (expected 1, 2 or 4)")
    return PRESSURE_LEVELS[level]
