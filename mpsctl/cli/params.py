"""Click parameter types shared by several commands."""

from __future__ import annotations

from typing import Any

import click

from mpsctl.durations import Period, parse_period


class Duration(click.ParamType):
    """``90``, ``30s``, ``15m``, ``24h``, ``7d``, ``1h30m``: a ``Period``.

    A bad or overflowing value (``--since 1e12``) is one usage line, exit 2, naming the flag.
    """

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Period):
            return value
        try:
            return parse_period(str(value))
        except ValueError as exc:
            flag = param.opts[0] if param is not None and param.opts else "duration"
            raise click.UsageError(f"{flag}: {exc}", ctx) from None


DURATION = Duration()
