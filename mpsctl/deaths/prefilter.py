"""The few fixed strings that every memory-failure needle contains, and the kinds of death
the parsers report, in a module of its own: the probe checks a log's new bytes for them and
keeps its totals per kind without loading the parsers."""

from __future__ import annotations

#: What the external search looks for: each of ``ALL_NEEDLES`` contains one of these, so
#: every line holding a needle is a candidate (a test checks it). Fewer strings than
#: ``ALL_NEEDLES`` on purpose: ripgrep's SIMD search for many literals handles up to 16 at
#: the speed of one (17 cost 15x more, measured): "ut of memory" is both spellings, "illed "
#: every "Killed"/"killed", "killing" jetsam's and oomd's, "Worker " both gunicorn wordings.
PREFILTER_NEEDLES = (
    b"ut of memory", b"watermark ratio", b"Tried to allocate", b"illed ", b"oom-kill",
    b"killing", b"memorystatus", b"exceeded mem limit", b"Worker ", b"WORKER TIMEOUT",
    b"CPUAllocator", b"CUBLAS_STATUS_", b"NDArray initWithDevice", b"Invalid buffer size",
    b"Output size of the matrix", b'"rpages"',
)  # fmt: skip

#: every ``kind`` ``deaths.parsers`` reports (its ``KINDS``, which a test keeps equal)
DEATH_KINDS = (
    "kernel_oom_kill", "oomd_kill", "jetsam_kill", "worker_killed", "cpu_alloc",
    "device_error", "ndarray_limit", "mps_size_limit",
)  # fmt: skip
