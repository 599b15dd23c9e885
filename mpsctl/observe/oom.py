"""Recognise PyTorch out-of-memory messages (MPS, CUDA, every known wording) and scan logs.

Pure functions: ``parse_oom(text)`` reads one message, ``explain(event)`` turns it into plain
advice with exact numbers, ``scan_file(path)`` streams a log of any size. Nothing here imports
torch: the messages are all the CLI ever sees of another process's memory.

Formats (see ``MEMORY-FACTS.md``; samples in ``tests/fixtures/torch-*``):

* MPS  ``MPS backend out of memory (MPS allocated: A, other allocations: B[, max allowed: C]).
  Tried to allocate D on private|shared pool.`` -- units bytes/KB/MB/GB (older) or
  KiB/MiB/GiB (newer), all 1024-based; no ``max allowed`` when the high ratio is 0.0.
* CUDA ``Tried to allocate X. GPU n has a total capacity of T of which F is free. ...``
  (2.1 spells it ``capacty``), older ``Tried to allocate X (GPU n; T total capacity;
  A already allocated; F free; [L allowed; ]R reserved in total by PyTorch)``, 1.0-era ``cached``.
* MPS ``invalid low|high watermark ratio R``: a configuration error, not an OOM.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from mpsctl.torch_env import (
    DEFAULT_HIGH_RATIO,
    DEFAULT_LOW_RATIO,
    FALLBACK_ENV,
    HIGH_ENV,
    LOW_ENV,
    MAX_RATIO,
)

_UNITS = {
    "bytes": 1, "B": 1,
    "KB": 1024, "KiB": 1024,
    "MB": 1024**2, "MiB": 1024**2,
    "GB": 1024**3, "GiB": 1024**3,
    "TB": 1024**4, "TiB": 1024**4,
}  # fmt: skip

_SIZE = r"(\d+(?:\.\d+)?)\s*(bytes|KiB|MiB|GiB|TiB|KB|MB|GB|TB|B)\b"
_S = r"\s+"  # log wrappers may break a long message anywhere between words

_MPS_HEAD = re.compile(
    rf"MPS backend out of memory{_S}\(MPS allocated:{_S}{_SIZE},{_S}other allocations:{_S}{_SIZE}"
    rf"(?:,{_S}max allowed:{_S}{_SIZE})?\)"
)
_MPS_TAIL = re.compile(rf"\.?{_S}Tried to allocate{_S}{_SIZE}{_S}on{_S}(private|shared){_S}pool")
_CUDA_HEAD = re.compile(rf"CUDA out of memory\.{_S}Tried to allocate{_S}{_SIZE}")
_CUDA_NEW = re.compile(
    rf"\.{_S}GPU{_S}(\d+){_S}has a total (?:capacity|capacty){_S}of{_S}{_SIZE}{_S}of which{_S}"
    rf"{_SIZE}{_S}is free\.(?P<procs>(?:{_S}(?:Including non-PyTorch memory,{_S}this process|"
    rf"Process{_S}\d+){_S}has{_S}{_SIZE}{_S}memory in use\.)*)"
    rf"(?:{_S}{_SIZE}{_S}allowed;)?{_S}Of the allocated memory{_S}{_SIZE}{_S}is allocated by"
    rf"{_S}PyTorch,(?:{_S}with{_S}{_SIZE}{_S}allocated in private pools[^,]*,[^,]*,)?{_S}and"
    rf"{_S}{_SIZE}{_S}is reserved by PyTorch but unallocated"
)
_CUDA_PROC = re.compile(
    rf"(?:Including non-PyTorch memory,{_S}this process|Process{_S}(\d+)){_S}has{_S}{_SIZE}"
)
_CUDA_OLD = re.compile(
    rf"\s*\(GPU{_S}(\d+);{_S}{_SIZE}{_S}total (?:capacity|capacty);{_S}{_SIZE}{_S}already"
    rf"{_S}allocated;{_S}{_SIZE}{_S}free;(?:{_S}{_SIZE}{_S}allowed;)?{_S}{_SIZE}{_S}"
    rf"(reserved in total by PyTorch|cached)\)"
)
_WATERMARK = re.compile(r"invalid (high|low) watermark ratio\s+(\S+)")

#: cheap byte tests run over whole chunks before any regex (both are case-sensitive in torch)
NEEDLES = (b"out of memory", b"watermark ratio")

# A log line's own timestamp: logging's asctime (``2026-01-21 19:38:40,123``), ISO 8601 with
# ``T``/``Z``/offset, loguru (``.123``), gunicorn (``[2026-01-21 19:38:40 +0000]``).
_TIMESTAMP = re.compile(
    r"(?<!\d)(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(?:\s?(Z|[+-]\d{2}:?\d{2})(?!\d))?"
)
_TIMESTAMP_WITHIN = 64  # the stamp must start near the line start, not inside the message


@dataclass(frozen=True)
class OtherProcess:
    pid: int
    bytes: int


@dataclass(frozen=True)
class OomEvent:
    """One recognised message. Byte counts are exact integers (units are 1024-based)."""

    backend: str  # "mps" | "cuda"
    kind: str  # "oom" | "invalid_high_watermark" | "invalid_low_watermark"
    raw: str  # the message verbatim (the whole line(s) it was found on)
    # MPS and CUDA
    requested_bytes: int | None = None
    allocated_bytes: int | None = None
    # MPS
    other_bytes: int | None = None
    max_allowed_bytes: int | None = None  # None: high ratio 0.0 (no limit)
    pool: str | None = None  # "private" | "shared"
    # CUDA
    gpu_index: int | None = None
    total_bytes: int | None = None
    free_bytes: int | None = None
    process_bytes: int | None = None  # this process, non-PyTorch memory included
    other_processes: tuple[OtherProcess, ...] = ()
    allowed_bytes: int | None = None  # set_per_process_memory_fraction
    reserved_bytes: int | None = None  # older wording: reserved in total (allocated included)
    reserved_unallocated_bytes: int | None = None
    # invalid watermark ratio
    ratio: str | None = None  # as printed: it may be text strtod could not read
    #: False when only the start of the message was found (cut or wrapped beyond recognition)
    complete: bool = True
    # where it was found (scan_file)
    file: str | None = None
    line: int | None = None
    time: str | None = None  # ISO 8601 UTC, when the line (or its record) carries a timestamp
    #: ``time`` as a datetime (not in JSON), for ``--since`` and merging
    when: datetime | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON shape: location, backend-relevant ``*_bytes`` (null when absent), summary."""
        doc: dict[str, Any] = {
            "backend": self.backend,
            "kind": self.kind,
            "file": self.file,
            "line": self.line,
            "time": self.time,
        }
        if self.kind != "oom":
            doc["ratio"] = self.ratio
        elif self.backend == "mps":
            doc.update(
                allocated_bytes=self.allocated_bytes,
                other_bytes=self.other_bytes,
                max_allowed_bytes=self.max_allowed_bytes,
                requested_bytes=self.requested_bytes,
                pool=self.pool,
            )
        else:
            doc.update(
                requested_bytes=self.requested_bytes,
                gpu_index=self.gpu_index,
                total_bytes=self.total_bytes,
                free_bytes=self.free_bytes,
                process_bytes=self.process_bytes,
                other_processes=[{"pid": p.pid, "bytes": p.bytes} for p in self.other_processes],
                allowed_bytes=self.allowed_bytes,
                allocated_bytes=self.allocated_bytes,
                reserved_bytes=self.reserved_bytes,
                reserved_unallocated_bytes=self.reserved_unallocated_bytes,
            )
        doc["complete"] = self.complete
        doc["summary"] = summary(self)
        doc["raw"] = self.raw
        return doc


