"""The host's view of several services: each one's probe, then their sum against the host.

Each service is probed on its own (:func:`mpsctl.observe.probe.take_probe` with its
settings). What no single probe can see is added here: the services' memory together
against RAM, and their accelerator memory together against the ONE ceiling they share
(on a Mac the recommended working set: every process's MPS limit is a fraction of that
same figure, so two limits of 0.7 allow 1.4 of it together). The verdict is the worst
of all, and names the service to blame: the one whose own verdict is worst, and among
equals the one holding the most memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpsctl.errors import ProbeExit
from mpsctl.probe import Finding, ProbeResult, service_memory_bytes
from mpsctl.units import fmt_bytes

SCHEMA = "mpsctl.host-probe/1"
_RANK = {ProbeExit.OK: 0, ProbeExit.WARNING: 1, ProbeExit.UNKNOWN: 2, ProbeExit.CRITICAL: 3}


@dataclass(frozen=True)
class HostProbe:
    """Every service's probe and the host's findings about their sum."""

    probes: tuple[ProbeResult, ...]
    findings: tuple[Finding, ...]

    @property
    def ram_bytes(self) -> int | None:
        host = next((p.host for p in self.probes if p.host is not None), None)
        return None if host is None else host.total_bytes

    @property
    def services_memory_bytes(self) -> int:
        return sum(service_memory_bytes(p.service)[0] or 0 for p in self.probes)

    @property
    def accelerator_held_bytes(self) -> int | None:
        held = [p.accelerator.held_bytes for p in self.probes]
        known = [h for h in held if h is not None]
        return sum(known) if known else None

    @property
    def accelerator_limits_bytes(self) -> int | None:
        limits = [p.accelerator.limit_bytes for p in self.probes]
        known = [x for x in limits if x is not None]
        return sum(known) if known else None

    @property
    def accelerator_ceiling_bytes(self) -> int | None:
        """The one limit the services share: MPS's recommended working set, a GPU's memory."""
        for probe in self.probes:
            acc = probe.accelerator
            if acc.recommended_max_bytes is not None:
                return acc.recommended_max_bytes
            if acc.total_bytes is not None:
                return acc.total_bytes
        return None

    @property
    def verdict(self) -> ProbeExit:
        levels = [p.verdict for p in self.probes] + [f.level for f in self.findings]
        return max(levels, key=lambda level: _RANK[level], default=ProbeExit.OK)

    @property
    def blame(self) -> str | None:
        """The service to look at first; None when every verdict is OK."""
        if self.verdict == ProbeExit.OK:
            return None
        worst = max(
            self.probes,
            key=lambda p: (_RANK[p.verdict], service_memory_bytes(p.service)[0] or 0),
        )
        return worst.service_name

    @property
    def reasons(self) -> list[str]:
        own = [f"{p.service_name}: {r}" for p in self.probes for r in p.reasons]
        return own + [f"{f.level.name}: host: {f.message}" for f in self.findings]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "time": self.probes[0].time if self.probes else None,
            "verdict": self.verdict.name,
            "exit_code": int(self.verdict),
            "blame": self.blame,
            "reasons": self.reasons,
            "services": [p.to_json() for p in self.probes],
            "host": {
                "ram_bytes": self.ram_bytes,
                "services_memory_bytes": self.services_memory_bytes,
                "accelerator_held_bytes": self.accelerator_held_bytes,
                "accelerator_limits_bytes": self.accelerator_limits_bytes,
                "accelerator_ceiling_bytes": self.accelerator_ceiling_bytes,
            },
        }


def _largest(probes: Sequence[ProbeResult], figure: Any) -> str:
    return max(probes, key=lambda p: figure(p) or 0).service_name


def host_findings(probes: Sequence[ProbeResult], thresholds: Any = None) -> tuple[Finding, ...]:
    """What only the sum shows: the services' memory together past the host's thresholds
    (the top-level [thresholds]: one service's own table is about that service, and the
    file's first service would otherwise judge the whole host), their accelerator limits
    or holdings together past the one ceiling they share."""
    if not probes:
        return ()
    view = HostProbe(tuple(probes), ())
    levels: Any = thresholds if thresholds is not None else probes[0].thresholds
    findings: list[Finding] = []
    ram = view.ram_bytes
    if ram and probes:
        used = view.services_memory_bytes
        warn, crit = levels.host_used_percent
        share = 100.0 * used / ram
        level = (ProbeExit.CRITICAL if share >= crit
                 else ProbeExit.WARNING if share >= warn else None)  # fmt: skip
        if level is not None:
            biggest = _largest(probes, lambda p: service_memory_bytes(p.service)[0])
            findings.append(Finding(level, (
                f"the services together use {fmt_bytes(used)}, {share:.0f}% of RAM "
                f"({fmt_bytes(ram)}); the largest is {biggest}")))  # fmt: skip
    ceiling = view.accelerator_ceiling_bytes
    held, limits = view.accelerator_held_bytes, view.accelerator_limits_bytes
    if ceiling and held is not None:
        warn, crit = levels.accelerator_limit_percent
        share = 100.0 * held / ceiling
        level = (ProbeExit.CRITICAL if share >= crit
                 else ProbeExit.WARNING if share >= warn else None)  # fmt: skip
        if level is not None:
            biggest = _largest(probes, lambda p: p.accelerator.held_bytes)
            findings.append(Finding(level, (
                f"the services together hold {fmt_bytes(held)} of accelerator memory, "
                f"{share:.0f}% of the {fmt_bytes(ceiling)} they share; the largest is "
                f"{biggest}")))  # fmt: skip
    if ceiling and limits is not None and limits > ceiling:
        findings.append(Finding(ProbeExit.WARNING, (
            f"the services' accelerator limits add up to {fmt_bytes(limits)}, more than the "
            f"{fmt_bytes(ceiling)} they share: together they may grow past it (lower "
            "memory.high_watermark_ratio so the ratios sum to 1.0 or less)")))  # fmt: skip
    return tuple(findings)


def host_probe(probes: Sequence[ProbeResult], thresholds: Any = None) -> HostProbe:
    """``thresholds``: the host's (top-level) ``[thresholds]``; default the first probe's."""
    return HostProbe(tuple(probes), host_findings(probes, thresholds))
