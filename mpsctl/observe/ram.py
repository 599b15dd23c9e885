"""This machine's RAM, total and available, for plans made here (psutil only)."""

from __future__ import annotations

import psutil


def ram_bytes() -> int:
    return int(psutil.virtual_memory().total)


def available_bytes() -> int:
    return int(psutil.virtual_memory().available)
