"""What the commands that manage the service share: flag types, the demo notice, units.

Kept apart from ``start``'s module so that ``stop`` and ``status`` load no start path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from mpsctl.cli.app import App
from mpsctl.control.supervisor import Action, find_supervisor, unit_file_candidates
from mpsctl.errors import ServiceError
from mpsctl.paths import CONFIG_NAME, user_config_file
from mpsctl.settings import Settings


class Seconds(click.ParamType):
    """A number of seconds: finite, not negative, and > 0 unless ``allow_zero``."""

    name = "seconds"

    def __init__(self, *, allow_zero: bool) -> None:
        self.allow_zero = allow_zero

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a number of seconds, got {value!r}", param, ctx)
        if not math.isfinite(number) or number < 0 or (number == 0 and not self.allow_zero):
            bound = ">= 0" if self.allow_zero else "> 0"
            self.fail(f"expected a finite number of seconds {bound}, got {value!r}", param, ctx)
        return number


SECONDS = Seconds(allow_zero=True)
POSITIVE_SECONDS = Seconds(allow_zero=False)

WAIT = click.option(
    "--wait", type=SECONDS, default=0.0, metavar="SECONDS",
    help="Wait this long for another mpsctl run's lock (default 0: exit 75 at once).",
)  # fmt: skip


def demo_notice(app: App, settings: Settings) -> None:
    """One stderr line when no settings file was found: from cron's cwd a missing
    ``--config`` silently means "the built-in demo service", not the operator's."""
    if settings.config_file is not None:
        return
    looked = f"{Path.cwd() / CONFIG_NAME}, {user_config_file()}"
    app.info(
        f"no settings file (no --config or MPSCTL_CONFIG; looked for {looked}): managing "
        f"the built-in demo service at {settings.service.url}"
    )


def remember_for_stop(settings: Settings, loaded_key: str | None) -> None:
    """Record what the next bare ``mpsctl stop`` needs to signal the service before it
    loads the settings (``mpsctl.control.quick_stop``); ``loaded_key``: the inputs when
    ``settings`` were loaded (``App.settings_key``)."""
    from mpsctl.control.quick_stop import remember

    units = [str(path) for path in unit_file_candidates(settings)]
    remember(settings, units, loaded_key=loaded_key)


def not_under_unit(app: App, settings: Settings, action: Action) -> bool:
    """Refuse to act around a systemd unit / launchd agent that runs the service; say what
    to run instead. True when ``start`` has nothing to do: the unit runs the service."""
    managed = find_supervisor(settings)
    if managed is None:
        return False
    if action == "start" and managed.active:
        app.info(managed.advice(action))
        return True
    raise ServiceError(managed.advice(action))
