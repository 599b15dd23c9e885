"""The few fixed strings that every memory-failure needle contains, in a module of its own:
the probe checks a log's new bytes for them without loading the parsers."""

from __future__ import annotations

#: What the external search looks for: each of ``ALL_NEEDLES`` contains one of these, so
#: every line holding a needle is a candidate (a test checks it). Fewer strings than
#: ``ALL_NEEDLES`` on purpose: ripgrep's SIMD search for many literals handles up to 16 at
#: the speed of one (17 cost 15x more, measured), and "ut of memory" is both spellings.
PREFILTER_NEEDLES = (
    b"ut of memory", b"watermark ratio", b"Killed process", b"oom-kill", b"systemd-oomd",
    b"by the OOM killer", b"memorystatus", b"killed ", b"exceeded mem limit",
    b"was sent SIGKILL", b"due to signal 9", b"WORKER TIMEOUT", b"CPUAllocator",
    b"posix_memalign", b"CUBLAS_STATUS_ALLOC", b"NDArray initWithDevice",
)  # fmt: skip
