"""One-line summaries and plain advice, with exact numbers, for every memory death kind.

``summary(event)`` is the line status/probe/report print ("killed by the kernel OOM killer
(anon-rss 19.6 GiB)"); ``explain(event, ram_bytes=...)`` says what happened and what to change.
Facts the event cannot carry (the machine's RAM, what is free now, the GPU's size) are passed in.
"""

from __future__ import annotations

from mpsctl.deaths.allocator import short_size
from mpsctl.deaths.parsers import (
    CpuAllocFailure,
    DeathEvent,
    DeviceError,
    JetsamKill,
    KernelOomKill,
    MpsSizeLimit,
    NdarrayLimit,
    OomdKill,
    WorkerKilled,
)
from mpsctl.torch_env import HIGH_ENV

_LIMIT_ADVICE = (
    "Give the service a memory limit below what the machine can hold, so PyTorch's allocator "
    "fails with an out-of-memory error the service answers with 503 before the operating "
    "system kills the whole process."
)
_SMALLER = (
    "Lower the service's concurrency (fewer workers or parallel requests: each request in "
    "flight holds its own activations) or serve a smaller model or shorter inputs."
)

_JETSAM_REASONS = {
    "per-process-limit": "the process went over its own memory limit, which macOS enforces "
    "whatever the rest of the Mac has free",
    "highwater": "the process stayed above its high-water mark while the Mac needed memory",
    "vm-pageshortage": "the Mac ran short of free memory pages and jetsam freed memory by "
    "killing processes, lowest priority first",
    "fc-thrashing": "the file cache was thrashing: the Mac was out of memory for the files in use",
    "zone-map-exhaustion": "the kernel's own memory (zone map) was nearly exhausted",
    "vnode-limit": "the system ran out of vnodes (open files), not of RAM",
}


def summary(event: DeathEvent) -> str:
    """One line naming the killer and the key figure."""
    if isinstance(event, KernelOomKill):
        return _kernel_summary(event)
    if isinstance(event, OomdKill):
        if event.by == "kernel":
            units = ", ".join(event.units)
            return f"killed by the kernel OOM killer (reported by systemd for {units})"
        pressure = (
            f" (memory pressure {event.pressure_percent}% > {event.limit_percent}%)"
            if event.pressure_percent
            else f" ({_used(event)} over {event.limit_percent or 'the limit'}%)"
            if event.memory_used_bytes is not None
            else ""
        )
        return f"killed by systemd-oomd: {event.unit or event.cgroup}{pressure}"
    if isinstance(event, JetsamKill):
        parts = [event.reason or "fatal memory limit"]
        if event.limit_bytes is not None:
            parts.append(f"limit {short_size(event.limit_bytes)}")
        if event.resident_bytes is not None:
            parts.append(f"resident {short_size(event.resident_bytes)}")
        return f"killed by jetsam ({', '.join(parts)}): {_who(event.process, event.pid)}"
    if isinstance(event, WorkerKilled):
        if event.after_timeout:
            return f"gunicorn worker pid {event.pid} SIGKILLed after WORKER TIMEOUT (a hung worker)"
        return f"gunicorn worker pid {event.pid} killed by SIGKILL (perhaps out of memory)"
    if isinstance(event, CpuAllocFailure):
        if event.requested_bytes is None:
            return "PyTorch's CPU allocator ran out of memory"
        return f"PyTorch's CPU allocator could not allocate {short_size(event.requested_bytes)}"
    if isinstance(event, DeviceError):
        return f"CUDA error: {event.error} (device memory ran out outside PyTorch's allocator)"
    if isinstance(event, MpsSizeLimit):
        if event.limit == "buffer_size":
            return (
                f"MPS refused one buffer of {short_size(event.requested_bytes)} "
                "(over the device's largest buffer)"
            )
        return f"MPS refused a matrix multiplication output of {event.dims} (over 2**32 elements)"
    if event.limit == "total_bytes":
        return "MPS refused an array over 4 GiB (total bytes of NDArray > 2**32); process aborted"
    return "MPS refused an array over 2**31 elements (product of dimension sizes); process aborted"


