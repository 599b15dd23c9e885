"""macOS parsers against recorded real outputs (tests/fixtures/SOURCES.md).

Expected figures are worked out by hand from the fixture text: ``1938M`` is
``1938 * MIB``, a vm_stat count is pages times the header's page size.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from mpsctl.observe.macos import (
    parse_pressure_level,
    parse_swapusage,
    parse_top_physmem,
    parse_vm_stat,
)
from tests.conftest import read_fixture

KIB, MIB, GIB = 1024, 1024**2, 1024**3


# --------------------------------------------------------------------------- top
@pytest.mark.parametrize(
    ("name", "used", "wired", "compressor", "unused"),
    [
        ("macos-top-physmem-1-osx10.9.txt", 7304 * MIB, 1796 * MIB, None, 25 * GIB),
        ("macos-top-physmem-2-no-compressor.txt", 4329 * MIB, 1426 * MIB, None, 3861 * MIB),
        ("macos-top-physmem-3-apple-silicon-16gb.txt", 15 * GIB, 1938 * MIB, 4814 * MIB, 438 * MIB),
        ("macos-top-physmem-5-apple-silicon.txt", 14 * GIB, 2169 * MIB, 607 * MIB, 1192 * MIB),
        ("macos-top-header-1-apple-silicon-32gb.txt", 31 * GIB, 2221 * MIB, 1884 * MIB, 344 * MIB),
        ("macos-top-header-2-apple-silicon-16gb.txt", 15 * GIB, 1938 * MIB, 4814 * MIB, 438 * MIB),
    ],
)
def test_top_physmem_fixtures(
    name: str, used: int, wired: int, compressor: int | None, unused: int
) -> None:
    physmem = parse_top_physmem(read_fixture(name))
    assert physmem.as_dict() == {
        "used_bytes": used,
        "wired_bytes": wired,
        "compressor_bytes": compressor,
        "unused_bytes": unused,
    }


def test_top_physmem_units_are_1024_based() -> None:
    physmem = parse_top_physmem("PhysMem: 1T used (512K wired, 3G compressor), 2M unused.")
    assert (physmem.used_bytes, physmem.wired_bytes) == (1024**4, 512 * KIB)
    assert (physmem.compressor_bytes, physmem.unused_bytes) == (3 * GIB, 2 * MIB)


# --------------------------------------------------------------------------- vm_stat
VM_STAT_FIELDS = (
    "page_size",
    "free_bytes",
    "active_bytes",
    "inactive_bytes",
    "speculative_bytes",
    "wired_bytes",
    "compressed_bytes",
    "purgeable_bytes",
    "swapins",
    "swapouts",
)


def _pages(page: int, *counts: int | None) -> tuple[int | None, ...]:
    return tuple(None if count is None else count * page for count in counts)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "macos-vm_stat-1-apple-silicon-32gb.txt",
            (16384, *_pages(16384, 15160, 892723, 889884, 2084, 142222, 120555, 11748), 0, 0),
        ),
        (
            "macos-vm_stat-2-apple-silicon-8gb-swapping.txt",
            (
                16384,
                *_pages(16384, 3649, 76241, 72857, 2548, 138682, 192907, 1103),
                189382299,
                194644843,
            ),
        ),
        (
            "macos-vm_stat-3-intel-4096.txt",
            (4096, *_pages(4096, 6127229, 485320, 628646, 430715, 715958, 0, 11820), 0, 0),
        ),
        (
            "macos-vm_stat-5-apple-silicon-16gb-head12.txt",
            (
                16384,
                *_pages(16384, 12216, 282766, 267123, 14945, 123968, None, 1058),
                None,
                None,
            ),
        ),
        ("macos-vm_stat-header-m1-mac-mini.txt", (16384, *(None,) * 9)),
    ],
)
def test_vm_stat_fixtures(name: str, expected: tuple[int | None, ...]) -> None:
    vm_stat = parse_vm_stat(read_fixture(name))
    assert tuple(getattr(vm_stat, field) for field in VM_STAT_FIELDS) == expected


def test_vm_stat_keeps_every_count_including_quoted_labels() -> None:
    vm_stat = parse_vm_stat(read_fixture("macos-vm_stat-1-apple-silicon-32gb.txt"))
    assert len(vm_stat.counts) == 22
    assert vm_stat.counts["Translation faults"] == 6256987137
    assert vm_stat.counts["Pages stored in compressor"] == 329758


def test_vm_stat_page_size_changes_bytes_not_counts() -> None:
    body = "Pages wired down:  10.\nPages occupied by compressor:  3.\n"
    small = parse_vm_stat("Mach Virtual Memory Statistics: (page size of 4096 bytes)\n" + body)
    large = parse_vm_stat("Mach Virtual Memory Statistics: (page size of 16384 bytes)\n" + body)
    assert (small.wired_bytes, small.compressed_bytes) == (10 * 4096, 3 * 4096)
    assert (large.wired_bytes, large.compressed_bytes) == (10 * 16384, 3 * 16384)


# top's "compressor" is vm_stat's "Pages occupied by compressor", rounded to MiB. The pair
# comes from one report (SOURCES.md refs).
def test_top_compressor_matches_vm_stat_same_mac() -> None:
    vm_stat = parse_vm_stat(read_fixture("macos-vm_stat-1-apple-silicon-32gb.txt"))
    top = parse_top_physmem(read_fixture("macos-top-header-1-apple-silicon-32gb.txt"))
    assert vm_stat.compressed_bytes is not None
    assert round(vm_stat.compressed_bytes / MIB) * MIB == top.compressor_bytes


# --------------------------------------------------------------------------- sysctl
@pytest.mark.parametrize(
    ("name", "total", "used", "free"),
    [
        (
            "macos-sysctl-swapusage-1-comma-locale.txt",
            1024 * MIB,
            379 * MIB + MIB // 4,
            644 * MIB + 3 * MIB // 4,
        ),
        ("macos-sysctl-swapusage-2.txt", 4096 * MIB, 2743 * MIB + MIB // 2, 1352 * MIB + MIB // 2),
    ],
)
def test_swapusage_fixtures(name: str, total: int, used: int, free: int) -> None:
    swap = parse_swapusage(read_fixture(name))
    assert (swap.total_bytes, swap.used_bytes, swap.free_bytes, swap.encrypted) == (
        total,
        used,
        free,
        True,
    )


def test_swapusage_unencrypted_and_empty_swap() -> None:
    swap = parse_swapusage("vm.swapusage: total = 0.00M  used = 0.00M  free = 0.00M")
    assert (swap.total_bytes, swap.used_bytes, swap.free_bytes, swap.encrypted) == (0, 0, 0, False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (read_fixture("macos-sysctl-memorystatus-pressure-level-1.txt"), "normal"),
        (read_fixture("macos-sysctl-memorystatus-pressure-level-2-critical.txt"), "critical"),
        ("kern.memorystatus_vm_pressure_level: 2\n", "warn"),
        ("4\n", "critical"),
    ],
)
def test_pressure_level(text: str, expected: str) -> None:
    assert parse_pressure_level(text) == expected


# --------------------------------------------------------------------------- malformed
@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_top_physmem, "", "no 'PhysMem: <n> used (...), <n> unused' line"),
        (
            parse_top_physmem,
            "PhysMem: lots used (some wired), 1M unused.",
            "no 'PhysMem: <n> used (...), <n> unused' line",
        ),
        (
            parse_top_physmem,
            "PhysMem: 15G used (4814M compressor), 438M unused.",
            "PhysMem line has no wired figure",
        ),
        (
            parse_top_physmem,
            "PhysMem: 15G used (1938M wired, 4814X compressor), 438M unused.",
            "unrecognised PhysMem part: '4814X compressor'",
        ),
        (parse_vm_stat, "Pages free: 15160.\n", "no '(page size of N bytes)' header"),
        (
            parse_vm_stat,
            "Mach Virtual Memory Statistics: (page size of 16384 bytes)\nPages free: many.\n",
            "unrecognised vm_stat line: 'Pages free: many.'",
        ),
        (
            parse_vm_stat,
            "Mach Virtual Memory Statistics: (page size of 0 bytes)\n",
            "page size 0 is not positive",
        ),
        (
            parse_swapusage,
            "vm.swapusage: total = 4096.00M  used = 2743.50M",
            "vm.swapusage without free",
        ),
        (
            parse_swapusage,
            "sysctl: unknown oid 'vm.swapusage'",
            "vm.swapusage without total, used, free",
        ),
        (parse_pressure_level, "", "no kern.memorystatus_vm_pressure_level value"),
        (
            parse_pressure_level,
            "kern.memorystatus_vm_pressure_level: 3\n",
            "unknown memory pressure level 3 (expected 1, 2 or 4)",
        ),
        (
            parse_pressure_level,
            "kern.memorystatus_vm_pressure_level: high\n",
            "unrecognised pressure level line: 'kern.memorystatus_vm_pressure_level: high'",
        ),
        (
            parse_pressure_level,
            "vm.memory_pressure: 0\nvm.page_free_wanted: 0\n",
            "no kern.memorystatus_vm_pressure_level value",
        ),
    ],
)
def test_malformed_input_raises_value_error(
    parse: Callable[[str], Any], text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse(text)
