"""The scanner's first pass: where in a log the memory failures' byte needles are.

Two ways to the same list of hits (a needle's offset and the newlines before it): the
system's ``rg``/``grep -F`` (``grep_pass``), which searches for a few *prefilter* needles at
the machine's speed and returns only the candidate lines, in which every needle is then
located exactly; or, as fallback and reference, ``find_in_range``: a ``bytes`` search per
needle over big chunks (in spawned workers for very large files). The tests hold the two to
the same hits on every recorded sample.
"""

from __future__ import annotations

import io
import os

from mpsctl.deaths.allocator import NEEDLES
from mpsctl.deaths.prefilter import PREFILTER_NEEDLES

__all__ = [  # PREFILTER_NEEDLES lives in prefilter.py (the probe reads it alone)
    "ALL_NEEDLES", "CHUNK_BYTES", "DEATH_NEEDLES", "MAX_NEEDLE", "PARALLEL_MAX_WORKERS",
    "PARALLEL_MIN_BYTES", "PARALLEL_MIN_CPUS", "PREFILTER_NEEDLES", "Hit", "find_in_range",
    "parallel_hits",
]  # fmt: skip

#: (absolute offset of a needle, newlines in the file before it)
Hit = tuple[int, int]

#: read size of the Python pass (one reused buffer; 64 KiB-4 MiB measured the same)
CHUNK_BYTES = 256 * 1024
#: bytes that start (or, for the kernel, head) every memory death ``parsers`` reads; fixed
#: strings, so grep and ``bytes.find`` agree. "Killed process" and "Out of memory" also catch a
#: kill line hard-wrapped after them. Long needles on purpose: a multi-string search skips
#: ahead by up to the shortest needle's length, so one short needle slows every byte.
#: systemd-oomd's "oomd attempting to kill N" lines are read with the kill line below them (the
#: scanner reads a few lines above each cluster); a jetsam report's ``processes`` entry is
#: found by its ``"rpages"`` key and read whole around it.
DEATH_NEEDLES = (
    b"Out of memory", b"Killed process", b"invoked oom-killer", b"oom-kill:constraint",
    b"Killed /", b"for killing", b"systemd-oomd killed ", b"been killed by the OOM",
    b"memorystatus", b"killing_", b"killed by jetsam", b"exceeded mem limit", b"Worker (pid:",
    b"Worker with pid", b"WORKER TIMEOUT", b"CPUAllocator", b"CUBLAS_STATUS_",
    b"NDArray initWithDevice", b"killed as a result", b"Invalid buffer size",
    b"Output size of the matrix", b'"rpages"',
)  # fmt: skip
ALL_NEEDLES = NEEDLES + DEATH_NEEDLES
MAX_NEEDLE = max(len(n) for n in ALL_NEEDLES)


#: Workers for the Python pass (used only where neither rg nor grep works): each costs
#: 0.1-0.2 s CPU to spawn and the parent's resolve pass stays serial. Measured (minimum of 2
#: interleaved runs, CPU incl. children): on 2 busy cores at 256 and 512 MiB the workers were
#: no faster than one process (median wall 3.92 s vs 4.24 s, 8.11 s vs 7.96 s) and cost 20%
#: more CPU; on 16 cores, 8 workers took a 1 GiB log from 9.5 s to 1.6 s wall (11.0 s vs
#: 9.5 s CPU) and 512 MiB from 4.8 s to 1.1 s. So they run on machines with cores to spare,
#: on files large enough that no core count measured made them slower.
PARALLEL_MIN_BYTES = 1024 * 1024 * 1024
PARALLEL_MIN_CPUS = 4
PARALLEL_MAX_WORKERS = 8


def _range_hits(
    path: str, start: int, end: int, identity: tuple[int, int]
) -> tuple[int, list[Hit]] | None:
    """A worker's share: ``find_in_range`` on ``[start, end)`` of the same file (None if the
    path now names another file: it was rotated after the parent opened it)."""
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if (info.st_dev, info.st_ino) != identity:
            return None
        return find_in_range(handle, start, end)