# --------------------------------------------------------------------------- parsing
def size_to_bytes(number: str, unit: str) -> int:
    """``"20.14", "GiB"`` -> 21625160335. PyTorch's ``KB/MB/GB`` are 1024-based too."""
    return round(float(number) * _UNITS[unit])


def _size(match: re.Match[str], group: int) -> int | None:
    number = match.group(group)
    return None if number is None else size_to_bytes(number, match.group(group + 1))


def _line_span(text: str, start: int, end: int) -> str:
    """The whole line(s) holding ``text[start:end]``: the message as it was logged."""
    first = text.rfind("\n", 0, start) + 1
    last = text.find("\n", end)
    return text[first : len(text) if last < 0 else last].rstrip()


def parse_oom(text: str) -> OomEvent | None:
    """The first OOM (or invalid watermark) message in ``text``, or None.

    ``text`` is one message: a line, a line plus its continuation, or a traceback's text.
    A message whose start is there but whose details are cut off gives ``complete=False``.
    """
    if "out of memory" in text:
        match = _MPS_HEAD.search(text)
        if match:
            return _parse_mps(text, match)
        match = _CUDA_HEAD.search(text)
        if match:
            return _parse_cuda(text, match)
    if "watermark ratio" in text:
        match = _WATERMARK.search(text)
        if match:
            return OomEvent(
                backend="mps",
                kind=f"invalid_{match.group(1)}_watermark",
                raw=_line_span(text, match.start(), match.end()),
                ratio=match.group(2).rstrip(".,;:"),
            )
    return None


