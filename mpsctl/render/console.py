"""Consoles and the few output helpers every command shares."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

#: width when the stream is not a terminal and COLUMNS is unset: wide enough that piped
#: output (`mpsctl config show | grep ...`, cron mail) keeps paths and values on one line
PIPE_WIDTH = 160


def make_console(*, stderr: bool) -> Console:
    # imported here: `probe --json` and `--nagios` print no table and need no console
    from rich.console import Console

    # markup/highlight/emoji off: command lines and model answers contain brackets and
    # colons that rich would otherwise reinterpret. rich itself honours NO_COLOR and
    # turns colour and live displays off when the stream is not a terminal.
    console = Console(stderr=stderr, markup=False, highlight=False, emoji=False, soft_wrap=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH  # rich would fold at 80, mid-token
    return console


def write_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


def write_json_line(document: Any) -> None:
    """One JSON line on stdout (streaming commands), flushed so a pipe sees it now."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


# C0 and C1 control characters except newline and tab, shown as \xNN: text that came from
# a service (a model's answer) must not move the cursor, recolour or retitle the terminal.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (9, 10)}


def printable(text: str) -> str:
    """``text`` with terminal control characters made visible (``\\x1b``), safe to print."""
    return text.translate(_CONTROLS)
