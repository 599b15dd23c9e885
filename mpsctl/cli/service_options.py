"""Options that pick services, shared by the commands that take them (not a command).

``status [NAME]...`` and ``start/stop/restart/fix [NAME]... | --all`` take names as
arguments; ``ask``, ``logs`` and ``oom`` work on one service: ``-s NAME``. With one
service configured none of them is needed, and output is exactly what it always was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from mpsctl.cli.app import App
    from mpsctl.service import Service


def names_argument(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("names", nargs=-1, metavar="[NAME]...")(func)


def all_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--all", "all_", is_flag=True, help="Every configured service (several configured)."
    )(func)


def service_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-s NAME``: which of several services; it selects that service's settings."""

    def chosen(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        from mpsctl.cli.app import App

        app = ctx.find_object(App)
        if value is not None and app is not None:
            app.choose(value)
        return value

    return click.option(
        "-s", "--service", metavar="NAME", expose_value=False, callback=chosen,
        help="Which service, when several are configured ([services.NAME]).",
    )(func)  # fmt: skip


def several_document(command: str, documents: list[dict[str, Any]], code: int) -> dict[str, Any]:
    """``--json`` over several services: one document holding each service's own."""
    return {"schema": "mpsctl.services/1", "command": command, "services": documents,
            "exit_code": code}  # fmt: skip


def named(document: dict[str, Any], name: str) -> dict[str, Any]:
    """A service's document inside ``mpsctl.services/1``: every entry, result or error,
    says which service it is under one key, ``service``."""
    return document if "service" in document else {**document, "service": name}


def error_document(command: str, name: str, message: str, code: int) -> dict[str, Any]:
    """The place of a service the command failed on, in a several-services document: the
    error document one service would have printed, naming the service."""
    return {"schema": "mpsctl.error/1", "command": command, "service": name,
            "error": message, "exit_code": code}  # fmt: skip


def heading(app: App, chosen: list[Service], service: Service) -> None:
    """A line naming the service before its output, when there are several."""
    if len(chosen) > 1:
        app.out.print(f"== {service.name}", soft_wrap=True)