def _who(process: str | None, pid: int | None) -> str:
    if process and pid is not None:
        return f"{process}, pid {pid}"
    return process or (f"pid {pid}" if pid is not None else "a process")


def _kernel_summary(event: KernelOomKill) -> str:
    where = " in a memory cgroup" if event.cgroup else ""
    if not event.complete and event.pid is None:
        by = f" (invoked by {_who(event.trigger, event.trigger_pid)})" if event.trigger else ""
        return f"the kernel OOM killer ran{where}{by}; the kill itself is not in the log"
    figure = (
        f" (anon-rss {short_size(event.anon_rss_bytes)})"
        if event.anon_rss_bytes is not None
        else ""
    )
    return f"killed by the kernel OOM killer{where}: {_who(event.process, event.pid)}{figure}"


def explain(
    event: DeathEvent,
    *,
    ram_bytes: int | None = None,
    available_bytes: int | None = None,
    device_total_bytes: int | None = None,
    memory_fraction: float | None = None,
) -> list[str]:
    """Plain sentences: what happened, with the event's numbers against the machine's."""
    if isinstance(event, KernelOomKill):
        return _explain_kernel(event, ram_bytes)
    if isinstance(event, OomdKill):
        return _explain_oomd(event)
    if isinstance(event, JetsamKill):
        return _explain_jetsam(event, ram_bytes)
    if isinstance(event, WorkerKilled):
        return _explain_worker(event)
    if isinstance(event, CpuAllocFailure):
        return _explain_cpu(event, ram_bytes, available_bytes)
    if isinstance(event, DeviceError):
        return _explain_device(event, device_total_bytes, memory_fraction)
    if isinstance(event, MpsSizeLimit):
        return _explain_mps_size(event)
    return _explain_ndarray(event)


def _explain_kernel(event: KernelOomKill, ram_bytes: int | None) -> list[str]:
    who = _who(event.process, event.pid)
    advice: list[str] = []
    if event.anon_rss_bytes is not None:
        share = ""
        if ram_bytes:
            share = (
                f", {event.anon_rss_bytes / ram_bytes:.0%} of the machine's "
                f"{short_size(ram_bytes)} RAM"
            )
        advice.append(
            f"The kernel's OOM killer sent SIGKILL to {who}, which held "
            f"{short_size(event.anon_rss_bytes)} of its own memory (anon-rss){share}. A killed "
            "process writes no error and no traceback: its log simply stops."
        )
    else:
        advice.append(
            f"The kernel's OOM killer ran and killed {who if event.pid else 'a process'} with "
            "SIGKILL; the log holds no sizes for it. A killed process writes no error: its "
            "log simply stops."
        )
    if event.cgroup:
        limit = (
            f" (limit {short_size(event.memcg_limit_bytes)})"
            if event.memcg_limit_bytes is not None
            else ""
        )
        advice.append(
            f"The kill was confined to memory cgroup {event.memcg or 'of the process'}{limit}: "
            "its limit ran out, not the machine's RAM. Raise that limit (systemd MemoryMax=, "
            "docker --memory, Kubernetes resources.limits.memory) or use less memory."
        )
    elif event.constraint not in (None, "CONSTRAINT_NONE"):
        advice.append(
            f"The kill was confined by {event.constraint}: the memory of a cpuset or memory "
            "policy ran out, not the whole machine's."
        )
    elif event.complete or event.constraint is not None:
        advice.append(
            "The whole machine ran out of RAM and swap: the service and everything else "
            "running needed more than there is."
        )
    else:
        advice.append(
            "The lines found do not say whether a memory cgroup's limit or the machine's RAM "
            "ran out; the rest of the kernel log does."
        )
    return [*advice, _SMALLER, _LIMIT_ADVICE]


