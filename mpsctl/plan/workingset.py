"""Metal's ``recommendedMaxWorkingSetSize``: a reading when one is known, else the rule.

PyTorch's MPS limit is ``high ratio x recommendedMaxWorkingSetSize``, so the working set is
the figure a plan for a Mac depends on most. In order of trust:

1. the running service's own reading (``torch.mps.recommended_max_memory()`` in its
   memory report);
2. a reading the operator passes (``--working-set``);
3. a discrete GPU's own memory (Intel Macs with an AMD GPU: the working set is the VRAM,
   not a share of RAM; a real message from a 4 GB Radeon Pro Vega 20 in a 32 GB Mac says
   ``max allowed: 6.77 GB`` = 1.7 x 3.98 GiB);
4. a published reading for the named chip with that much RAM (:data:`READINGS`);
5. the rule, labelled as an estimate: 2/3 of RAM below 48 GiB, 3/4 from there.

The rule is exact for every 2023-era reading (8 to 96 GB); newer Macs can read higher
(an M3 with 16 GB: 74 %; an M5 Max with 128 GB on macOS 26: 84 %), so the rule errs low
there, which keeps a plan on the safe side of the allocator's limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mpsctl.units import GIB

MIB = 1024**2
SMALL_MAC_FRACTION = (2, 3)
LARGE_MAC_FRACTION = (3, 4)
LARGE_MAC_FROM_BYTES = 48 * GIB  # between the 32 GB (2/3) and 64 GB (3/4) readings


@dataclass(frozen=True)
class Reading:
    """One published ``recommendedMaxWorkingSetSize``, as its source printed it."""

    chip: str
    ram_gib: int
    working_set_bytes: int
    printed: str
    source: str


#: every reading in tests/fixtures/planning-recommended-working-set.tsv whose post names
#: both the chip and the RAM (2023 llama.cpp logs print MiB under an "MB" label; newer
#: builds divide by 10**6; llmfit and the Metal probe print GiB)
READINGS: tuple[Reading, ...] = (
    Reading("m1", 8, round(5461.34 * MIB), "5461.34 MB (MiB)",
            "https://github.com/mozilla-ai/llamafile/issues/42"),
    Reading("m1", 16, round(10922.67 * MIB), "10922.67 MB (MiB)",
            "https://github.com/abetlen/llama-cpp-python/issues/687"),
    Reading("m1 max", 32, round(21845.34 * MIB), "21845.34 MB (MiB)",
            "https://github.com/ggml-org/llama.cpp/pull/2011"),
    Reading("m2 max", 32, round(21845.34 * MIB), "21845.34 MB (MiB)",
            "https://github.com/ollama/ollama/issues/434"),
    Reading("m1 max", 64, 49152 * MIB, "49152.00 MiB",
            "https://github.com/ggml-org/llama.cpp/issues/1870"),
    Reading("m2 max", 96, 73728 * MIB, "73728,00 MB (MiB)",
            "https://github.com/ggml-org/llama.cpp/issues/3213"),
    Reading("m3", 16, round(11.84 * GIB), "11.84 GB (GiB) of 16.00",
            "https://github.com/AlexsJones/llmfit/pull/754"),
    Reading("m5 max", 128, round(107.52 * GIB), "107.52 GiB (macOS 26)",
            "https://github.com/antirez/ds4/pull/893"),
)  # fmt: skip


def chip_key(name: str) -> str:
    """``Apple M1 Max``, ``m1-max`` and ``M1MAX`` all name ``m1 max``."""
    text = re.sub(r"[-_\s]+", " ", name.strip().lower()).removeprefix("apple ").strip()
    return re.sub(r"^(m\d+)\s*(pro|max|ultra)?$", lambda m: " ".join(filter(None, m.groups())),
                  text)  # fmt: skip


def published_reading(chip: str, ram: int) -> Reading | None:
    key = chip_key(chip)
    for reading in READINGS:
        if reading.chip == key and reading.ram_gib * GIB == ram:
            return reading
    return None


def rule_working_set(ram: int) -> tuple[int, str]:
    num, den = LARGE_MAC_FRACTION if ram >= LARGE_MAC_FROM_BYTES else SMALL_MAC_FRACTION
    return ram * num // den, f"estimate: {num}/{den} of RAM (Metal's reading on Macs of that size)"


def working_set(
    ram: int,
    *,
    reported: int | None = None,
    given: int | None = None,
    discrete_gpu: int | None = None,
    chip: str | None = None,
) -> tuple[int, str]:
    """(bytes, where it came from), in the order of trust of the module's docstring."""
    if reported is not None:
        return reported, "the service's memory report (torch.mps.recommended_max_memory())"
    if given is not None:
        return given, "--working-set"
    if discrete_gpu is not None:
        return discrete_gpu, "estimate: the discrete GPU's own memory (--discrete-gpu)"
    if chip is not None:
        reading = published_reading(chip, ram)
        if reading is not None:
            return reading.working_set_bytes, (
                f"published reading for Apple {reading.chip.title()} with {reading.ram_gib} GB: "
                f"{reading.printed} ({reading.source})"
            )
        size, rule = rule_working_set(ram)
        return size, f"{rule}; no published reading for {chip} with {ram / GIB:g} GiB"
    return rule_working_set(ram)