def _parse_mps(text: str, head: re.Match[str]) -> OomEvent:
    tail = _MPS_TAIL.match(text, head.end())
    end = tail.end() if tail else head.end()
    return OomEvent(
        backend="mps",
        kind="oom",
        raw=_line_span(text, head.start(), end),
        allocated_bytes=_size(head, 1),
        other_bytes=_size(head, 3),
        max_allowed_bytes=_size(head, 5),
        requested_bytes=_size(tail, 1) if tail else None,
        pool=tail.group(3) if tail else None,
        complete=tail is not None,
    )


def _parse_cuda(text: str, head: re.Match[str]) -> OomEvent:
    requested = _size(head, 1)
    new = _CUDA_NEW.match(text, head.end())
    if new:
        this_process: int | None = None
        others: list[OtherProcess] = []
        for proc in _CUDA_PROC.finditer(new.group("procs") or ""):
            used = size_to_bytes(proc.group(2), proc.group(3))
            if proc.group(1) is None:
                this_process = used
            else:
                others.append(OtherProcess(pid=int(proc.group(1)), bytes=used))
        # group numbers: 1 gpu, 2-3 total, 4-5 free, procs, then allowed, allocated,
        # private pools, unallocated (each a number + unit pair)
        base = new.re.groupindex["procs"]
        return OomEvent(
            backend="cuda",
            kind="oom",
            raw=_line_span(text, head.start(), new.end()),
            requested_bytes=requested,
            gpu_index=int(new.group(1)),
            total_bytes=_size(new, 2),
            free_bytes=_size(new, 4),
            process_bytes=this_process,
            other_processes=tuple(others),
            allowed_bytes=_size(new, base + 3),
            allocated_bytes=_size(new, base + 5),
            reserved_unallocated_bytes=_size(new, base + 9),
        )
    old = _CUDA_OLD.match(text, head.end())
    if old:
        # groups: 1 gpu, then number + unit pairs: 2 total, 4 allocated, 6 free, 8 allowed,
        # 10 reserved; 12 the word for it
        cached = old.group(12) == "cached"
        reserved = _size(old, 10)
        return OomEvent(
            backend="cuda",
            kind="oom",
            raw=_line_span(text, head.start(), old.end()),
            requested_bytes=requested,
            gpu_index=int(old.group(1)),
            total_bytes=_size(old, 2),
            allocated_bytes=_size(old, 4),
            free_bytes=_size(old, 6),
            allowed_bytes=_size(old, 8),
            # 1.0's "cached" was already reserved minus allocated; later "reserved in
            # total" includes the allocated part.
            reserved_bytes=None if cached else reserved,
            reserved_unallocated_bytes=reserved if cached else None,
        )
    return OomEvent(
        backend="cuda",
        kind="oom",
        raw=_line_span(text, head.start(), head.end()),
        requested_bytes=requested,
        complete=False,
    )


def mentions_oom(line: str) -> bool:
    """Does this line start an OOM or invalid-watermark message? (``mpsctl logs --oom``)"""
    if "out of memory" in line:
        return bool(_MPS_HEAD.search(line) or _CUDA_HEAD.search(line))
    return "watermark ratio" in line and _WATERMARK.search(line) is not None


