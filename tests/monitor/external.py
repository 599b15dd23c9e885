"""External tools some tests run (promtool, systemd-analyze).

Locally a missing tool skips the test; in CI (``CI=true``, where ``.ci/run`` installs
them) it fails, so a broken install can never turn the check green by skipping it.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (Debian package {package!r}; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
