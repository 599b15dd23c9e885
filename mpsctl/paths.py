"""Where mpsctl keeps its state and looks for its configuration.

``MPSCTL_HOME`` moves all state (pidfile, logs, history, locks); the tests point it
at a temporary directory so no test touches a real home.
"""

from __future__ import annotations

import os
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
