"""PyTorch memory failures other than the caching allocator's "out of memory" message.

Pure parsers, no torch: the CLI only ever sees another process's messages.

* ``cpu_alloc``: the CPU allocator (``device = "cpu"`` services) could not get memory:
  ``DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes. Error code 12``
  (Linux/macOS), ``DefaultCPUAllocator: not enough memory: you tried to allocate N bytes.``
  (Windows, older builds add ``Buy new RAM!``), and PyTorch <= 1.1's
  ``posix_memalign(&data, gAlignment, nbytes) == 0. 12 vs 0`` (12 is ENOMEM; no size given).
* ``device_error``: the CUDA runtime itself ran out of device memory, outside the caching
  allocator: ``CUDA error: out of memory`` (as RuntimeError or ``torch.AcceleratorError``),
  ``CUBLAS_STATUS_ALLOC_FAILED`` (cuBLAS could not allocate its workspace), PyTorch 0.x's
  ``cuda runtime error (2) : out of memory``. ``Unable to find a valid cuDNN algorithm`` is
  often memory too, but the message does not say so, so it is not reported as one.
* ``ndarray_limit``: Metal Performance Shaders refuse one array that is too large, whatever
  memory is free: ``[MPSNDArray initWithDevice:descriptor:] Error: total bytes of NDArray >
  2**32`` and ``... product of dimension sizes > 2**31``. It is a failed assertion: the process
  aborts.
* ``mps_size_limit``: the MPS backend refuses one buffer or one matmul result over its size
  limit, as a Python exception the service can answer: ``Invalid buffer size: 19.45 GB`` (the
  allocator's per-buffer maximum, the device's ``maxBufferLength``; newer builds print GiB) and
  ``Output size of the matrix multiplication is larger than currently supported by the MPS
  backend: 72250,72250, needs to be less than 2**32 elements``.
* ``CUBLAS_STATUS_NOT_INITIALIZED when calling cublasCreate(handle)`` is a ``device_error``:
  cuBLAS could not allocate its workspace when it started, nearly always because the GPU was
  full.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, ClassVar

from mpsctl.units import size_value, to_int

_CPU = re.compile(
    r"DefaultCPUAllocator:\s+(can't allocate memory|not enough memory):\s+you tried to"
    r"\s+allocate\s+(?:(\d+)\s+bytes|(%d\w*))(?:\.\s*(?:Error code (\d+)|(Buy new RAM!)))?"
)
#: the message as a string literal in source code (a diff, a patch): a quote opens right before
#: it and closes right after, followed by the next argument or the call's end
_LITERAL_END = re.compile(r"""["']\s*[,)+]""")
_MEMALIGN = re.compile(r"posix_memalign\(&data, gAlignment, nbytes\) == 0\. 12 vs 0")
_DEVICE = re.compile(
    r"(?:CUDA error:\s+"
    r"(?P<err>out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUBLAS_STATUS_NOT_INITIALIZED)"
    r"(?:\s+when calling\s+`(?P<call>[^`]+)`)?"
    r"|cuda runtime error \((?P<code>2)\) : (?P<legacy>out of memory))"
)
#: the exception class just before the message; looked for only there (a bounded look-back,
#: so a huge run of word characters cannot make the search quadratic)
_EXCEPTION = re.compile(r"([\w.]{1,80}(?:Error|Exception)):\s+$")
_NDARRAY = re.compile(
    r"\[(?P<cls>MPS\w*NDArray) (?P<sel>initWithDevice:[\w:]*)\] Error: "
    r"(?:(?P<bytes>total bytes of NDArray)|(?P<dims>product of dimension sizes))"
    r" > 2\*\*(?P<exp>\d+)"
)


_BUFFER = re.compile(r"Invalid buffer size: (\d+(?:\.\d+)?) ?(bytes|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\b")
_MATMUL = re.compile(
    r"Output size of the matrix multiplication is larger than currently supported by the MPS"
    r" backend: (?P<dims>\d+(?:,\d+)*), needs to be less than 2\*\*(?P<exp>\d{1,3}) elements"
)
_UNIT = {
    "bytes": 1, "KB": 1024, "KiB": 1024, "MB": 1024**2, "MiB": 1024**2,
    "GB": 1024**3, "GiB": 1024**3, "TB": 1024**4, "TiB": 1024**4,
}  # fmt: skip


@dataclass(frozen=True)
class CpuAllocFailure:
    """The CPU allocator's refusal; ``requested_bytes`` None when the message has no usable size."""

    kind: ClassVar[str] = "cpu_alloc"
    backend: ClassVar[str] = "cpu"
    raw: str
    wording: str  # "can't allocate memory" | "not enough memory" | "posix_memalign"
    requested_bytes: int | None = None
    error_code: int | None = None  # errno; 12 is ENOMEM
    line: int | None = None  # 1-based line of ``raw`` in the text searched
    time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return json_doc(self)


@dataclass(frozen=True)
class DeviceError:
    """A CUDA runtime/library error that means device memory ran out."""

    kind: ClassVar[str] = "device_error"
    backend: ClassVar[str] = "cuda"
    raw: str
    error: str  # "out of memory" | "CUBLAS_STATUS_ALLOC_FAILED"
    exception: str | None = None  # "RuntimeError", "torch.AcceleratorError", ...
    call: str | None = None  # the library call that failed, e.g. "cublasCreate(handle)"
    legacy_code: int | None = None  # PyTorch 0.x "cuda runtime error (2)"
    line: int | None = None
    time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return json_doc(self)


