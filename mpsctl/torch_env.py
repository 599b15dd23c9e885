"""PyTorch's MPS memory variables: the one place mpsctl knows how PyTorch reads them.

PyTorch's MPS allocator reads two ratios from its environment once, at the first MPS
allocation (aten/src/ATen/mps/MPSAllocator.h). Both multiply Metal's
``recommendedMaxWorkingSetSize``: above the high ratio an allocation fails with an
out-of-memory error (0.0 = no limit); above the low ratio PyTorch first frees its caches.
Each must lie in 0.0-2.0 and low must not exceed high, or the service fails with
``invalid high/low watermark ratio`` at that first allocation. PyTorch parses them with C's
``strtod``, so text that is not a number silently becomes 0.0, which *removes* the limit.

``PYTORCH_ENABLE_MPS_FALLBACK=1`` runs operators MPS does not implement on the CPU; it does
not catch out-of-memory errors. ``PYTORCH_ENABLE_MPS`` is not a PyTorch variable at all.

Everything here is plain Python: the service (``mpsctl.server.memory``), ``start``'s
preflight and ``doctor`` all read these facts from this module.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from mpsctl.errors import ConfigError

HIGH_ENV = "PYTORCH_MPS_HIGH_WATERMARK_RATIO"
LOW_ENV = "PYTORCH_MPS_LOW_WATERMARK_RATIO"
FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"
#: often written in guides, but PyTorch has no such variable
NOT_A_VARIABLE = "PYTORCH_ENABLE_MPS"
#: the variables ``mpsctl start`` sets from the settings (inherited values are dropped)
TORCH_KEYS = (HIGH_ENV, LOW_ENV, FALLBACK_ENV)
#: the prefix of PyTorch's variables, for showing what a process was started with
ENV_PREFIX = "PYTORCH_"
MPS_ENV_PREFIX = "PYTORCH_MPS_"

#: PyTorch's defaults. The low default is 1.4 on unified-memory devices (Apple Silicon)
#: and 1.0 on discrete GPUs (Intel Macs with AMD).
DEFAULT_HIGH_RATIO = 1.7
DEFAULT_LOW_RATIO = 1.4
DEFAULT_LOW_RATIO_DISCRETE = 1.0
#: the valid range is 0.0-MAX_RATIO (older builds on discrete GPUs: 0.0-1.0)
MAX_RATIO = 2.0
#: the smallest ratio other than 0.0 mpsctl accepts. PyTorch takes any positive double, but
#: the limit is ratio x the recommended working set (some GiB): below 1 % it is a few dozen
#: MiB, less than any model's weights, and a value like 1e-320 is a limit of 0 bytes that
#: makes every allocation fail. 0.0 stays valid: it is PyTorch's "no limit".
MIN_RATIO = 0.01

# what strtod accepts at the start of a string (decimal forms; enough for ratios)
_STRTOD = re.compile(
    r"^\s*([+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan))", re.IGNORECASE
)

Level = Literal["ok", "info", "warning", "error"]
_BIND_ALL = ("0.0.0.0", "::")


# --------------------------------------------------------------------------- reading ratios
def strtod(text: str) -> tuple[float, str]:
    """What C's ``strtod`` makes of ``text``: the number and the part it ignored."""
    match = _STRTOD.match(text)
    if not match:
        return 0.0, text
    return float(match.group(1)), text[match.end() :]


def strtod_ratio(text: str) -> float:
    """The number PyTorch reads from a ratio variable (``strtod``: junk becomes 0.0)."""
    return strtod(text)[0]


def watermark_ratios(
    environ: Mapping[str, str], machine: str | None = None
) -> tuple[float, str, float, str]:
    """(high, high_source, low, low_source) as PyTorch's MPS allocator will read them."""
    machine = machine if machine is not None else platform.machine()
    default_low = DEFAULT_LOW_RATIO if machine == "arm64" else DEFAULT_LOW_RATIO_DISCRETE
    high, high_src = DEFAULT_HIGH_RATIO, "default"
    low, low_src = default_low, "default"
    if environ.get(HIGH_ENV) is not None:
        high, high_src = strtod_ratio(environ[HIGH_ENV]), "env"
    if environ.get(LOW_ENV) is not None:
        low, low_src = strtod_ratio(environ[LOW_ENV]), "env"
    return high, high_src, low, low_src


def check_ratio_range(value: float) -> None:
    """Raise ValueError for a ratio PyTorch refuses, or one so small (not 0.0, below
    ``MIN_RATIO``) that the limit would be next to 0 bytes."""
    if not 0.0 <= value <= MAX_RATIO:
        raise ValueError(f"must be between 0.0 and {MAX_RATIO}, got {value:g}")
    if 0.0 < value < MIN_RATIO:
        raise ValueError(
            f"{value:g} is below {MIN_RATIO:g}: the limit would be {value:g} x the recommended "
            "working set, next to 0 bytes, and every allocation would fail; use 0.0 for no "
            f"limit or a ratio of {MIN_RATIO:g} or more"
        )


