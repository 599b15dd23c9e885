"""Where mpsctl keeps its state and looks for its configuration.

``MPSCTL_HOME`` moves all state (pidfile, logs, history, locks); the tests point it
at a temporary directory so no test touches a real home.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

CONFIG_NAME = "mpsctl.toml"
#: where the reference service builds its demo checkpoint (`mpsctl serve --demo`), under the home
DEMO_DIR_NAME = "demo-model"
#: the service's last healthy memory report, saved by ``start`` under MPSCTL_HOME: the MPS
#: limit and the memory plan read it when the service is not answering
LAST_HEALTH = "last_health.json"


def home_dir(environ: dict[str, str] | None = None) -> Path:
    """The state directory (not created here: readers must not write)."""
    env = os.environ if environ is None else environ
    if env.get("MPSCTL_HOME"):
        return Path(env["MPSCTL_HOME"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "mpsctl"
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "mpsctl"


def user_config_file(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "mpsctl" / CONFIG_NAME


def ensure_home(environ: dict[str, str] | None = None) -> Path:
    """Create the state directory (private: it holds tokens and pidfiles) and return it."""
    path = home_dir(environ)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def home_problem(path: Path) -> str | None:
    """Why the state directory ``path`` is unsafe to use, with the fix; None when it is safe
    or does not exist yet (it is then created private).

    Like ssh's StrictModes: whoever can write in it can replace the pidfile (and have ``stop``
    signal any process) or plant links, so it must belong to this user (or root) and be
    writable by no one else.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"state directory {path}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"state directory {path} is not a directory: set MPSCTL_HOME to a directory"
    euid = os.geteuid()
    if info.st_uid not in (euid, 0):
        return (
            f"state directory {path} belongs to another user (uid {info.st_uid}, you are "
            f"uid {euid}): set MPSCTL_HOME to a directory of your own"
        )
    if info.st_mode & 0o022:
        mode = stat.S_IMODE(info.st_mode)
        return (
            f"state directory {path} is writable by others (mode {mode:04o}): "
            f"run chmod go-w {path}, or set MPSCTL_HOME to a private directory"
        )
    return None
