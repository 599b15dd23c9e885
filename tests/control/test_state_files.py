"""State files are never written through a symbolic link nor opened on a FIFO, and a state
directory others can write to is refused before anything reads or writes in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.control.audit import append_record, fix_history_path
from mpsctl.control.lock import lock_path, service_lock
from mpsctl.errors import ServiceError
from mpsctl.storage import append_line, open_state_file


def make_home(home: Path) -> Path:
    home.mkdir(mode=0o700, exist_ok=True)
    return home


def test_lock_file_symlink_is_refused_and_its_target_untouched(
    isolated_home: Path, tmp_path: Path
) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    lock_path(make_home(isolated_home)).symlink_to(target)

    result = CliRunner().invoke(main, ["stop"])

    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"mpsctl: error: cannot open the lock file {isolated_home / 'mpsctl.lock'}: a symbolic "
        "link (mpsctl never writes through one) (check MPSCTL_HOME)"
    )
    assert target.read_text() == "precious\n"


def test_lock_file_fifo_is_refused_without_hanging(isolated_home: Path) -> None:
    os.mkfifo(lock_path(make_home(isolated_home)))
    with (
        pytest.raises(ServiceError, match="not a regular file \\(a FIFO\\)"),
        service_lock(isolated_home),
    ):
        pass


def test_history_and_audit_appends_through_a_symlink_are_refused(
    isolated_home: Path, tmp_path: Path
) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    audit = fix_history_path(make_home(isolated_home))
    audit.parent.mkdir(mode=0o700)
    audit.symlink_to(target)
    day = audit.parent / "probe-2026-01-01.jsonl"
    day.symlink_to(target)

    with pytest.raises(OSError, match="symbolic link"):
        append_record(audit, {"restarted": True})
    with pytest.raises(OSError, match="symbolic link"):
        append_line(day, "{}")
    assert target.read_text() == "precious\n"


def test_a_new_state_file_is_created_private_and_an_existing_one_reopened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new.jsonl"
    append_line(path, "a")
    append_line(path, "b")
    assert path.read_text() == "a\nb\n"
    assert path.stat().st_mode & 0o777 == 0o600
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OSError, match="symbolic link"):
        os.close(open_state_file(dangling, os.O_RDWR))
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o702])
def test_a_state_directory_writable_by_others_is_refused(isolated_home: Path, mode: int) -> None:
    make_home(isolated_home).chmod(mode)

    result = CliRunner().invoke(main, ["status"])

    assert result.exit_code == 4
    assert result.stderr == (
        f"mpsctl: error: state directory {isolated_home} is writable by others "
        f"(mode {mode:04o}): run chmod go-w {isolated_home}, or set MPSCTL_HOME to a "
        "private directory\n"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_a_state_directory_owned_by_another_user_is_refused(isolated_home: Path) -> None:
    os.chown(make_home(isolated_home), 65534, 65534)

    result = CliRunner().invoke(main, ["stop"])

    assert result.exit_code == 2
    assert "belongs to another user (uid 65534, you are uid 0)" in result.stderr
    assert "set MPSCTL_HOME to a directory of your own" in result.stderr
