"""clean-cache: bytecode only, inside the workdir, venvs skipped, symlinks never followed."""

from __future__ import annotations

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
    assert (result.dirs_removed, result.files_removed, result.bytes_freed) == (1, 2, 110)
    assert (root / "app" / "__pycache__").exists()


def test_clean_stays_inside_and_skips_venvs(tmp_path: Path) -> None:
    root, outside = tmp_path / "work", tmp_path / "outside"
    make_tree(root, outside)

    result = cache.clean_python_cache(root, venv=root / "venv")

    assert result.bytes_freed == 110
    assert not (root / "app" / "__pycache__").exists()
    assert not (root / "app" / "old.pyc").exists()
    assert (root / "app" / "main.py").exists()
    assert (root / "app" / "link.pyc").is_symlink()
    assert (outside / "__pycache__" / "keep.pyc").exists()
    assert (root / "venv" / "lib" / "__pycache__" / "x.pyc").exists()
    assert result.skipped_venvs == (root / "venv",)
    assert cache.clean_python_cache(root, include_venv=True).bytes_freed == 1000


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