@dataclass(frozen=True)
class NdarrayLimit:
    """MPS refused an array over its size limit (an abort, not an allocator OOM)."""

    kind: ClassVar[str] = "ndarray_limit"
    backend: ClassVar[str] = "mps"
    raw: str
    limit: str  # "total_bytes" (bytes > 2**32) | "dimension_product" (elements > 2**31)
    limit_value: int  # 2**32 or 2**31 as printed
    array_class: str  # "MPSNDArray" | "MPSTemporaryNDArray"
    selector: str  # "initWithDevice:descriptor:" or a newer variant
    line: int | None = None
    time: datetime | None = None
    derived: ClassVar[tuple[str, ...]] = ("limit_bytes",)

    @property
    def limit_bytes(self) -> int | None:
        """The limit in bytes, when it is one (the product limit counts elements)."""
        return self.limit_value if self.limit == "total_bytes" else None

    def to_json(self) -> dict[str, Any]:
        return json_doc(self)


@dataclass(frozen=True)
class MpsSizeLimit:
    """The MPS backend refused one buffer or one matmul result over its size limit (a
    RuntimeError, not an abort; memory may be free)."""

    kind: ClassVar[str] = "mps_size_limit"
    backend: ClassVar[str] = "mps"
    raw: str
    limit: str  # "buffer_size" (one buffer over the device maximum) | "matmul_output"
    #: the buffer asked for, as printed (two decimals: exact to the hundredth of the unit)
    requested_bytes: int | None = None
    dims: str | None = None  # the matmul output's dimensions, as printed ("72250,72250")
    limit_value: int | None = None  # 2**32 elements for the matmul output
    line: int | None = None
    time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return json_doc(self)


TorchError = CpuAllocFailure | DeviceError | NdarrayLimit | MpsSizeLimit


def json_doc(event: Any) -> dict[str, Any]:
    """``mpsctl.oom/1``-style document of any death event: kind, backend, fields, raw last.

    Sizes are integers or null; ``time`` is ISO 8601 or null; tuples become lists.
    """
    doc: dict[str, Any] = {"kind": event.kind}
    if getattr(event, "backend", None):
        doc["backend"] = event.backend
    for item in fields(event):
        if item.name == "raw":
            continue
        value = getattr(event, item.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        doc[item.name] = value
    for name in getattr(event, "derived", ()):
        doc[name] = getattr(event, name)
    doc["raw"] = event.raw
    return doc


def _is_literal(line: str, match: re.Match[str]) -> bool:
    """Is this the message's text in source code rather than a failure's report?"""
    if match.group(2) is not None:  # a failure names the bytes; a format string cannot
        return False
    start = match.start()
    return start > 0 and line[start - 1] in "\"'" and bool(_LITERAL_END.match(line, match.end()))


def parse_torch_error(line: str) -> TorchError | None:
    """The memory failure one line reports, or None. Never raises, whatever the line."""
    if "CPUAllocator" in line:
        match = _CPU.search(line)
        if match and _is_literal(line, match):
            match = None
        if match:
            return CpuAllocFailure(
                raw=line.rstrip(),
                wording=match.group(1),
                # "%dGB" (a formatting bug in old Windows builds) is no size: None, raw kept
                requested_bytes=None if match.group(2) is None else to_int(match.group(2)),
                error_code=None if match.group(4) is None else to_int(match.group(4)),
            )
    if "posix_memalign" in line and _MEMALIGN.search(line):
        return CpuAllocFailure(raw=line.rstrip(), wording="posix_memalign", error_code=12)
    if "CUDA error" in line or "cuda runtime error" in line:
        match = _DEVICE.search(line)
        if match:
            exception = _EXCEPTION.search(line, max(0, match.start() - 100), match.start())
            return DeviceError(
                raw=line.rstrip(),
                error=match.group("err") or match.group("legacy"),
                exception=None if exception is None else exception.group(1),
                call=match.group("call"),
                legacy_code=2 if match.group("code") else None,
            )
    if "Invalid buffer size" in line:
        match = _BUFFER.search(line)
        if match:
            return MpsSizeLimit(
                raw=line.rstrip(),
                limit="buffer_size",
                requested_bytes=size_value(match.group(1), _UNIT[match.group(2)]),
            )
    if "Output size of the matrix" in line:
        match = _MATMUL.search(line)
        if match:
            return MpsSizeLimit(
                raw=line.rstrip(),
                limit="matmul_output",
                dims=match.group("dims")[:64],
                limit_value=2 ** int(match.group("exp")),
            )
    if "NDArray" in line:
        match = _NDARRAY.search(line)
        if match:
            exponent = int(match.group("exp")) if len(match.group("exp")) < 4 else 0
            return NdarrayLimit(
                raw=line.rstrip(),
                limit="total_bytes" if match.group("bytes") else "dimension_product",
                limit_value=2**exponent,
                array_class=match.group("cls"),
                selector=match.group("sel"),
            )
    return None


def find_torch_errors(lines: list[str]) -> Iterator[tuple[int, TorchError]]:
    """``(0-based line index, event)`` for every line of ``lines`` that reports one."""
    for index, line in enumerate(lines):
        event = parse_torch_error(line)
        if event is not None:
            yield index, event