def low_ceiling(high: float | None) -> float:
    """The largest low ratio PyTorch accepts next to ``high`` (None: PyTorch's default)."""
    if high is None:
        return DEFAULT_HIGH_RATIO  # PyTorch's own high applies
    if high == 0.0:
        return MAX_RATIO  # no hard limit: PyTorch only checks the range
    return high


# --------------------------------------------------------------------------- settings -> env
@dataclass(frozen=True)
class Watermarks:
    high: float | None
    low: float | None
    notes: tuple[str, ...]


def resolve_watermarks(high: float | None, low: float | None) -> Watermarks:
    """Check a high/low pair the way PyTorch will, before any service starts.

    PyTorch raises ``invalid low watermark ratio`` at the first MPS allocation when
    low > high (high > 0) -- so a bare high of 0.7 with the default low of 1.4 kills the
    service. When only high is given, low becomes ``min(high, DEFAULT_LOW_RATIO)``.
    """
    notes: list[str] = []
    for label, ratio in (("high", high), ("low", low)):
        if ratio is not None and not 0.0 <= ratio <= MAX_RATIO:
            raise ConfigError(f"{label} watermark ratio {ratio:g} is outside 0.0-{MAX_RATIO:g}")
        if ratio is not None:
            try:
                check_ratio_range(ratio)
            except ValueError as exc:
                raise ConfigError(f"{label} watermark ratio {exc}") from None
    if high is not None and low is None:
        low = min(high, DEFAULT_LOW_RATIO) if high > 0 else None
        if low is not None and low < DEFAULT_LOW_RATIO:
            notes.append(
                f"low watermark ratio set to {low:.2f} = min(high {high:.2f}, "
                f"{DEFAULT_LOW_RATIO:.2f}): PyTorch's default low ratio "
                f"{DEFAULT_LOW_RATIO:.2f} above high {high:.2f} would make it fail "
                "at the first allocation"
            )
    if low is not None:
        ceiling = low_ceiling(high)
        if low > ceiling:
            raise ConfigError(
                f"low watermark ratio {low:g} is above high {ceiling:g}: PyTorch fails with "
                f"'invalid low watermark ratio {low:g}' at the first allocation"
            )
    if high == 0.0:
        notes.append(
            "high watermark 0.0 disables the MPS limit: the service can take all memory "
            "and push macOS into swap instead of failing with an out-of-memory error"
        )
    return Watermarks(high, low, tuple(notes))


class MemoryValues(Protocol):
    """The [memory] values PyTorch's variables are made from (``settings.MemorySettings`` is
    one): taken as values so that this module imports no settings."""

    @property
    def high_watermark_ratio(self) -> float | None: ...
    @property
    def low_watermark_ratio(self) -> float | None: ...
    @property
    def mps_fallback(self) -> bool: ...


def torch_env(memory: MemoryValues) -> dict[str, str]:
    """The ``PYTORCH_*`` variables a service must be started with."""
    env: dict[str, str] = {}
    if memory.high_watermark_ratio is not None:
        env[HIGH_ENV] = f"{memory.high_watermark_ratio:g}"
    if memory.low_watermark_ratio is not None:
        env[LOW_ENV] = f"{memory.low_watermark_ratio:g}"
    if memory.mps_fallback:
        env[FALLBACK_ENV] = "1"
    return env


def pytorch_vars(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``PYTORCH_*`` variables of one environment."""
    return {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)}


def masked(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for display, sorted: credential-named values, URLs' userinfo and paths masked
    (the one rule, ``mpsctl.masking``)."""
    from mpsctl.masking import masked_env

    return masked_env(env)


# --------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Check:
    """One finding: what is wrong (or fine) and how to fix it."""

    id: str
    level: Level
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "level": self.level, "message": self.message, "fix": self.fix}

    def line(self) -> str:
        """One warning line: the message and its fix."""
        return f"{self.message}; {self.fix}" if self.fix else self.message


