"""Run the reference service in the foreground: token, model, limiter, uvicorn.

``mpsctl serve`` parses its flags into settings and ``ServeOptions`` and calls ``run``.
torch, transformers and uvicorn are imported only here, when the service really starts.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mpsctl.errors import ConfigError
from mpsctl.paths import DEMO_DIR_NAME
from mpsctl.server import apply_mps_environment, environment_warnings, resolve_token
from mpsctl.settings import Settings


class Notes(Protocol):
    """Where the service's start-up warnings and notes go (stderr in the CLI)."""

    def warn(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...


@dataclass(frozen=True)
class ServeOptions:
    """What ``mpsctl serve`` takes besides the settings."""

    host: str | None = None  # default: host of service.url
    port: int | None = None  # default: port of service.url
    demo: bool = False
    model_given: bool = False  # --model was passed (exclusive with --demo)
    token_file: Path | None = None  # --token-file (never created when missing)
    no_auth: bool = False


def run(settings: Settings, options: ServeOptions, notes: Notes) -> None:
    """Load the model and serve until Ctrl-C or SIGTERM."""
    for warning in environment_warnings():
        notes.warn(warning)
    token_file = options.token_file or settings.service.token_file
    token = resolve_token(
        token_env=settings.service.token_env,
        token_file=token_file,
        create_if_missing=settings.reference_service and options.token_file is None,
        no_auth=options.no_auth,
    )
    for warning in token.warnings:
        notes.warn(warning)
    if token.created is not None:
        notes.info(f"created a token for this service: {token.created} (mode 0600)")
    if token.token is None:
        notes.warn("authentication is off (--no-auth): anyone who can connect can query")

    host = options.host or settings.service.host
    port = options.port if options.port is not None else settings.service.port
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: must be 0-65535, got {port}")
    if host in ("0.0.0.0", "::", ""):
        notes.warn(f"binding {host or '0.0.0.0'}: the service is reachable from other machines")

    model_id = settings.serve.model
    if options.demo:
        if options.model_given:
            raise ConfigError("--demo and --model are exclusive")
        model_id = None
    elif model_id is None:
        raise ConfigError("no model: pass --model PATH_OR_ID (or set [serve] model), or --demo")

    for note in apply_mps_environment(settings.memory):
        notes.info(f"MPS allocator setting: {note}")
    if settings.serve.memory_limit is not None:
        # before torch starts its threads: each would reserve an arena of its own
        one_malloc_arena()
        # the tokenizers library starts its thread pool at its first use, which under the
        # limit fails for good ("The global thread pool has not been initialized"): no pool
        os.environ["TOKENIZERS_PARALLELISM"] = "false"

    _configure_logging()
    # these lines are what `mpsctl start` shows while it waits (control/startup_log.py)
    log = logging.getLogger("mpsctl.server")
    log.info("importing torch and transformers")
    began = time.perf_counter()
    _apply_threads(settings.serve.threads)
    from mpsctl.server.demo import DEMO_LABEL, ensure_demo_checkpoint

    log.info("imported torch and transformers in %.1f s", time.perf_counter() - began)

    if model_id is None:
        demo_dir, built = ensure_demo_checkpoint(settings.host_dir / DEMO_DIR_NAME)
        model_id = str(demo_dir)
        notes.warn(f"{'built and ' if built else ''}serving the {DEMO_LABEL} from {demo_dir}")

    import uvicorn

    from mpsctl.server.app import ServiceConfig, create_service
    from mpsctl.server.model import ModelHolder

    holder = ModelHolder(
        device=settings.memory.device,
        dtype=settings.serve.dtype,
        max_new_tokens=settings.serve.max_new_tokens,
    )
    holder.load(model_id)
    if settings.serve.memory_limit is not None:
        keep_small_allocation_room()
        notes.info(apply_memory_limit(settings.serve.memory_limit))
    service = create_service(
        holder,
        ServiceConfig(
            token=token.token,
            max_concurrent=settings.serve.max_concurrent,
            max_queue=settings.serve.max_queue,
            queue_timeout=settings.serve.queue_timeout,
            cleanup_interval=settings.serve.cleanup_interval,
            max_question_bytes=settings.serve.max_question_bytes,
            max_new_tokens_limit=settings.serve.max_new_tokens_limit,
        ),
    )
    notes.info(
        f"serving {holder.label} on {holder.device} at http://{host}:{port} "
        f"(token: {token.source}; max {settings.serve.max_concurrent} in flight, "
        f"{settings.serve.max_queue} queued)"
    )
    from mpsctl.server.protocol import bounded_config, raise_open_file_limit

    raise_open_file_limit()
    config = bounded_config(
        service.asgi,
        host,
        port,
        log_config=None,  # keep the one logging setup below; uvicorn's loggers propagate
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    uvicorn.Server(config).run()


def _address_space() -> int | None:
    """This process's address space now (Linux ``VmSize``), or None where unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8  # malloc.h
#: heap kept for small allocations under serve.memory_limit
SMALL_ALLOCATION_ROOM = 32 * 1024 * 1024


def one_malloc_arena() -> bool:
    """Give every thread glibc's main malloc arena (``mallopt(M_ARENA_MAX, 1)``, as
    ``MALLOC_ARENA_MAX=1`` does); False where that is not glibc.

    Under an address-space limit, each new thread's own arena reserves 64 MiB of address
    space at once: a few query threads then take the limit's whole headroom, and a small
    allocation elsewhere fails (the tokenizers library aborts the process on that:
    "memory allocation of 2 bytes failed", SIGABRT). With one arena, the threads take only
    their stacks, and the allocation that fails is the query's large tensor, which PyTorch
    raises and the service answers with 503. Measured on the 0.5b demo (4 concurrent long
    questions, 48 MiB of headroom): the process aborted with per-thread arenas; with one,
    every question got 503 and the next short one 200, and the loaded service's address
    space was 2,162 MiB instead of 2,390 MiB.
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, 1))


