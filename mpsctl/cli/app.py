"""The object every command receives with ``@click.pass_obj``."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

import click

from mpsctl.render.console import make_console

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from mpsctl.service import Service
    from mpsctl.settings import Settings


class App:
    def __init__(self, config_path: str | None = None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None
        self._chosen: str | None = None
        #: the settings' inputs when the kept settings were loaded, for the commands that
        #: record them for a bare ``stop`` (:meth:`keep_settings_key`): the record is valid
        #: for those inputs only, not for an edit made while the command ran
        self.settings_key: str | None = None
        self._keep_key = False

    def keep_settings_key(self) -> None:
        """Note the settings' inputs (``settings_key``) when they are loaded from now on
        (``start`` and ``stop``; the hash costs the other commands' start-up time)."""
        self._keep_key = True

    def choose(self, name: str) -> None:
        """Work on the service ``name`` (``-s NAME``): settings are that service's."""
        self._chosen = name
        self._settings = None

    def name_services(self, names: Sequence[str], all_: bool = False) -> None:
        """Service names or ``--all`` on the command line: they choose among every
        configured service, not within the one ``MPSCTL_SERVICE`` picks (a flag beats
        the environment)."""
        if (names or all_) and self._chosen is None:
            self._chosen = ""
            self._settings = None

    @cached_property
    def out(self) -> Console:
        """stdout: the result only."""
        return make_console(stderr=False)

    @cached_property
    def err(self) -> Console:
        """stderr: progress, warnings, errors."""
        return make_console(stderr=True)

    def settings(self, overrides: Mapping[str, tuple[Any, str]] | None = None) -> Settings:
        """Effective settings; ``overrides`` are flags: ``{"memory.device": (v, "--device")}``.

        ``settings.notes`` (a derived low watermark, a 0.0 ratio) are for the commands that
        apply memory settings to print; reading settings stays quiet. With several services
        configured, a command that works on one is told which by ``MPSCTL_SERVICE``.
        """
        settings = self.host_settings(overrides)
        if settings.members:
            from mpsctl.errors import UsageError

            names = ", ".join(m.service.name for m in settings.members)
            raise UsageError(
                f"several services are configured ({names}): choose one with "
                "MPSCTL_SERVICE=NAME (or -s NAME where the command has it)"
            )
        return settings

    def services(
        self,
        names: Sequence[str] = (),
        *,
        all_: bool = False,
        changes: bool = False,
        overrides: Mapping[str, tuple[Any, str]] | None = None,
    ) -> list[Service]:
        """The services a command works on (see :func:`mpsctl.service.select`)."""
        from mpsctl.service import select

        return select(self.host_settings(overrides), names, all_=all_, changes=changes)

    def host_settings(self, overrides: Mapping[str, tuple[Any, str]] | None = None) -> Settings:
        """The settings as loaded: with several services, their defaults and ``members``."""
        if overrides or self._settings is None:
            # imported here: `mpsctl --help` and `--version` read no settings
            from mpsctl.settings import load_settings

            key = _inputs_key() if self._keep_key and not overrides else None
            settings = load_settings(
                config=self.config_path, overrides=overrides, service=self._chosen
            )
            if not overrides:
                self._settings = settings
                self.settings_key = key
            return settings
        return self._settings

    def warn(self, message: str) -> None:
        click.echo(f"mpsctl: warning: {shown_message(message)}", err=True)

    def info(self, message: str) -> None:
        click.echo(f"mpsctl: {shown_message(message)}", err=True)


def _inputs_key() -> str | None:
    import os

    from mpsctl.control.quick_stop import inputs_key

    try:
        return inputs_key(os.environ, os.getcwd())
    except OSError:  # the working directory was removed
        return None


def shown_message(message: str) -> str:
    """A diagnostic line as it reaches stderr: credentials masked (``mpsctl.masking``),
    terminal control characters made visible."""
    from mpsctl.masking import mask_text
    from mpsctl.render.console import printable

    return printable(mask_text(message, paths=False))


def json_option(func: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(func)


class ConventionCommand(click.Command):
    """A command whose failures all exit with one code of its own convention.

    ``probe`` follows the monitoring-plugin convention (a bad option or config is UNKNOWN, 3,
    never CRITICAL) and ``status`` the LSB one (1-3 are states of the service, so a bad
    config is "unknown", 4): ``@click.command(cls=ConventionCommand, failure_exit_code=3)``.
    """

    def __init__(self, *args: Any, failure_exit_code: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failure_exit_code = failure_exit_code