def env_checks(prefix: str, env: Mapping[str, str], where: str, fix_hint: str) -> list[Check]:
    """The PYTORCH_* variables of one environment, read the way PyTorch reads them."""
    found: list[Check] = []
    ratios: dict[str, float] = {}
    for name, label in ((HIGH_ENV, "high"), (LOW_ENV, "low")):
        if name not in env:
            continue
        raw = env[name]
        value, rest = strtod(raw)
        if rest == raw:  # no number at all (empty included)
            found.append(
                Check(
                    f"{prefix}.ratio_not_a_number",
                    "error",
                    f"{where}: {name}={raw!r} is not a number: PyTorch reads it with strtod as "
                    f"0.0, which removes the {label} limit instead of setting one",
                    f"set a number between 0.0 and {MAX_RATIO:g} {fix_hint}",
                )
            )
        elif rest.strip():
            found.append(
                Check(
                    f"{prefix}.ratio_trailing_text",
                    "warning",
                    f"{where}: {name}={raw!r}: PyTorch reads only {value:g} and ignores {rest!r}",
                    f"write the bare number, e.g. {name}={value:g} {fix_hint}",
                )
            )
        if not 0.0 <= value <= MAX_RATIO:
            found.append(
                Check(
                    f"{prefix}.ratio_out_of_range",
                    "error",
                    f"{where}: {name}={raw!r} is outside 0.0-{MAX_RATIO:g}: the service fails with "
                    f"'RuntimeError: invalid {label} watermark ratio' at its first MPS allocation",
                    f"use a ratio between 0.0 and {MAX_RATIO:g} {fix_hint}",
                )
            )
        ratios[label] = value
    high = ratios.get("high")
    low = ratios.get("low")
    if high is not None and low is None and low_ceiling(high) < DEFAULT_LOW_RATIO:
        found.append(
            Check(
                f"{prefix}.high_without_low",
                "error",
                f"{where}: {HIGH_ENV}={env[HIGH_ENV]} without {LOW_ENV}: PyTorch's default low "
                f"ratio {DEFAULT_LOW_RATIO:g} is above high {high:g}, so the service fails with "
                f"'invalid low watermark ratio {DEFAULT_LOW_RATIO:g}' at its first MPS "
                f"allocation (a high ratio below {DEFAULT_LOW_RATIO:g} always needs a low one)",
                f"also set {LOW_ENV} to {high:g} or less (e.g. {LOW_ENV}={min(high, 0.5):g}) "
                f"{fix_hint}",
            )
        )
    elif low is not None and 0.0 <= low <= MAX_RATIO:
        ceiling = low_ceiling(high)
        if low > ceiling:
            found.append(
                Check(
                    f"{prefix}.low_above_high",
                    "error",
                    f"{where}: low ratio {low:g} is above high {ceiling:g}"
                    + ("" if high is not None else " (PyTorch's default)")
                    + f": the service fails with 'invalid low watermark ratio {low:g}'",
                    f"make {LOW_ENV} <= {HIGH_ENV} {fix_hint}",
                )
            )
    if high == 0.0 and strtod(env[HIGH_ENV])[1] != env[HIGH_ENV]:  # a real 0, not text
        found.append(
            Check(
                f"{prefix}.high_zero",
                "warning",
                f"{where}: {HIGH_ENV} reads as 0.0, which disables the MPS limit: the service can "
                "take all memory and push macOS into swap instead of failing with an out-of-memory "
                "error",
                f"set a limit, e.g. {HIGH_ENV}=0.7 with {LOW_ENV}=0.5 {fix_hint}",
            )
        )
    if NOT_A_VARIABLE in env:
        found.append(
            Check(
                f"{prefix}.enable_mps",
                "warning",
                f"{where}: {NOT_A_VARIABLE}={env[NOT_A_VARIABLE]} does nothing: PyTorch has no "
                "such variable, so it does not move the service to the CPU",
                f"unset {NOT_A_VARIABLE}; to run on the CPU choose the device in the service "
                '(reference service: memory.device = "cpu" or `mpsctl serve --device cpu`)',
            )
        )
    if env.get(FALLBACK_ENV, "").strip() == "1":
        found.append(
            Check(
                f"{prefix}.mps_fallback",
                "info",
                f"{where}: {FALLBACK_ENV}=1 runs operators that MPS does not implement on the "
                "CPU; it does NOT move work to the CPU after an out-of-memory error",
                "keep it only if the model needs an unimplemented operator; against OOM set the "
                "watermarks, limit concurrency or use a smaller model",
            )
        )
    if not found:
        names = sorted(k for k in env if k.startswith(MPS_ENV_PREFIX) or k == FALLBACK_ENV)
        shown = ", ".join(f"{k}={env[k]}" for k in names) if names else "no PYTORCH_MPS_* variables"
        found.append(Check(f"{prefix}.pytorch_vars", "ok", f"{where}: {shown}"))
    return found


def host_args(argv: Iterable[str]) -> list[str]:
    """The hosts a command line binds: ``--host X``, ``-h X`` and ``--host=X``."""
    args = list(argv)
    found = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--host", "-h")]
    found += [a.split("=", 1)[1] for a in args if a.startswith("--host=")]
    return found


def command_checks(argv: Iterable[str], url_host: str | None) -> list[Check]:
    """What is wrong with the service's command line: used by start's preflight and doctor."""
    args = list(argv)
    found: list[Check] = []
    if "--reload" in args:
        found.append(
            Check(
                "service.reload",
                "warning",
                "service.command has --reload: uvicorn runs a reloader and a worker and loads the "
                "model again on every reload (twice the memory during a reload)",
                "remove --reload from service.command (it is for development)",
            )
        )
    if any(h in _BIND_ALL for h in [*host_args(args), url_host or ""]):
        where = "service.url" if url_host in _BIND_ALL else "service.command"
        found.append(
            Check(
                "service.bind_all",
                "warning",
                f"{where} uses 0.0.0.0: the service listens on every interface, so anyone on the "
                "network can reach it (and its admin endpoints)",
                "bind 127.0.0.1 (`--host 127.0.0.1`) and use http://127.0.0.1:PORT as service.url",
            )
        )
    return found
