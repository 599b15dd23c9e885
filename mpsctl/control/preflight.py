"""What ``mpsctl start`` settles before it spawns anything: the argv, the warnings about the
environment and the memory limit, the port being free, and the timeouts it was given."""

from __future__ import annotations

import os
import shlex
import socket
import time

from mpsctl.control.memlimit import MemoryLimit, physical_memory_bytes
from mpsctl.errors import ServiceError
from mpsctl.observe import processes
from mpsctl.service_env import inherited_env_checks
from mpsctl.settings import Settings
from mpsctl.torch_env import command_checks
from mpsctl.units import fmt_bytes


def service_argv(
    settings: Settings, *, device: str | None = None, model: str | None = None
) -> tuple[tuple[str, ...], list[str]]:
    """The argv to run, and warnings about flags that do not apply to it."""
    argv = list(settings.service.command)
    warnings: list[str] = []
    if not settings.reference_service:
        for flag, value in (("--device", device), ("--model", model)):
            if value is not None:
                warnings.append(
                    f"{flag} is ignored: it applies to the reference service only; "
                    "change service.command to pass it to your own service"
                )
        return tuple(argv), warnings
    if model is not None:
        argv = [a for a in argv if a != "--demo"]  # serve refuses --demo with --model
        argv += ["--model", model]
    if device is not None:
        argv += ["--device", device]
    return tuple(argv), warnings


def preflight_warnings(settings: Settings, argv: tuple[str, ...], limit: MemoryLimit) -> list[str]:
    checks = command_checks(argv, settings.service.host)
    checks += inherited_env_checks(settings, os.environ)
    warnings = [c.line() for c in checks]
    ram = physical_memory_bytes()
    if limit.limit_bytes is not None and ram is not None and limit.limit_bytes > ram:
        warnings.append(
            f"the MPS limit ({limit.describe()}) is above physical memory ({fmt_bytes(ram)}): "
            "macOS will swap instead of PyTorch raising an out-of-memory error"
        )
    return warnings


def _describe_holder(holder: processes.ProcInfo | int | None, just_stopped: set[int]) -> str:
    if holder is None:
        if os.geteuid() == 0:  # root sees every process: no process holds it any more
            return "a socket that no live process holds (the kernel is still closing it)"
        return "a process this user may not inspect (try `sudo lsof -i`)"
    pid = holder if isinstance(holder, int) else holder.pid
    if pid in just_stopped:
        return f"pid {pid}, stopped a moment ago and not gone yet"
    if isinstance(holder, int):
        return f"pid {holder}"
    command = shlex.join(holder.cmdline) if holder.cmdline else "?"
    if len(command) > 120:
        command = command[:117] + "..."
    return f"pid {holder.pid} ({holder.username or 'unknown user'}): {command}"


def _port_answers(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False  # refused or unreachable: nothing listens there


def check_port_free(
    settings: Settings, *, wait: float = 0.0, just_stopped: set[int] | None = None
) -> None:
    """Refuse to start when something listens on the service's port.

    ``wait``: after a stop, the killed process's socket can outlive it by a moment (its
    exit is still being handled); wait up to this long for the port before refusing.
    """
    host, port = settings.service.host, settings.service.port
    deadline = time.monotonic() + wait
    while _port_answers(host, port):
        if time.monotonic() >= deadline:
            holder = processes.port_holder(host, port)
            raise ServiceError(
                f"port {port} on {host} is taken by "
                f"{_describe_holder(holder, just_stopped or set())}; nothing started "
                "(stop it, or change service.url)"
            )
        time.sleep(0.1)
