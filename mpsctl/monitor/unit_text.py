"""How a value is written into a crontab line, a systemd unit and a launchd plist.

Each format has its own rules, and each value is written by them:

- crontab(5): the command is a shell line, so every word is shell-quoted; cron itself turns
  an unescaped ``%`` into a newline (the rest becomes stdin), so ``%`` is written ``\\%``,
  which cron gives back as ``%``.
- systemd.syntax(7) / systemd.service(5): a word of ``ExecStart=`` is double-quoted when it
  holds a blank, quote, backslash or ``;``, with C-style escapes; ``%`` is a specifier
  (``%%``) and ``$`` names a variable (``$$``), except in the first word, the program,
  which systemd neither expands nor lets hold a quote or a backslash (``string_is_safe``:
  "Executable name contains special characters"). ``Environment=`` takes a quoted
  ``"KEY=value"`` with the same escapes and ``%%`` (no ``$`` expansion there). Path settings
  (``WorkingDirectory=``, ``EnvironmentFile=``, ``StandardOutput=append:``) take the path
  unquoted: only ``%%``; leading and trailing blanks would be stripped, so they are refused.
- launchd: ``plistlib`` writes the XML; XML 1.0 cannot hold most control characters.

No format holds a line break in a value: in a crontab or a unit it would start a line of its
own (another cron job, another directive). A control character is refused with one line
that names the setting, never the value (it may be a secret).
"""

from __future__ import annotations

import re
import shlex

from mpsctl.errors import ConfigError

#: C0 controls but the tab, and DEL: what a crontab line, a unit file or XML cannot hold
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL character"}
_SYSTEMD_QUOTE = frozenset(" \t\"'\\;")


def refuse_control(key: str, value: str, where: str) -> str:
    """``value``, or ConfigError naming ``key`` when it holds a control character."""
    match = _CONTROL.search(value)
    if match is not None:
        char = match.group()
        name = _CONTROL_NAMES.get(char, f"a control character (U+{ord(char):04X})")
        raise ConfigError(f"{key} holds {name}, which {where} cannot hold; change the value")
    return value


def cron_word(word: str) -> str:
    """One word of a crontab command line."""
    return shlex.quote(word).replace("%", "\\%")


def systemd_word(word: str) -> str:
    """One ``ExecStart=`` word: quoted when needed, ``%`` and ``$`` doubled (no expansion)."""
    text = word.replace("%", "%%").replace("$", "$$")
    if text and not any(c in _SYSTEMD_QUOTE for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_program(key: str, path: str) -> str:
    """The first word of ``ExecStart=``: quoted when it holds a blank, ``%%`` only."""
    if any(c in path for c in "\"'\\"):
        raise ConfigError(
            f"{key} holds a quote or a backslash, which systemd does not accept in the "
            "program of ExecStart=; install mpsctl under another path"
        )
    text = path.replace("%", "%%")
    return f'"{text}"' if any(c in _SYSTEMD_QUOTE for c in text) else text


def systemd_env(key: str, value: str) -> str:
    """One ``Environment=`` line: a value may hold blanks, quotes and backslashes."""
    text = f"{key}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{text}"'


def systemd_path(key: str, path: str) -> str:
    """A path for a setting that takes it unquoted: only specifiers are escaped."""
    if path != path.strip():
        raise ConfigError(
            f"{key} begins or ends with a blank, which a systemd unit cannot hold; change it"
        )
    return path.replace("%", "%%")
