"""The value parsers of the settings schema: a TOML value or an environment string in,
the typed value out, or ValueError with a short reason."""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from mpsctl.torch_env import check_ratio_range


def kind(value: Any) -> str:
    """TOML's name for what was given, for messages: ``expected a string, got a table``."""
    for kind, name in ((bool, "a boolean"), (dict, "a table"), (list, "an array"),
                       (str, "a string"), (int, "an integer"), (float, "a float")):  # fmt: skip
        if isinstance(value, kind):
            return name
    return type(value).__name__


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {kind(value)}")
    return value


def parse_opt_str(value: Any) -> str | None:
    text = parse_str(value)
    return text or None


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    got = repr(value) if isinstance(value, str) else kind(value)
    raise ValueError(f"expected true or false, got {got}")


def parse_number(value: Any) -> float:
    # bool is an int in Python; `high = true` must not become 1.0
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {kind(value)}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    else:
        raise ValueError(f"expected a number, got {kind(value)}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def parse_positive(value: Any) -> float:
    number = parse_number(value)
    if number <= 0:
        raise ValueError(f"must be greater than 0, got {number:g}")
    return number


def parse_non_negative(value: Any) -> float:
    number = parse_number(value)
    if number < 0:
        raise ValueError(f"must be 0 or more, got {number:g}")
    return number


def parse_int_min(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    """A whole number, read as an integer (never through a float, which would turn
    ``99999999999999999999999`` into ``...91611392``); ``3.0`` and ``"3"`` are 3. With
    ``maximum``, at most that: a count that sizes a loop, a date or a buffer later must keep
    every computation made with it in range."""

    def parse(value: Any) -> int:
        number = _whole(value)
        if number < minimum:
            raise ValueError(f"must be {minimum} or more, got {number}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum:,}, got {_short(number)}")
        return number

    return parse


#: the longest duration any setting takes, in seconds (a year): past it, ``time.sleep``,
#: thread waits and date arithmetic overflow, and no timeout that long means anything
MAX_SECONDS = 365 * 86400.0


def parse_seconds(*, zero: bool = False, maximum: float = MAX_SECONDS) -> Callable[[Any], float]:
    """A duration in seconds: greater than 0 (or 0 or more with ``zero``), at most ``maximum``."""

    def parse(value: Any) -> float:
        number = parse_non_negative(value) if zero else parse_positive(value)
        if number > maximum:
            raise ValueError(f"must be at most {maximum:g} seconds, got {number:g}")
        return number

    return parse


def _short(number: int) -> str:
    text = str(number)
    return text if len(text) <= 24 else f"a {len(text)}-digit number"


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {kind(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    number = parse_number(value)
    # a float is exact up to 2**53; above it "whole" says nothing about the digits typed
    if number != int(number) or abs(number) > 2**53:
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(number)


def parse_ratio(value: Any) -> float:
    """A watermark ratio: a real number in 0.0-2.0.

    PyTorch reads these with ``strtod``, which turns ``"abc"`` into 0.0 (= no limit), so a
    typo would silently remove the limit; we refuse it instead.
    """
    number = parse_number(value)
    check_ratio_range(number)
    return number


def parse_opt_ratio(value: Any) -> float | None:
    if isinstance(value, str) and value.strip().lower() in ("", "auto"):
        return None
    return parse_ratio(value)


def parse_choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = parse_str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def parse_command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        parts = shlex.split(value)
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        parts = list(value)
    else:
        raise ValueError(f"expected a list of strings, got {kind(value)}")
    if not parts:
        raise ValueError("must not be empty")
    return tuple(parts)


def parse_str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise ValueError("expected a list of strings")


def parse_pair(value: Any) -> tuple[float, float]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or len(items) != 2:
        raise ValueError("expected [warning, critical]")
    warn, crit = (parse_non_negative(v) for v in items)
    if warn > crit:
        raise ValueError(f"warning {warn:g} is above critical {crit:g}")
    return warn, crit


def parse_url(value: Any) -> str:
    """An http(s) URL with a host and, if it names one, a port in 1-65535. Messages show
    the URL masked (``mpsctl.masking``): a webhook's path or userinfo is a credential."""
    from mpsctl.masking import mask_url_like

    text = parse_str(value).strip().rstrip("/")
    shown = mask_url_like(value)
    if any(ord(c) < 33 or ord(c) == 127 for c in text):
        raise ValueError(f"a URL has no spaces or control characters, got {shown!r}")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {shown!r}")
    try:
        port = parts.port
    except ValueError:  # not a number, or above 65535
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"bad port in {shown!r}: it must be 1-65535")
    return text


def parse_opt_url(value: Any) -> str | None:
    """``parse_url``, or None for an empty string (no URL)."""
    if isinstance(value, str) and not value.strip():
        return None
    return parse_url(value)


def parse_path_str(value: Any) -> str:
    text = parse_str(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def parse_http_path(value: Any) -> str:
    text = parse_str(value).strip()
    if not text.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    return text


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KIB": 1024, "M": 1024**2, "MIB": 1024**2,
               "G": 1024**3, "GIB": 1024**3, "T": 1024**4, "TIB": 1024**4}  # fmt: skip


def parse_opt_size(value: Any) -> int | None:
    """Bytes: an integer, or ``"8GiB"`` / ``"512 MiB"`` / ``"8G"`` (1024-based); 0 or
    ``"none"``: no limit. ``KB``/``MB``/``GB`` are refused: 1000 or 1024 would be a guess."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 8GiB, got {kind(value)}")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, str):
        text = value.strip()
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ")
        number_text, unit = digits.strip(), text[len(digits) :].strip().upper()
        try:
            number = float(number_text)
        except ValueError:
            raise ValueError(f"expected a size such as 8GiB, got {value!r}") from None
    else:
        raise ValueError(f"expected a size such as 8GiB, got {kind(value)}")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown unit {unit!r} in {value!r} (use KiB, MiB, GiB or TiB)")
    if not number >= 0 or number * _SIZE_UNITS[unit] > 2**62:
        raise ValueError(f"expected a size from 0 to 4 EiB, got {value!r}")
    size = int(number * _SIZE_UNITS[unit])
    return size or None