# --------------------------------------------------------------------------- explaining
def short_size(value: int | None) -> str:
    """``20.14 GiB``, ``384 KiB``, ``256 bytes``: two decimals, trailing zeros dropped."""
    if value is None:
        return "unknown"
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= scale:
            text = f"{value / scale:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{value} bytes"


def summary(event: OomEvent) -> str:
    """One line with every number, e.g. ``MPS allocated 20.14 GiB, other 384 KiB, ...``."""
    if event.kind == "invalid_high_watermark":
        return f"invalid high watermark ratio {event.ratio} ({HIGH_ENV})"
    if event.kind == "invalid_low_watermark":
        return f"invalid low watermark ratio {event.ratio} ({LOW_ENV})"
    if event.backend == "mps":
        limit = (
            f"max allowed {short_size(event.max_allowed_bytes)}"
            if event.max_allowed_bytes is not None
            else "no limit (high ratio 0.0)"
        )
        parts = [
            f"MPS allocated {short_size(event.allocated_bytes)}",
            f"other {short_size(event.other_bytes)}",
            limit,
            f"requested {short_size(event.requested_bytes)}",
        ]
        if event.pool:
            parts.append(f"{event.pool} pool")
        return ", ".join(parts)
    gpu = f"GPU {event.gpu_index}" if event.gpu_index is not None else "GPU"
    parts = [f"CUDA {gpu}: requested {short_size(event.requested_bytes)}"]
    optional = (
        ("total", event.total_bytes),
        ("free", event.free_bytes),
        ("this process", event.process_bytes),
        ("allowed", event.allowed_bytes),
        ("allocated by PyTorch", event.allocated_bytes),
        ("reserved by PyTorch", event.reserved_bytes),
        ("reserved but unallocated", event.reserved_unallocated_bytes),
    )
    parts += [f"{label} {short_size(value)}" for label, value in optional if value is not None]
    parts += [f"process {p.pid} {short_size(p.bytes)}" for p in event.other_processes]
    return ", ".join(parts)


#: the high/low ratio pair suggested to keep macOS out of swap (low <= high, as PyTorch demands)
_SUGGESTED_HIGH, _SUGGESTED_LOW = 0.7, 0.5

#: recommendedMaxWorkingSetSize seen on Apple Silicon (GiB) -> RAM of the Mac (GB)
_KNOWN_WORKING_SETS = ((5.33, 8), (10.67, 16), (16.0, 24), (21.33, 32), (37.44, 48))


def explain(event: OomEvent, high_ratio_hint: float | None = None) -> list[str]:
    """Plain advice with exact numbers. ``high_ratio_hint``: the ratio the service ran with."""
    if event.kind == "invalid_low_watermark":
        return [
            f"PyTorch refused {LOW_ENV}={event.ratio}: the low ratio must "
            f"be <= the high ratio (or <= {MAX_RATIO:.1f} when high is 0.0). The service fails at "
            "its first MPS allocation.",
            f"The usual cause: {HIGH_ENV} set below {DEFAULT_LOW_RATIO:g} without also "
            f"setting LOW (its default is {DEFAULT_LOW_RATIO:g} on unified memory). Set both, "
            "e.g. HIGH=0.7 "
            "LOW=0.5 (mpsctl.toml [memory] high_watermark_ratio / low_watermark_ratio); "
            "`mpsctl config show` checks the pair before anything starts.",
        ]
    if event.kind == "invalid_high_watermark":
        return [
            f"PyTorch refused {HIGH_ENV}={event.ratio}: it must be a "
            f"number in 0.0-{MAX_RATIO:.1f} (older builds on discrete-GPU Macs: 0.0-1.0). The "
            "service fails at its first MPS allocation.",
            "Note PyTorch reads it with strtod: a non-numeric value silently becomes 0.0 "
            "(no limit) instead of failing. Set it through mpsctl.toml [memory], which "
            "validates it.",
        ]
    if event.backend == "mps":
        return _explain_mps(event, high_ratio_hint)
    return _explain_cuda(event)


