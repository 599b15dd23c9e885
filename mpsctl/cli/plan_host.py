"""``mpsctl plan`` with several services: every one planned, their sum against the host."""

from __future__ import annotations

import click
from rich.table import Table

from mpsctl.cli.app import App
from mpsctl.errors import ExitCode, MpsctlError
from mpsctl.plan.budget import host_budget
from mpsctl.render.console import write_json
from mpsctl.service import services
from mpsctl.settings import Settings
from mpsctl.units import fmt_bytes


def plan_services(app: App, host: Settings, ram: str | None, as_json: bool) -> None:
    """Print the host's budget; exit 0 when the sum fits, 1 when it does not."""
    from mpsctl.plan.limit import parse_size

    try:
        ram_bytes = None if ram is None else parse_size(ram)
    except ValueError as exc:
        raise MpsctlError(f"--ram: {exc}", exit_code=ExitCode.USAGE) from None
    budget = host_budget(host, [s.settings for s in services(host)], ram=ram_bytes)
    if as_json:
        write_json(budget.to_json())
    else:
        table = Table(title="every service's planned peak", title_justify="left")
        for column in ("service", "model", "device", "concurrent", "planned peak"):
            table.add_column(column, justify="right" if column == "planned peak" else "left")
        for planned in budget.services:
            plan = planned.plan
            table.add_row(
                planned.name,
                plan.model if plan else (planned.reason or "?"),
                plan.device if plan else "",
                str(plan.max_concurrent) if plan else "",
                fmt_bytes(planned.peak_bytes),
            )
        app.out.print(table)
        fits = {True: "fits", False: "DOES NOT FIT", None: "cannot be judged"}[budget.fits]
        app.out.print(
            f"sum {fmt_bytes(budget.sum_bytes)} of {fmt_bytes(budget.ceiling_bytes)} "
            f"({budget.ceiling_source}): {fits}",
            soft_wrap=True,
        )
        largest = budget.largest()
        if budget.fits is False and largest is not None:
            app.out.print(f"shrink {largest.name} first (the largest planned peak)")
    raise click.exceptions.Exit(ExitCode.FAILURE if budget.fits is False else ExitCode.OK)
