"""The system's default locale: what the service gets as LANG / LC_* when the settings do not
say, the same whether ``start`` runs from a shell or from cron (which sets no LANG at all).

Read from the files the OS's own login path reads: ``/etc/default/locale`` (Debian, Ubuntu),
``/etc/locale.conf`` (systemd distributions), and on macOS ``AppleLocale`` in the global
preferences. None of them: ``C.UTF-8``, so Python, the tokenizer and the service's log read
and write UTF-8 rather than ASCII.
"""

from __future__ import annotations

import io
import plistlib
from collections.abc import Sequence
from pathlib import Path

FALLBACK = "C.UTF-8"
LOCALE_FILES = (Path("/etc/default/locale"), Path("/etc/locale.conf"))
MACOS_PREFERENCES = Path("Library/Preferences/.GlobalPreferences.plist")


def _is_locale_name(name: str) -> bool:
    return name in {"LANG", "LANGUAGE"} or name.startswith("LC_")


def read_locale_file(text: str) -> dict[str, str]:
    """``LANG=en_US.UTF-8`` lines (shell syntax, quotes and comments) -> the locale names."""
    from dotenv import dotenv_values

    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {k: v for k, v in values.items() if _is_locale_name(k) and v}


def macos_locale(home: Path | None) -> str | None:
    """``en_US`` from AppleLocale -> ``en_US.UTF-8``; None when there is none."""
    if home is None:
        return None
    try:
        with (home / MACOS_PREFERENCES).open("rb") as handle:
            prefs = plistlib.load(handle)
    except (OSError, plistlib.InvalidFileException, ValueError):
        return None
    value = prefs.get("AppleLocale") if isinstance(prefs, dict) else None
    if not isinstance(value, str) or not value:
        return None
    return value.split("@", 1)[0] + ".UTF-8"


def system_locale(files: Sequence[Path] = LOCALE_FILES, home: Path | None = None) -> dict[str, str]:
    """LANG (and any LC_* the system sets) of the system default; LANG always set."""
    found: dict[str, str] = {}
    for path in files:
        try:
            found = read_locale_file(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if found:
            break
    if "LANG" not in found:
        found["LANG"] = macos_locale(home) or FALLBACK
    return found