def keep_small_allocation_room(room: int = SMALL_ALLOCATION_ROOM) -> bool:
    """Keep ``room`` bytes of the main heap for small allocations once the limit is set.

    Large blocks (a tensor) always get their own mapping (a fixed ``M_MMAP_THRESHOLD``):
    past the limit that mapping fails, and PyTorch raises. Small ones (tokenizers, Python
    objects) come from the heap, which takes ``room`` extra whenever it grows
    (``M_TOP_PAD``) and keeps it when freed (``M_TRIM_THRESHOLD``): space already counted
    in the address space, that no tensor can take. False where that is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)
    ok &= libc.mallopt(_M_TOP_PAD, room)
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2 * room)
    # grow the heap now, while there is room: a small block, freed, leaves the pad behind
    block = libc.malloc(64 * 1024)
    libc.free(block)
    return bool(ok)


def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        libc.mallopt  # noqa: B018 - musl has no mallopt
    except (OSError, AttributeError):
        return None
    return libc


def apply_memory_limit(limit: int) -> str:
    """Cap this process's address space (RLIMIT_AS) at ``limit`` bytes, once the model is loaded.

    Then an allocation past the limit fails inside PyTorch (``DefaultCPUAllocator: can't
    allocate memory``), which the service answers with 503 ``out_of_memory`` and recovers
    from, instead of the kernel's OOM killer ending the whole process. It is applied after
    loading because loading maps the checkpoint while it copies it, a peak serving never
    reaches again. RLIMIT_AS counts address space, not RSS: the libraries (about 1 GiB for
    torch) and the model count too. Returns the line to log.
    """
    import resource

    from mpsctl.units import fmt_bytes

    used = _address_space()
    if used is not None and limit <= used:
        raise ConfigError(
            f"serve.memory_limit {fmt_bytes(limit)} is below what the loaded model already "
            f"uses ({fmt_bytes(used)} of address space): raise it"
        )
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and limit > hard:
        raise ConfigError(
            f"serve.memory_limit {fmt_bytes(limit)} is above the hard limit {fmt_bytes(hard)}"
        )
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    where = "" if used is None else f", {fmt_bytes(limit - used)} above the loaded model"
    enforced = "" if sys.platform.startswith("linux") else " (macOS does not enforce RLIMIT_AS)"
    return f"memory limit: address space capped at {fmt_bytes(limit)}{where}{enforced}"


def _apply_threads(requested: int) -> int:
    """``torch.set_num_threads``; logs the number in use (``serve.threads``, 0: torch's own
    choice, one per core). torch's default spreads every query over all cores: on a machine
    that also runs other work, that makes each query wait for the busiest core."""
    import torch

    if requested > 0:
        torch.set_num_threads(requested)
    used = torch.get_num_threads()
    origin = "serve.threads" if requested > 0 else "serve.threads = 0: torch's default"
    logging.getLogger("mpsctl.server").info("torch CPU threads: %d (%s)", used, origin)
    return used


class _QuietProbes(logging.Filter):
    """Drop successful access lines for /health and /metrics: a cron probe every minute
    would otherwise write 1,440 lines a day that bury the ones an operator looks for."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5:  # uvicorn: client, method, path, ver, status
            path, status = str(args[2]), args[4]
            if path in ("/health", "/metrics") and status == 200:
                return False
        return True


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mpsctl.server.auth import RedactQueryTokens

    access = logging.getLogger("uvicorn.access")
    access.addFilter(_QuietProbes())
    access.addFilter(RedactQueryTokens())