def parallel_hits(
    path: str | os.PathLike[str], info: os.stat_result, size: int, workers: int | None = None
) -> list[Hit] | None:
    """Hits of a large file found by worker processes, one range each; None to scan alone.

    The search is CPU-bound and CPython's ``bytes.find``/``count`` hold the GIL, so threads
    would not help. Workers are *spawned*, never forked: fork without exec is unsafe on
    macOS and in a process with threads. A needle across two ranges is found by the range it
    starts in (``find_in_range`` looks past its end), and each range's newline count is
    offset by the ranges before it, so the result equals a single pass.
    """
    if workers is None:
        cpus = os.cpu_count() or 1
        workers = min(cpus, PARALLEL_MAX_WORKERS) if cpus >= PARALLEL_MIN_CPUS else 1
        if os.environ.get("MPSCTL_OOM_WORKERS", "").isdigit():  # benchmarks compare 0 / n
            workers = min(workers, int(os.environ["MPSCTL_OOM_WORKERS"]))
    if workers < 2 or size < PARALLEL_MIN_BYTES:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    bounds = [size * i // workers for i in range(workers + 1)]
    where = os.path.abspath(os.fspath(path))
    identity = (info.st_dev, info.st_ino)
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = list(
                pool.map(_range_hits, [where] * workers, bounds[:-1], bounds[1:],
                         [identity] * workers)
            )  # fmt: skip
    except (OSError, BrokenProcessPool):
        return None  # no processes to be had here: the single pass still works
    hits: list[Hit] = []
    before = 0
    for part in parts:
        if part is None:
            return None
        newlines, found = part
        hits += [(offset, before + count) for offset, count in found]
        before += newlines
    return hits


def _edge_hits(tail: bytes, head: bytes | bytearray, offset: int, newlines: int) -> list[Hit]:
    """Needles that start in ``tail`` (ending at ``offset``) and end in ``head``."""
    hits = []
    for needle in ALL_NEEDLES:
        k = len(needle) - 1
        found = (tail[-k:] + head[:k]).find(needle)
        if 0 <= found < len(tail[-k:]):
            # a needle holds no newline, so none lies between it and `offset`
            hits.append((offset - len(tail[-k:]) + found, newlines))
    return hits


def find_in_range(handle: io.BufferedReader, start: int, end: int) -> tuple[int, list[Hit]]:
    """Newlines in ``[start, end)`` and the needles starting there (newlines counted from
    ``start``). The hot loop: per chunk one search per needle and one newline count."""
    hits: list[Hit] = []
    newlines = 0
    # One reused buffer: a fresh bytes object per read costs an allocation and page faults.
    buffer = bytearray(max(min(CHUNK_BYTES, end - start), 1))
    tail = b""  # the last bytes before the chunk, for a needle across the chunk boundary
    handle.seek(start)
    pos = start
    while pos < end:
        size = min(handle.readinto(buffer), end - pos)
        if size <= 0:
            break
        chunk = buffer if size == len(buffer) else buffer[:size]
        hits += _edge_hits(tail, chunk[: MAX_NEEDLE - 1], pos, newlines)
        found_at = []
        for needle in ALL_NEEDLES:
            found = chunk.find(needle)
            while found >= 0:
                found_at.append(found)
                found = chunk.find(needle, found + 1)
        counted, counted_to = newlines, 0
        for found in sorted(found_at):  # incremental: a log full of OOMs stays linear
            counted += chunk.count(b"\n", counted_to, found)
            counted_to = found
            hits.append((pos + found, counted))
        newlines += chunk.count(b"\n")
        tail = bytes(chunk[-(MAX_NEEDLE - 1) :])
        pos += size
    if pos == end and tail:
        handle.seek(end)
        hits += _edge_hits(tail, handle.read(MAX_NEEDLE - 1), end, newlines)
    return newlines, sorted(hits)
