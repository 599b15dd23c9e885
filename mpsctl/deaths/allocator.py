"""Recognise PyTorch out-of-memory messages (MPS, CUDA, every known wording).

Pure functions: ``parse_oom(text)`` reads one message; ``allocator_advice.explain(event)`` turns it
into plain advice with exact numbers, ``scanner.scan_file(path)`` streams a log of any
size. Nothing here imports torch: the messages are all the CLI ever sees of another
process's memory.

Formats (samples in ``tests/fixtures/torch-*``):

* MPS  ``MPS backend out of memory (MPS allocated: A, other allocations: B[, max allowed: C]).
  Tried to allocate D on private|shared pool.`` -- units bytes/KB/MB/GB (older) or
  KiB/MiB/GiB (newer), all 1024-based; no ``max allowed`` when the high ratio is 0.0.
* CUDA ``Tried to allocate X. GPU n has a total capacity of T of which F is free. ...``
  (2.1 spells it ``capacty``), older ``Tried to allocate X (GPU n; T total capacity;
  A already allocated; F free; [L allowed; ]R reserved in total by PyTorch)``, 1.0-era ``cached``.
* ROCm and Intel GPU builds: the CUDA wording with ``HIP`` or ``XPU`` for ``CUDA``; XPU's
  total may come without ``of which F is free`` and ends with ``Please use `empty_cache` ...``.
* MPS ``invalid low|high watermark ratio R``: a configuration error, not an OOM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mpsctl.torch_env import HIGH_ENV, LOW_ENV
from mpsctl.units import size_value, to_int

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
#: ROCm builds print the same message with "HIP" for "CUDA", Intel GPU (XPU) builds with "XPU";
#: a paste may keep only the part from "Tried to allocate" on, which the old wording's
#: "(GPU n; ... total capacity" still marks
_CUDA_HEAD = re.compile(
    rf"(?P<api>CUDA|HIP|XPU) out of memory\.{_S}Tried to allocate{_S}{_SIZE}"
    rf"|(?<![\w.])Tried to allocate{_S}{_SIZE}(?=\s*\(GPU{_S}\d+;{_S}{_SIZE}{_S}total)"
)
_CUDA_NEW = re.compile(
    rf"\.{_S}GPU{_S}(\d+){_S}has a total (?:capacity|capacty){_S}of{_S}{_SIZE}(?:{_S}of which{_S}"
    rf"{_SIZE}{_S}is free)?\.(?P<procs>(?:{_S}(?:Including non-PyTorch memory,{_S}this process|"
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
    rf"(reserved in total by PyTorch|cached)\)?"
)
#: the message's device word -> ``backend`` (a head without one is a CUDA-style paste)
_BACKENDS = {"CUDA": "cuda", "HIP": "rocm", "XPU": "xpu"}
_WATERMARK = re.compile(r"invalid (high|low) watermark ratio\s+(\S+)")

#: cheap byte tests run over whole chunks before any regex (both are case-sensitive in torch)
NEEDLES = (b"out of memory", b"watermark ratio", b"Tried to allocate")


@dataclass(frozen=True)
class OtherProcess:
    pid: int
    bytes: int


@dataclass(frozen=True)
class OomEvent:
    """One recognised message. Byte counts are exact integers (units are 1024-based)."""

    backend: str  # "mps" | "cuda" | "rocm" | "xpu" (HIP and XPU builds print the CUDA wording)
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
def size_to_bytes(number: str, unit: str) -> int | None:
    """``"20.14", "GiB"`` -> 21625160335. PyTorch's ``KB/MB/GB`` are 1024-based too.

    None when the figure does not fit in 63 bits (a damaged line): the event is still
    reported, that size null, its raw text kept."""
    return size_value(number, _UNITS[unit])


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
    if "out of memory" in text or "Tried to allocate" in text:
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
    requested = _size(head, 2) if head.group(2) is not None else _size(head, 4)
    backend = _BACKENDS.get(head.group("api") or "", "cuda")
    new = _CUDA_NEW.match(text, head.end())
    if new:
        this_process: int | None = None
        others: list[OtherProcess] = []
        for proc in _CUDA_PROC.finditer(new.group("procs") or ""):
            used = size_to_bytes(proc.group(2), proc.group(3))
            if proc.group(1) is None:
                this_process = used
            elif used is not None and len(proc.group(1)) < 10:
                others.append(OtherProcess(pid=int(proc.group(1)), bytes=used))
        # group numbers: 1 gpu, 2-3 total, 4-5 free, procs, then allowed, allocated,
        # private pools, unallocated (each a number + unit pair)
        base = new.re.groupindex["procs"]
        return OomEvent(
            backend=backend,
            kind="oom",
            raw=_line_span(text, head.start(), new.end()),
            requested_bytes=requested,
            gpu_index=to_int(new.group(1)),
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
            backend=backend,
            kind="oom",
            raw=_line_span(text, head.start(), old.end()),
            requested_bytes=requested,
            gpu_index=to_int(old.group(1)),
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
        backend=backend,
        kind="oom",
        raw=_line_span(text, head.start(), head.end()),
        requested_bytes=requested,
        complete=False,
    )


def mentions_oom(line: str) -> bool:
    """Does this line start an OOM or invalid-watermark message? (``mpsctl logs --oom``)"""
    if "out of memory" in line or "Tried to allocate" in line:
        return bool(_MPS_HEAD.search(line) or _CUDA_HEAD.search(line))
    return "watermark ratio" in line and _WATERMARK.search(line) is not None


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
    api = {"rocm": "ROCm (HIP)", "xpu": "XPU"}.get(event.backend, "CUDA")
    parts = [f"{api} {gpu}: requested {short_size(event.requested_bytes)}"]
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
