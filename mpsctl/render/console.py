"""Consoles and the few output helpers every command shares."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console


def make_console(*, stderr: bool) -> Console:
    # markup/highlight/emoji off: command lines and model answers contain brackets and
    # colons that rich would otherwise reinterpret. rich itself honours NO_COLOR and
    # turns colour and live displays off when the stream is not a terminal.
    return Console(stderr=stderr, markup=False, highlight=False, emoji=False, soft_wrap=False)


def write_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


def write_json_line(document: Any) -> None:
    """One JSON line on stdout (streaming commands), flushed so a pipe sees it now."""
    sys.stdout.write(json.dumps(document, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