def _explain_oomd(event: OomdKill) -> list[str]:
    if event.by == "kernel":
        return [
            f"systemd saw the kernel's OOM killer kill a process in {', '.join(event.units)}; "
            "the kernel log (journalctl -k) names the process and its memory.",
            _SMALLER,
            _LIMIT_ADVICE,
        ]
    pressure = ""
    if event.pressure_percent:
        pressure = (
            f" Memory pressure on {event.monitored_cgroup} was {event.pressure_percent}%, over "
            f"its limit of {event.limit_percent}% for more than {event.duration}."
        )
    if event.memory_used_bytes is not None:
        return [
            f"systemd-oomd killed every process in {event.cgroup or event.unit} (SIGKILL) "
            f"because the machine's {_used(event)} were both over "
            f"{event.limit_percent or 'its limit'}%: memory and swap were nearly full, and oomd "
            "kills the cgroup using the most swap before the kernel's OOM killer would act.",
            _SMALLER,
            "Run the service in its own unit with MemoryHigh=/MemoryMax= so it is throttled or "
            "stopped alone, or give the machine more swap or memory (SwapUsedLimit= in "
            "oomd.conf sets the threshold).",
        ]
    return [
        f"systemd-oomd killed every process in {event.cgroup or event.unit} (SIGKILL)."
        f"{pressure} Pressure is the share of time tasks stalled waiting for memory: oomd acts "
        "before RAM is fully used and before the kernel's OOM killer would.",
        _SMALLER,
        "Run the service in its own unit with MemoryHigh=/MemoryMax= so it is throttled or "
        "stopped alone, or tune ManagedOOMMemoryPressureLimit= on the slice oomd watches.",
    ]


def _used(event: OomdKill) -> str:
    """``memory (21 GiB of 23 GiB) and swap (8 GiB of 8 GiB)``, as far as the line said."""
    parts = []
    for name, used, total in (
        ("memory", event.memory_used_bytes, event.memory_total_bytes),
        ("swap", event.swap_used_bytes, event.swap_total_bytes),
    ):
        if used is not None:
            of = f" of {short_size(total)}" if total is not None else ""
            parts.append(f"{name} use ({short_size(used)}{of})")
    return " and ".join(parts)


def _explain_jetsam(event: JetsamKill, ram_bytes: int | None) -> list[str]:
    who = _who(event.process, event.pid)
    why = _JETSAM_REASONS.get(event.reason or "", f"jetsam's reason was {event.reason!r}")
    if event.reason is None:
        why = "it passed a fatal per-process memory limit"
    advice = [f"macOS's memory manager (jetsam) killed {who}: {why}."]
    if event.limit_bytes is not None:
        advice.append(
            f"Its {event.limit_kind or 'memory'} limit was {short_size(event.limit_bytes)}."
        )
    if event.resident_bytes is not None:
        advice.append(f"It had {short_size(event.resident_bytes)} resident when killed.")
    ram = f" ({short_size(ram_bytes)} here)" if ram_bytes else ""
    advice.append(
        f"On Apple silicon the GPU uses the same RAM{ram}: MPS tensors count against the "
        f"process's memory. Lower {HIGH_ENV} so PyTorch raises a catchable "
        "out-of-memory error first, close other memory-hungry apps, or serve a smaller model."
    )
    return advice


def _explain_worker(event: WorkerKilled) -> list[str]:
    if event.after_timeout:
        return [
            f"gunicorn timed worker {event.pid} out (no heartbeat within --timeout), sent it "
            "SIGABRT, then SIGKILL: a request ran longer than --timeout or the worker hung. "
            "That is not evidence of memory exhaustion.",
            "Raise --timeout for slow model requests; if the machine was swapping, the kernel "
            "log will show memory trouble at the same time.",
        ]
    return [
        f"gunicorn's worker {event.pid} died of SIGKILL. gunicorn cannot tell who sent it; the "
        "kernel's OOM killer is the usual sender, so look for a kill of that pid in the kernel "
        "log (journalctl -k, dmesg) at the same time.",
        _SMALLER,
        _LIMIT_ADVICE,
    ]


