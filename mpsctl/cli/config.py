"""``mpsctl config show | init``."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.table import Table

from mpsctl.cli.app import App, json_option
from mpsctl.errors import MpsctlError
from mpsctl.render.console import write_json
from mpsctl.settings import SCHEMA, TEMPLATE
from mpsctl.storage import write_new_file


@click.group()
def config() -> None:
    """Show or create the settings file.

    \b
    Examples:
      mpsctl config show
      mpsctl config show --json | jq .values.memory
      mpsctl config init ./mpsctl.toml
    """


@config.command("show")
@json_option
@click.pass_obj
def show(app: App, as_json: bool) -> None:
    """Print every effective setting and where it came from.

    Each key can also be set by the variable MPSCTL_<SECTION>_<KEY>, for example
    MPSCTL_SERVICE_URL or MPSCTL_MEMORY_HIGH_WATERMARK_RATIO.

    \b
    Examples:
      mpsctl config show
      MPSCTL_MEMORY_HIGH_WATERMARK_RATIO=0.6 mpsctl config show --json
    """
    settings = app.settings()
    if as_json:
        write_json(
            {
                "schema": "mpsctl.config/1",
                "config_file": str(settings.config_file) if settings.config_file else None,
                "home": str(settings.home),
                "reference_service": settings.reference_service,
                "values": settings.as_dict(),
                "sources": settings.sources,
            }
        )
        return
    where = str(settings.config_file) if settings.config_file else "none (built-in defaults)"
    table = Table(title=f"Settings — file: {where}; home: {settings.home}", title_justify="left")
    for column in ("key", "value", "from"):
        table.add_column(column, overflow="fold")
    values = settings.as_dict()
    for section, keys in SCHEMA.items():
        for key in keys:
            dotted = f"{section}.{key}"
            value = values[section][key]
            if value is None:
                shown = "(unset)"
            elif isinstance(value, list):
                shown = shlex.join(str(v) for v in value) if key == "command" else str(value)
            else:
                shown = str(value)
            table.add_row(dotted, shown, settings.sources[dotted])
    app.out.print(table)


@config.command("init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="mpsctl.toml")
@click.option("--force", is_flag=True, help="Replace an existing file (a .bak copy is kept).")
@click.pass_obj
def init(app: App, path: Path, force: bool) -> None:
    """Write a commented settings template (never overwrites without --force).

    \b
    Examples:
      mpsctl config init                 # ./mpsctl.toml
      mpsctl config init ~/.config/mpsctl/mpsctl.toml
    """
    try:
        backup = write_new_file(path, TEMPLATE, force=force)
    except FileExistsError:
        raise MpsctlError(f"{path} exists; use --force to replace it") from None
    if backup is not None:
        app.info(f"previous file kept as {backup}")
    app.info(f"wrote {path}")
