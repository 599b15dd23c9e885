"""The environment ``mpsctl start`` gives the service: a documented base, ``[service]
env_file`` and ``env``, then the PyTorch variables of ``[memory]``.

This is where settings meet PyTorch's variables; ``torch_env`` (below it) knows how PyTorch
reads them and imports no settings.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

from mpsctl.errors import ConfigError
from mpsctl.settings import Settings
from mpsctl.torch_env import FALLBACK_ENV, MPS_ENV_PREFIX, TORCH_KEYS, Check, masked, torch_env

#: what the service inherits from mpsctl's own environment: the same few variables whether
#: start runs from a shell or from cron (``env -i``), so a cron restart is not a different
#: service; everything else comes from ``[service] env`` and ``env_file``
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR")
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
        text = path.read_text(encoding="utf-8")
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
    venv's bin/ first), HOME, USER, LOGNAME, LANG, LC_*, TZ, TMPDIR; then ``env_file``,
    then ``[service] env``, then the PYTORCH_* variables of [memory].
    """
    source = dict(os.environ if base is None else base)
    env = {k: v for k, v in source.items() if k in BASE_ENV or k.startswith("LC_")}
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