def _explain_cpu(
    event: CpuAllocFailure, ram_bytes: int | None, available_bytes: int | None
) -> list[str]:
    requested = event.requested_bytes
    if requested is None:
        first = "PyTorch's CPU allocator could not get memory; the message gives no size."
    else:
        first = (
            f"One tensor needed {short_size(requested)} ({requested} bytes) and the CPU "
            "allocator could not get it."
        )
    if event.error_code == 12:
        first += (
            " Error code 12 (ENOMEM): the operating system refused it, because RAM and swap "
            "or a memory limit on the process (RLIMIT_AS, a cgroup) ran out."
        )
    advice = [first]
    if requested is not None and ram_bytes:
        if requested > ram_bytes:
            advice.append(
                f"That is more than the machine's whole RAM ({short_size(ram_bytes)}): no "
                "setting makes it fit; the input or batch is too large for this model on CPU."
            )
        else:
            free = f", {short_size(available_bytes)} available now" if available_bytes else ""
            advice.append(
                f"The machine has {short_size(ram_bytes)} RAM{free}: the rest was in use by "
                "the model, other requests or other processes."
            )
    advice.append(
        "Send smaller inputs (fewer tokens, smaller batch) or lower concurrency; the process "
        "survives this error, so smaller requests still work."
    )
    return advice


def _explain_device(event: DeviceError, total: int | None, fraction: float | None) -> list[str]:
    if event.error == "CUBLAS_STATUS_ALLOC_FAILED":
        first = (
            "cuBLAS could not allocate its workspace on the GPU: device memory was already "
            "full, mostly held by PyTorch's cache or by other processes."
        )
    elif event.error == "CUBLAS_STATUS_NOT_INITIALIZED":
        first = (
            "cuBLAS could not start (CUBLAS_STATUS_NOT_INITIALIZED): creating its handle "
            "allocates a workspace on the GPU, and device memory was already full."
        )
    else:
        first = (
            "The CUDA runtime itself ran out of device memory, outside PyTorch's caching "
            "allocator (which would have said how much it held)."
        )
    advice = [first]
    if total is not None:
        share = f"; PyTorch may use {fraction:.0%} of it" if fraction is not None else ""
        advice.append(f"The GPU has {short_size(total)}{share}.")
    advice.append(
        "Other processes on the same GPU count against the same memory (nvidia-smi lists "
        "them). torch.cuda.set_per_process_memory_fraction limits only PyTorch's cache, so "
        "leave headroom for CUDA libraries below it."
    )
    advice.append(
        "After a CUDA error the process's CUDA state may be unusable: restart the service, "
        "then lower batch size or concurrency."
    )
    return advice


def _explain_ndarray(event: NdarrayLimit) -> list[str]:
    if event.limit == "total_bytes":
        size = f"one array larger than {short_size(event.limit_value)} (2**32 bytes)"
    else:
        size = f"one array with more than {event.limit_value} (2**31) elements"
    return [
        f"Metal Performance Shaders cannot create {size}, however much memory is free: this "
        "is a size limit on a single tensor, not an out-of-memory, and watermark ratios do "
        "not change it.",
        "It is a failed assertion inside Metal: the process aborts with no Python exception, "
        "and the service must be restarted.",
        "Split the work: a smaller batch, shorter sequences, attention or images in slices or "
        "tiles, or half precision to halve the bytes.",
    ]


def _explain_mps_size(event: MpsSizeLimit) -> list[str]:
    if event.limit == "buffer_size":
        first = (
            f"One tensor needed a single Metal buffer of {short_size(event.requested_bytes)}, "
            "more than the largest buffer this GPU can allocate at once: a limit on one "
            "tensor, not on the memory free, so watermark ratios do not change it."
        )
    else:
        first = (
            f"A matrix multiplication would produce {event.dims} elements, more than the "
            "MPS backend supports in one result (2**32 elements), however much memory is free."
        )
    return [
        first,
        "PyTorch raised it as a RuntimeError: the service answers the request with an error "
        "and keeps running.",
        "Split the work: a smaller batch, shorter sequences, or attention in slices.",
    ]
