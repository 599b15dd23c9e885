"""The plan of the model the configured service serves, for commands that cite it.

``start`` warns with it, ``doctor`` and ``oom`` cite its figures, ``ask --sweep`` sets its
predicted peak beside the measured one. Each of them must go on when no plan can be made
(a hub id, a directory without ``config.json``, a demo checkpoint not built yet), so this
returns the reason instead of raising.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.errors import MpsctlError
from mpsctl.paths import DEMO_DIR_NAME, LAST_HEALTH
from mpsctl.plan.lines import advice_line, limit_phrase
from mpsctl.plan.plan import DEFAULT_PROMPT_TOKENS, Plan, plan_for_settings
from mpsctl.plan.presets import PRESETS
from mpsctl.units import fmt_bytes

if TYPE_CHECKING:
    from mpsctl.settings import Settings


@dataclass(frozen=True)
class ConfiguredPlan:
    """A plan, or why none could be made (exactly one of the two is set)."""

    plan: Plan | None
    reason: str | None = None
    #: nothing worth a line at start: the demo's checkpoint is not built yet (its first
    #: start builds it; the tiny demo fits anywhere), or a service of one's own names no model
    expected: bool = False


def served_model(settings: Settings, model: str | None = None) -> str | None:
    """What the configured service loads: ``model`` (start --model), the demo checkpoint of
    the reference service's ``--demo``, the command's ``--model``, else ``serve.model``."""
    if model is not None:
        return model
    argv = list(settings.service.command)
    if "--model" in argv[:-1]:
        return argv[argv.index("--model") + 1]
    if "--demo" in argv:
        return str(settings.home / DEMO_DIR_NAME)
    return settings.serve.model


def saved_report(settings: Settings) -> dict[str, Any] | None:
    """The memory report of the last healthy answer, without its RSS: the process it
    describes is gone or about to be replaced, so its RSS is not memory in use."""
    try:
        body = json.loads((settings.home / LAST_HEALTH).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    report = body.get("memory") if isinstance(body, dict) else None
    if not isinstance(report, dict):
        return None
    return {k: v for k, v in report.items() if k != "rss_bytes"}


def configured_plan(
    settings: Settings,
    report: dict[str, Any] | None = None,
    *,
    model: str | None = None,
    max_new_tokens: int | None = None,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
) -> ConfiguredPlan:
    """Plan the served model on this machine; never raises for a model it cannot read."""
    target = served_model(settings, model)
    if target is None:
        return ConfiguredPlan(None, "no model configured (serve.model)", expected=True)
    preset = target if target.lower() in PRESETS else None
    path = Path(target).expanduser()
    if preset is None and not (path / "config.json").is_file():
        if path == settings.home / DEMO_DIR_NAME:
            why = "the demo checkpoint is not built yet (the first start builds it)"
            return ConfiguredPlan(None, why, expected=True)
        if path.is_dir():
            return ConfiguredPlan(None, f"{target} has no config.json")
        return ConfiguredPlan(None, f"{target} is not a local model directory")
    if max_new_tokens is not None:
        settings = replace(settings, serve=replace(settings.serve, max_new_tokens=max_new_tokens))
    try:
        plan = plan_for_settings(
            settings,
            report,
            model_dir=None if preset else str(path),
            preset=preset,
            prompt_tokens=prompt_tokens,
        )
    except (MpsctlError, OSError, ValueError) as exc:
        return ConfiguredPlan(None, f"{target}: {exc}")
    return ConfiguredPlan(plan)


def start_notes(settings: Settings, model: str | None = None) -> tuple[list[str], list[str]]:
    """(warnings, infos) for ``start``: a warning when the configured plan does not fit,
    one info line when the model cannot be planned, nothing when it fits or when no plan
    is expected (``ConfiguredPlan.expected``)."""
    try:
        found = configured_plan(settings, saved_report(settings), model=model)
    except Exception as exc:  # advice only: a plan that breaks must never stop a start
        return [], [f"no memory plan: {type(exc).__name__}: {exc}"]
    plan = found.plan
    if plan is None:
        if found.expected:
            return [], []
        return [], [f"no memory plan: {found.reason} (mpsctl plan --preset NAME plans a "
                    "published size)"]  # fmt: skip
    if plan.fits:
        return [], []
    return [
        f"the memory plan does not fit: {plan.model} ({plan.figures.dtype} on {plan.device}) "
        f"at serve.max_concurrent = {plan.max_concurrent} needs {plan.total_bytes} bytes "
        f"({fmt_bytes(plan.total_bytes)}) of {limit_phrase(plan)}; {advice_line(plan)}"
    ], []