def _explain_mps(event: OomEvent, hint: float | None) -> list[str]:
    advice: list[str] = []
    limit = event.max_allowed_bytes
    allocated = (event.allocated_bytes or 0) + (event.other_bytes or 0)
    requested = event.requested_bytes
    if limit is None:
        advice.append(
            f"No limit was set ({HIGH_ENV}=0.0): Metal itself refused "
            f"the allocation with {short_size(allocated)} in use. The Mac is out of memory "
            "and was probably swapping hard before this; set a limit (below) so PyTorch "
            "fails before macOS does."
        )
        working_set = None
    else:
        if hint is not None and hint > 0:
            ratio, how = hint, f"the service's high ratio {hint:g}"
        else:
            ratio = DEFAULT_HIGH_RATIO
            how = (
                f"ratio {ratio:g} assumed: PyTorch's default; "
                "pass --high-ratio if the service ran with another"
            )
        working_set = round(limit / ratio)
        advice.append(
            f"Limit: max allowed {short_size(limit)} = high watermark ratio x the GPU's "
            f"recommendedMaxWorkingSetSize, so that size is {short_size(limit)} / {ratio:g} = "
            f"{short_size(working_set)} ({how}).{_mac_size(working_set)}"
        )
        if requested is not None:
            total = allocated + requested
            if requested * 100 < limit:
                advice.append(
                    f"The process already held {short_size(allocated)} (allocated + other) of "
                    f"{short_size(limit)} and failed on a small request ({short_size(requested)}): "
                    "memory grew up to the limit over time. Look for memory that is never "
                    "freed (a previous model still referenced, caches, growing batches), not "
                    "for one oversized tensor."
                )
            else:
                advice.append(
                    f"One large request: {short_size(requested)} "
                    f"({requested * 100 / limit:.0f}% of the limit) on top of "
                    f"{short_size(allocated)} needed {short_size(total)}. Reduce what one "
                    "step holds: batch size, sequence length, max_new_tokens."
                )
    if (event.other_bytes or 0) > (event.allocated_bytes or 0):
        advice.append(
            f"Other allocations ({short_size(event.other_bytes)}) exceed PyTorch's own heaps "
            f"({short_size(event.allocated_bytes)}): Metal memory held outside the allocator "
            "(MPSGraph caches, other Metal users in the process); torch.mps.empty_cache() "
            "does not free it, a restart does."
        )
    if working_set is not None and hint is not None and 0 < hint <= _SUGGESTED_HIGH:
        advice.append(
            f"The service already runs with a low limit (high ratio {hint:g}): a lower one "
            "only makes PyTorch fail sooner. Reduce what the service holds instead (below)."
        )
    elif working_set is not None:
        high, low = _SUGGESTED_HIGH, _SUGGESTED_LOW
        advice.append(
            f"To keep macOS out of swap set both ratios (low <= high): high {high:g} -> "
            f"{short_size(round(working_set * high))}, low {low:g} -> "
            f"{short_size(round(working_set * low))} ({HIGH_ENV}={high:g} "
            f"{LOW_ENV}={low:g}, or [memory] in mpsctl.toml). A lower "
            "limit makes PyTorch fail sooner, it does not make the model fit."
        )
    advice += [
        "Lower the peak: fewer queries at once (serve.max_concurrent or the service's own "
        "limit) and fewer max_new_tokens per query.",
        "Use a smaller or lower-precision model (e.g. Qwen2.5-0.5B instead of 1.5B, float16 "
        "instead of float32, or a quantized build).",
        f"{FALLBACK_ENV}=1 does not catch out-of-memory errors: it only runs "
        "operators MPS lacks on the CPU. Running on the CPU is the service's own device choice.",
    ]
    return advice


def _mac_size(working_set: int) -> str:
    gib = working_set / 1024**3
    for known, ram in _KNOWN_WORKING_SETS:
        if abs(gib - known) <= known * 0.02:
            return (
                f" That matches an Apple Silicon Mac with {ram} GB of RAM (recommended working "
                f"set {known:g} GiB; the message's rounding explains the difference)."
                if f"{gib:.2f}" != f"{known:.2f}"
                else f" That matches an Apple Silicon Mac with {ram} GB of RAM."
            )
    return ""


