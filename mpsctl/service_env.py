"""The environment ``mpsctl start`` gives the service: a documented base, ``[service]
env_file`` and ``env``, then the PyTorch variables of ``[memory]``.

This is where settings meet PyTorch's variables; ``torch_env`` (below it) knows how PyTorch
reads them and imports no settings.
"""

from __future__ import annotations

import io
import os
import plistlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from mpsctl.errors import ConfigError
from mpsctl.settings import Settings
from mpsctl.storage import read_regular
from mpsctl.torch_env import FALLBACK_ENV, MPS_ENV_PREFIX, TORCH_KEYS, Check, masked, torch_env

#: what the service inherits from mpsctl's own environment: the same few variables whether
#: start runs from a shell or from cron (``env -i``), so a cron restart is not a different
#: service; everything else comes from ``[service] env`` and ``env_file``
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "TZ", "TMPDIR")
#: the reference service is mpsctl itself: it reads these to find its home, token and code
REFERENCE_ENV_PREFIXES = ("MPSCTL_", "PYTHONPATH")


def env_file_values(settings: Settings) -> dict[str, str]:
    """``[service] env_file`` read as a dotenv file (``KEY=value``, quotes, comments).

    ConfigError when it is missing, unreadable or sets a variable [memory] owns.
    """
    path = settings.service.env_file
    if path is None:
        return {}
    from dotenv import dotenv_values  # only for services that use an env file

    try:
        # a regular file of at most a few MiB: a FIFO would hang `config show` and `start`,
        # /dev/zero would fill memory
        text = read_regular(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"service.env_file {path}: cannot read: {why}") from None
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    env: dict[str, str] = {}
    for name, value in values.items():
        if name.startswith(MPS_ENV_PREFIX) or name == FALLBACK_ENV:
            raise ConfigError(
                f"service.env_file {path}: {name} is set from [memory] (validated the way "
                "PyTorch reads it); set the [memory] key instead"
            )
        env[name] = value or ""
    return env


def service_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ``mpsctl start`` gives the service.

    A documented base taken from ``base`` (default: this process's environment): PATH (the
    venv's bin/ first), HOME, USER, LOGNAME, TZ, TMPDIR; the system's default locale (LANG,
    LC_*: never the caller's, so cron and a shell give the same); then ``env_file``, then
    ``[service] env`` (where LANG / LC_* can be set), then the PYTORCH_* variables of [memory].
    """
    source = dict(os.environ if base is None else base)
    env = {k: v for k, v in source.items() if k in BASE_ENV}
    home = source.get("HOME")
    env.update(system_locale(home=Path(home) if home else None))
    if settings.reference_service:
        env.update({k: v for k, v in source.items() if k.startswith(REFERENCE_ENV_PREFIXES)})
    env.update(env_file_values(settings))
    env.update(settings.service.env)
    for key in TORCH_KEYS:
        env.pop(key, None)
    env.update(torch_env(settings.memory))
    venv = settings.service.venv
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", os.defpath)
    return env


def shown_service_env(settings: Settings) -> tuple[dict[str, str], str | None]:
    """What ``start`` would give the service, for ``config show``: values of names that look
    like secrets masked; and why it cannot be built (an unreadable env_file), or None."""
    try:
        env = service_env(settings)
    except ConfigError as exc:
        return {}, str(exc)
    return masked(env), None


def inherited_env_checks(settings: Settings, environ: Mapping[str, str]) -> list[Check]:
    """Ratios in mpsctl's own environment that ``start`` will not pass on."""
    wanted = torch_env(settings.memory)
    return [
        Check(
            "start.env_ignored",
            "warning",
            f"ignoring {key}={environ[key]!r} from the environment: the service gets "
            f"{wanted.get(key, 'unset')!r} from mpsctl's settings",
        )
        for key in TORCH_KEYS
        if key in environ and wanted.get(key) != environ[key]
    ]


# --------------------------------------------------------------------------- locale
# The system's default locale: what the service gets as LANG / LC_* when the settings do not
# say, the same whether ``start`` runs from a shell or from cron (which sets no LANG at all).
# Read from the files the OS's own login path reads: /etc/default/locale (Debian, Ubuntu),
# /etc/locale.conf (systemd distributions), and on macOS AppleLocale in the global
# preferences. None of them: C.UTF-8, so Python, the tokenizer and the service's log read and
# write UTF-8 rather than ASCII.
#: the locale when the system names none
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
