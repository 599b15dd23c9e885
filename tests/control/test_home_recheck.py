"""MPSCTL_HOME is checked when the settings are read, but created only when something is
first written there: a directory someone else made in between (the parent is ``/tmp``,
writable by all) must be refused then too, never quietly used."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpsctl.control.lock import service_lock
from mpsctl.errors import ServiceError
from mpsctl.settings import load_settings


def test_a_home_made_writable_by_others_after_the_settings_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "shared" / "mpsctl-home"
    monkeypatch.setenv("MPSCTL_HOME", str(home))
    settings = load_settings()  # the directory does not exist yet: nothing to refuse
    home.mkdir(parents=True)  # another user's process, between the check and the write
    home.chmod(0o777)

    with (
        pytest.raises(ServiceError, match="writable by others") as refused,
        service_lock(settings.home),
    ):
        pass

    assert "chmod go-w" in str(refused.value)
    assert list(home.iterdir()) == []  # no lock file written in their directory