def _explain_cuda(event: OomEvent) -> list[str]:
    advice: list[str] = []
    requested = event.requested_bytes
    total = event.total_bytes
    if requested is not None and total is not None and requested > total:
        advice.append(
            f"The request alone ({short_size(requested)}) is larger than the whole GPU "
            f"({short_size(total)}): no setting helps, make the step smaller (batch size, "
            "sequence length, resolution)."
        )
    others = sum(p.bytes for p in event.other_processes)
    if event.other_processes:
        pids = ", ".join(f"{p.pid} ({short_size(p.bytes)})" for p in event.other_processes)
        advice.append(
            f"Other processes hold {short_size(others)} on GPU {event.gpu_index}: {pids}. "
            "Stop them, or run the service on another GPU (CUDA_VISIBLE_DEVICES)."
        )
    if event.process_bytes is not None and total:
        advice.append(
            f"This process holds {short_size(event.process_bytes)} of {short_size(total)} "
            f"({event.process_bytes * 100 / total:.0f}%), "
            f"{short_size(event.free_bytes)} was free."
        )
    if event.allowed_bytes is not None:
        advice.append(
            f"set_per_process_memory_fraction limits this process to "
            f"{short_size(event.allowed_bytes)}: raise the fraction if the GPU is not shared."
        )
    unallocated = event.reserved_unallocated_bytes
    if unallocated is None and event.reserved_bytes is not None and event.allocated_bytes:
        unallocated = max(event.reserved_bytes - event.allocated_bytes, 0)
    if unallocated is not None and requested is not None and unallocated >= requested:
        advice.append(
            f"Fragmentation: {short_size(unallocated)} is reserved by PyTorch but unallocated, "
            f"more than the {short_size(requested)} requested, yet no block fitted. Start the "
            "service with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (PyTorch >= 2.1; "
            "older: max_split_size_mb:128)."
        )
    elif unallocated is not None:
        advice.append(
            f"Only {short_size(unallocated)} is reserved but unallocated: not fragmentation, "
            "the live tensors need more than the GPU has."
        )
    advice += [
        "Lower the peak: fewer queries at once, smaller batches, fewer max_new_tokens.",
        "Use a smaller or lower-precision model (float16/bfloat16, or a quantized build).",
    ]
    return advice


