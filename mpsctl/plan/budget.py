"""One memory budget for every service of the host.

Each service is planned on its own (its model, dtype, concurrency, watermarks) by
:func:`mpsctl.plan.plan.plan_for_settings`; the budget is the SUM of their planned peaks
against ONE ceiling, because the services share the machine: on a Mac every process's MPS
allocator may grow to its own fraction of the same recommended working set, so two
services allowed 0.7 of it each are together allowed 1.4 of it. The ceiling is
``[host] budget`` when set, else the device's own: the recommended working set (MPS),
the GPU's memory (CUDA), RAM (CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpsctl.errors import MpsctlError
from mpsctl.paths import DEMO_DIR_NAME
from mpsctl.plan.plan import Plan, plan_for_settings
from mpsctl.plan.presets import PRESETS
from mpsctl.settings import Settings
from mpsctl.units import fmt_bytes


@dataclass(frozen=True)
class ServicePlan:
    """One service's planned peak (at its max_concurrent), or why it cannot be planned."""

    name: str
    plan: Plan | None
    reason: str | None = None

    @property
    def peak_bytes(self) -> int | None:
        if self.plan is None:
            return None
        return self.plan.figures.total_bytes(self.plan.max_concurrent)

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "name": self.name,
            "model": plan.model if plan else None,
            "device": plan.device if plan else None,
            "max_concurrent": plan.max_concurrent if plan else None,
            "planned_peak_bytes": self.peak_bytes,
            "own_limit_bytes": plan.limit.limit_bytes if plan else None,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Budget:
    """The services' planned peaks, their sum, and the one ceiling they share."""

    services: tuple[ServicePlan, ...]
    ceiling_bytes: int | None
    ceiling_source: str

    @property
    def sum_bytes(self) -> int:
        return sum(s.peak_bytes or 0 for s in self.services)

    @property
    def fits(self) -> bool | None:
        """None when there is no ceiling to compare with."""
        return None if self.ceiling_bytes is None else self.sum_bytes <= self.ceiling_bytes

    def largest(self) -> ServicePlan | None:
        """The service to shrink first: the largest planned peak."""
        planned = [s for s in self.services if s.peak_bytes is not None]
        return max(planned, key=lambda s: s.peak_bytes or 0) if planned else None

    def unplanned(self) -> list[str]:
        """One phrase per service the sum counts as 0 because it could not be planned."""
        return [f"{s.name} ({s.reason})" for s in self.services if s.plan is None]

    def describe(self) -> str:
        parts = ", ".join(f"{s.name} {fmt_bytes(s.peak_bytes)}" for s in self.services)
        ceiling = fmt_bytes(self.ceiling_bytes)
        return f"{parts}: sum {fmt_bytes(self.sum_bytes)} of {ceiling} ({self.ceiling_source})"

    def to_json(self) -> dict[str, Any]:
        largest = self.largest()
        return {
            "schema": "mpsctl.budget/1",
            "services": [s.to_json() for s in self.services],
            "sum_bytes": self.sum_bytes,
            "ceiling_bytes": self.ceiling_bytes,
            "ceiling_source": self.ceiling_source,
            "fits": self.fits,
            "shrink": largest.name if self.fits is False and largest is not None else None,
        }


def _served_model(settings: Settings) -> str | None:
    """What the service loads: its command's ``--model``, the host's demo checkpoint for
    the reference service's ``--demo``, else ``serve.model``."""
    argv = list(settings.service.command)
    if "--model" in argv[:-1]:
        return argv[argv.index("--model") + 1]
    if "--demo" in argv:
        return str(settings.host_dir / DEMO_DIR_NAME)
    return settings.serve.model


def plan_service(settings: Settings, *, ram: int | None = None) -> ServicePlan:
    """The service's plan; never raises for a model it cannot read (the reason instead)."""
    name = settings.service.name
    target = _served_model(settings)
    if target is None:
        return ServicePlan(name, None, "no model configured (serve.model)")
    preset = target if target.lower() in PRESETS else None
    path = Path(target).expanduser()
    if preset is None and not (path / "config.json").is_file():
        if target == str(settings.host_dir / DEMO_DIR_NAME):
            return ServicePlan(name, None, "the demo checkpoint is not built yet")
        return ServicePlan(name, None, f"{target} is not a local model directory")
    try:
        plan = plan_for_settings(
            settings, model_dir=None if preset else str(path), preset=preset, ram=ram
        )
    except (MpsctlError, OSError, ValueError) as exc:
        return ServicePlan(name, None, f"{target}: {exc}")
    return ServicePlan(name, plan)


def _device_ceiling(plans: Sequence[ServicePlan]) -> tuple[int | None, str]:
    """The device's own ceiling, from the first plan that has one."""
    for planned in plans:
        plan = planned.plan
        if plan is None:
            continue
        limit = plan.limit
        if plan.device == "mps" and limit.recommended_max_bytes is not None:
            return limit.recommended_max_bytes, "the MPS working set every process shares"
        if plan.device == "cuda":
            return limit.limit_bytes, "the GPU's memory"
        return limit.ram_bytes, f"RAM ({limit.ram_source})"
    return None, "no service could be planned"


def host_budget(host: Settings, members: Sequence[Settings], *, ram: int | None = None) -> Budget:
    """The budget of ``members`` (their settings) under ``host``'s ceiling."""
    plans = tuple(plan_service(m, ram=ram) for m in members)
    ceiling: int | None
    if host.host.budget is not None:
        ceiling, source = host.host.budget, "host.budget"
    else:
        ceiling, source = _device_ceiling(plans)
    return Budget(plans, ceiling, source)


def check_start(
    host: Settings, running: Sequence[Settings], starting: Settings
) -> tuple[Budget, str | None]:
    """The budget of what runs plus ``starting``, and the refusal (or warning) text when
    that sum is over the ceiling; None when it fits or cannot be judged."""
    budget = host_budget(host, [*running, starting])
    if budget.fits is not False:
        return budget, None
    shrink = budget.largest()
    name = shrink.name if shrink is not None else starting.service.name
    return budget, (
        f"starting {starting.service.name} would put the planned memory of the host's "
        f"services over its ceiling: {budget.describe()}; shrink {name} (serve.max_concurrent, "
        "serve.model, serve.dtype) or stop a service first"
    )
