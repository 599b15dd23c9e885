"""Reading a model directory's files as untrusted input: bounded in every dimension.

A plan reads ``config.json`` and safetensors headers that anyone could have written: a FIFO
in their place must not hang ``plan``, a deep nest of brackets must not end in a
RecursionError, and a 4,000-digit number must not end in a ValueError from deep inside
``int()``. Each case is one :class:`ConfigError` line instead.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from mpsctl.errors import ConfigError

#: real config.json files are a few KiB; the largest multimodal ones stay well under 1 MiB
MAX_CONFIG_BYTES = 4 * 1024**2
#: real JSON in a model directory nests 3 or 4 levels (a config's text_config, a header's
#: tensor -> shape); 32 leaves room for any real file and stops a hostile nest early
MAX_DEPTH = 32
#: the longest number a real file holds is a byte offset or an element count: 20 digits
#: cover every 64-bit value
MAX_NUMBER_CHARS = 20


def read_regular_file(path: Path, limit: int, what: str, *, whole: bool = True) -> bytes:
    """Up to ``limit`` bytes of ``path``, refused unless it is a regular file (and, with
    ``whole``, unless all of it fits in ``limit``: a prefix is read otherwise).

    Opened without blocking, so a FIFO put where the file belongs is refused instead of
    waiting for a writer; symlinks are followed (a Hugging Face cache links every file of a
    snapshot to a blob)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file ({what} must be a plain file)")
        if whole and info.st_size > limit:
            raise ConfigError(f"{path}: {info.st_size} bytes, more than the {limit} a {what} "
                              "may have")  # fmt: skip
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(limit + 1)[:limit]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _number(text: str, where: str, kind: type) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise ConfigError(f"{where}: a number of {len(text)} characters (more than "
                          f"{MAX_NUMBER_CHARS}: not a real size)")  # fmt: skip
    value = kind(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: the number {text} is out of range")
    return value


def _constant(name: str, where: str) -> Any:
    raise ConfigError(f"{where}: {name} is not a number a model file may hold")


def _depth(value: Any) -> int:
    """How deeply ``value`` nests, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def load_json(raw: bytes, where: str) -> Any:
    """``raw`` as JSON, with numbers of at most 20 characters, finite floats, no NaN or
    Infinity, and at most 32 levels of nesting."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            parse_int=lambda s: _number(s, where, int),
            parse_float=lambda s: _number(s, where, float),
            parse_constant=lambda s: _constant(s, where),
        )
    except RecursionError:
        raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not valid JSON (not UTF-8)") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    if _depth(value) > MAX_DEPTH:
        raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    return value