# --------------------------------------------------------------------------- timestamps
def line_time(line: str) -> datetime | None:
    """The timestamp a log line starts with, as aware UTC; naive stamps are local time."""
    match = _TIMESTAMP.search(line, 0, _TIMESTAMP_WITHIN + 40)
    if match is None or match.start() > _TIMESTAMP_WITHIN:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7) or "0"
    micro = int((fraction + "000000")[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second, micro)
    except ValueError:
        return None
    zone = match.group(8)
    if zone is None:
        # The service runs on this machine, so its naive stamps are in our local time.
        return moment.astimezone(timezone.utc)
    if zone == "Z":
        return moment.replace(tzinfo=timezone.utc)
    sign = 1 if zone[0] == "+" else -1
    digits = zone[1:].replace(":", "")
    offset = sign * (int(digits[:2]) * 60 + int(digits[2:4]))
    return (moment - timedelta(minutes=offset)).replace(tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- scanning
#: read size of the first pass (one reused buffer; 64 KiB-4 MiB measured the same)
CHUNK_BYTES = 256 * 1024
LOOKBACK_BYTES = 64 * 1024  # how far back a traceback line looks for its record's timestamp
LOOKBACK_LINES = 200
FORWARD_BYTES = 16 * 1024  # room for a message wrapped over its next lines
WINDOW_BYTES = 256 * 1024  # read around a hit at once, so dense hits share one read
CONTINUATION_LINES = 4
_MAX_NEEDLE = max(len(n) for n in NEEDLES)

#: (absolute offset of a needle, newlines in the file before it)
Hit = tuple[int, int]


def scan_file(
    path: str | os.PathLike[str],
    since: datetime | None = None,
    *,
    label: str | None = None,
) -> Iterator[OomEvent]:
    """Every OOM / invalid-watermark message in a log file, in file order.

    Two passes that never hold the file in memory: (1) in 256 KiB chunks, a ``bytes``
    search for ``NEEDLES`` and a newline count (for line numbers) -- nothing is decoded;
    a needle cut by a chunk boundary is found by ``_edge_hits``; a file of
    ``PARALLEL_MIN_BYTES`` or more is split in ranges searched by spawned worker processes
    (see ``_parallel_hits``), else one process does it all;
    (2) each hit is read back with its surroundings, decoded
    (``errors="replace"``) and parsed, joining a message wrapped over its next lines and
    taking the timestamp of its line or of the record it continues (a traceback).
    ``since``: skip events older than it; events without a time are kept unless the file
    was last written before ``since``. ``label`` names the file in events (default: path).
    """
    name = label if label is not None else str(path)
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if since is not None and datetime.fromtimestamp(info.st_mtime, timezone.utc) < since:
            return  # nothing in it can be newer than its last write
        size = info.st_size  # a log still growing is scanned up to here
        hits = _parallel_hits(path, info, size)
        if hits is None:
            hits = _find_in_range(handle, 0, size)[1]  # this handle: a rotation cannot swap files
        for event in _resolve(handle, size, hits):
            if since is not None and event.when is not None and event.when < since:
                continue
            yield replace(event, file=name)


#: below this, one process is faster than starting workers (each costs ~0.1 s)
PARALLEL_MIN_BYTES = 256 * 1024 * 1024
PARALLEL_MAX_WORKERS = 8


def _range_hits(
    path: str, start: int, end: int, identity: tuple[int, int]
) -> tuple[int, list[Hit]] | None:
    """A worker's share: ``_find_in_range`` on ``[start, end)`` of the same file (None if the
    path now names another file: it was rotated after the parent opened it)."""
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if (info.st_dev, info.st_ino) != identity:
            return None
        return _find_in_range(handle, start, end)


def _parallel_hits(
    path: str | os.PathLike[str], info: os.stat_result, size: int, workers: int | None = None
) -> list[Hit] | None:
    """Hits of a large file found by worker processes, one range each; None to scan alone.

    The search is CPU-bound and CPython's ``bytes.find``/``count`` hold the GIL, so threads
    would not help. Workers are *spawned*, never forked: fork without exec is unsafe on
    macOS and in a process with threads. A needle across two ranges is found by the range it
    starts in (``_find_in_range`` looks past its end), and each range's newline count is
    offset by the ranges before it, so the result equals a single pass.
    """
    if workers is None:
        workers = min(os.cpu_count() or 1, PARALLEL_MAX_WORKERS)
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
    for needle in NEEDLES:
        k = len(needle) - 1
        found = (tail[-k:] + head[:k]).find(needle)
        if 0 <= found < len(tail[-k:]):
            # a needle holds no newline, so none lies between it and `offset`
            hits.append((offset - len(tail[-k:]) + found, newlines))
    return hits


def _find_in_range(handle: io.BufferedReader, start: int, end: int) -> tuple[int, list[Hit]]:
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
        hits += _edge_hits(tail, chunk[: _MAX_NEEDLE - 1], pos, newlines)
        found_at = []
        for needle in NEEDLES:
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
        tail = bytes(chunk[-(_MAX_NEEDLE - 1) :])
        pos += size
    if pos == end and tail:
        handle.seek(end)
        hits += _edge_hits(tail, handle.read(_MAX_NEEDLE - 1), end, newlines)
    return newlines, sorted(hits)


def recent_events(
    paths: Iterable[str | os.PathLike[str] | None],
    since: float | datetime,
    *,
    max_tail_bytes: int = 64 * 1024 * 1024,
) -> list[dict[str, Any]]:
    """Events newer than ``since`` (epoch seconds or datetime) in each log's tail, as JSON
    dicts (``line`` is None: the head of the file is not read). For the probe: cheap.

    Only events with a timestamp count (their line's, or their record's): a log without
    timestamps cannot say whether an OOM is recent. Unreadable or missing files are skipped.
    """
    cutoff = since if isinstance(since, datetime) else datetime.fromtimestamp(since, timezone.utc)
    found: list[dict[str, Any]] = []
    for path in paths:
        if path is None:
            continue
        try:
            found += [e.as_dict() for e in _tail_events(path, cutoff, max_tail_bytes)]
        except OSError:
            continue
    return found


def _tail_events(
    path: str | os.PathLike[str], cutoff: datetime, max_tail_bytes: int
) -> Iterator[OomEvent]:
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if datetime.fromtimestamp(info.st_mtime, timezone.utc) < cutoff:
            return
        size = info.st_size
        start = _tail_start(handle, size, cutoff, max_tail_bytes)
        hits = _find_in_range(handle, start, size)[1]
        for event in _resolve(handle, size, hits):
            if event.when is not None and event.when >= cutoff:
                yield replace(event, file=os.fsdecode(path), line=None)


def _tail_start(handle: Any, size: int, cutoff: datetime, max_tail_bytes: int) -> int:
    """Step back 1 MiB at a time until a stamped line older than ``cutoff`` (or the cap)."""
    step = 1024 * 1024
    pos = size
    while pos > 0 and size - pos < max_tail_bytes:
        pos = max(pos - step, 0)
        handle.seek(pos)
        lines = handle.read(8192).split(b"\n")
        for raw in lines[1 if pos else 0 : -1]:
            when = line_time(raw.decode("utf-8", errors="replace"))
            if when is not None:
                if when < cutoff:
                    return pos
                break
    return pos


class _Reader:
    """Windows of the file around hits; consecutive hits reuse the same read."""

    def __init__(self, handle: Any, size: int) -> None:
        self.handle = handle
        self.size = size
        self.start = 0
        self.data = b""

    def around(self, pos: int) -> tuple[bytes, int]:
        """Bytes covering ``pos - LOOKBACK_BYTES`` to ``pos + FORWARD_BYTES`` and their offset."""
        low = max(pos - LOOKBACK_BYTES, 0)
        high = min(pos + FORWARD_BYTES, self.size)
        if not (self.start <= low and high <= self.start + len(self.data)):
            self.start = low
            self.handle.seek(low)
            self.data = self.handle.read(min(LOOKBACK_BYTES + WINDOW_BYTES, self.size - low))
        return self.data, self.start


def _resolve(handle: Any, size: int, hits: list[Hit]) -> Iterator[OomEvent]:
    reader = _Reader(handle, size)
    consumed_to = 0  # lines up to here belong to a message already reported
    for pos, newlines in hits:
        if pos < consumed_to:
            continue
        data, base = reader.around(pos)
        rel = pos - base
        start = data.rfind(b"\n", 0, rel) + 1
        end = _line_end(data, rel)
        text = data[start:end].decode("utf-8", errors="replace")
        event = parse_oom(text)
        if event is None:
            consumed_to = base + end
            continue
        if not event.complete:
            event, end = _join_continuation(data, text, end, event)
        when = _record_time(data, start, text, floor=0 if base == 0 else 1)
        consumed_to = base + end
        yield replace(
            event, line=newlines + 1, time=iso(when) if when is not None else None, when=when
        )


def _line_end(data: bytes, pos: int) -> int:
    end = data.find(b"\n", pos)
    return len(data) if end < 0 else end


def _join_continuation(data: bytes, text: str, end: int, event: OomEvent) -> tuple[OomEvent, int]:
    """A message wrapped over its next lines; stops before a line holding another hit."""
    joined, pos = text, end
    for _ in range(CONTINUATION_LINES):
        if pos >= len(data):
            break
        next_end = _line_end(data, pos + 1)
        line = data[pos + 1 : next_end]
        if any(needle in line for needle in NEEDLES):
            break
        joined += "\n" + line.decode("utf-8", errors="replace")
        attempt = parse_oom(joined)
        if attempt is not None and attempt.complete:
            return attempt, next_end
        pos = next_end
    return event, end


def _record_time(data: bytes, start: int, text: str, floor: int) -> datetime | None:
    """The line's own timestamp, else that of the record it continues (a traceback):
    the nearest stamped line above it, within the window. ``floor``: 1 when ``data[0]``
    may be in the middle of a line (so the first partial line is not trusted)."""
    when = line_time(text)
    if when is not None:
        return when
    pos = start
    for _ in range(LOOKBACK_LINES):
        if pos <= 0:
            return None
        prev_start = data.rfind(b"\n", 0, pos - 1) + 1
        if prev_start == 0 and floor:
            return None
        when = line_time(data[prev_start : pos - 1].decode("utf-8", errors="replace"))
        if when is not None:
            return when
        pos = prev_start
    return None
