"""clean-cache: bytecode only, inside the workdir, venvs skipped, symlinks never followed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mpsctl.control import cache
from mpsctl.control.start import start_service
from mpsctl.control.stop import stop_service
from mpsctl.errors import ServiceError
from tests.control.fakes import FakeService, fake_service

__all__ = ["fake_service"]  # a fixture


def make_tree(root: Path, outside: Path) -> None:
    (root / "app" / "__pycache__").mkdir(parents=True)
    (root / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"x" * 100)
    (root / "app" / "old.pyc").write_bytes(b"y" * 10)
    (root / "app" / "main.py").write_text("print('keep me')\n")
    (root / "venv" / "lib" / "__pycache__").mkdir(parents=True)
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (root / "venv" / "lib" / "__pycache__" / "x.pyc").write_bytes(b"z" * 1000)
    (outside / "__pycache__").mkdir(parents=True)
    (outside / "__pycache__" / "keep.pyc").write_bytes(b"o" * 5)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "app" / "link.pyc").symlink_to(outside / "__pycache__" / "keep.pyc")


def test_dry_run_counts_and_removes_nothing(tmp_path: Path) -> None:
    root, outside = tmp_path / "work", tmp_path / "outside"
    make_tree(root, outside)
    result = cache.clean_python_cache(root, dry_run=True)
    assert (result.dirs_removed, result.files_removed, result.freed_bytes) == (1, 2, 110)
    assert (root / "app" / "__pycache__").exists()


def test_clean_stays_inside_and_skips_venvs(tmp_path: Path) -> None:
    root, outside = tmp_path / "work", tmp_path / "outside"
    make_tree(root, outside)

    result = cache.clean_python_cache(root, venv=root / "venv")

    assert result.freed_bytes == 110
    assert not (root / "app" / "__pycache__").exists()
    assert not (root / "app" / "old.pyc").exists()
    assert (root / "app" / "main.py").exists()
    assert (root / "app" / "link.pyc").is_symlink()
    assert (outside / "__pycache__" / "keep.pyc").exists()
    assert (root / "venv" / "lib" / "__pycache__" / "x.pyc").exists()
    assert result.skipped_venvs == (root / "venv",)
    assert cache.clean_python_cache(root, include_venv=True).freed_bytes == 1000


def test_refuses_the_filesystem_root() -> None:
    with pytest.raises(ServiceError, match="refusing"):
        cache.clean_python_cache(Path("/"))


def test_release_when_the_service_is_up(fake_service: Callable[..., FakeService]) -> None:
    settings = fake_service().settings()
    down = cache.clean_cache(settings)
    assert (down.service_running, down.release) == (False, None)
    start_service(settings)
    try:
        up = cache.clean_cache(settings)
    finally:
        stop_service(settings)
    assert up.service_running
    assert up.release is not None
    assert up.release.ok
    assert up.release.rss_before_bytes
    assert up.release.rss_after_bytes


def _mount(*args: str) -> Callable[[], None]:
    """Run ``mount ARGS``; return the matching unmount. Needs root (CI runs as root here)."""
    target = args[-1]
    subprocess.run(["mount", *args], check=True, capture_output=True)
    return lambda: subprocess.run(["umount", target], check=True, capture_output=True)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting needs root"
)


@needs_root
@pytest.mark.parametrize("where", ["dir", "pycache"])
def test_a_bind_mount_inside_the_workdir_is_never_entered(tmp_path: Path, where: str) -> None:
    """#13 item 6: a bind mount of a directory of the *same* file system (same st_dev, which
    os.path.ismount misses) inside the workdir: nothing outside the workdir is deleted."""
    root, outside = tmp_path / "work", tmp_path / "outside"
    make_tree(root, outside)
    (outside / "stray.pyc").write_bytes(b"s" * 7)
    target = root / "app" / "mnt" if where == "dir" else root / "app" / "__pycache__" / "mnt"
    target.mkdir()
    assert os.stat(outside).st_dev == os.stat(root).st_dev
    unmount = _mount("--bind", str(outside), str(target))
    try:
        result = cache.clean_python_cache(root)
        assert (outside / "stray.pyc").read_bytes() == b"s" * 7
        assert (outside / "__pycache__" / "keep.pyc").exists()
        assert target in result.skipped_mounts
        assert str(target) in result.to_json()["skipped_mounts"]
    finally:
        unmount()


@needs_root
def test_a_tmpfs_inside_the_workdir_is_never_entered(tmp_path: Path) -> None:
    """#13 item 6: another file system (a tmpfs: another st_dev) mounted inside the workdir."""
    root = tmp_path / "work"
    (root / "app").mkdir(parents=True)
    (root / "app" / "own.pyc").write_bytes(b"o")
    target = root / "app" / "shm"
    target.mkdir()
    unmount = _mount("-t", "tmpfs", "none", str(target))
    try:
        (target / "__pycache__").mkdir()
        (target / "__pycache__" / "x.pyc").write_bytes(b"x" * 3)
        (target / "y.pyc").write_bytes(b"y")
        assert os.stat(target).st_dev != os.stat(root).st_dev
        result = cache.clean_python_cache(root)
        assert (target / "__pycache__" / "x.pyc").exists()
        assert (target / "y.pyc").exists()
        assert not (root / "app" / "own.pyc").exists()
        assert result.skipped_mounts == (target,)
        assert result.freed_bytes == 1
    finally:
        unmount()


def test_mount_points_reads_this_process_mount_table() -> None:
    """#13 item 6: the mount table is read (octal escapes decoded); absent, it is empty."""
    points = cache.mount_points()
    if Path("/proc/self/mountinfo").exists():
        assert "/" in points
    assert cache.mount_points(Path("/nonexistent/mountinfo")) == frozenset()
