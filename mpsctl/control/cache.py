"""clean-cache: Python bytecode caches under the workdir, and the service's own cache release.

Unlike ``find . -name __pycache__ -exec rm -rf``, this never follows
a symlink, never crosses into another file system (a bind mount inside the workdir can show
any directory of the host there), never leaves the workdir, skips virtualenvs unless asked,
and reports bytes.
Removing ``.pyc`` files frees disk, not memory: the accelerator part is the service's
``POST service.release_path`` (``gc.collect()`` + ``empty_cache()`` inside the process that
owns the memory; another process cannot do it).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpsctl.client import ServiceClient, read_token
from mpsctl.errors import ClientError, ServiceError
from mpsctl.observe import processes
from mpsctl.settings import Settings


@dataclass(frozen=True)
class PythonCacheResult:
    workdir: Path
    dry_run: bool
    dirs_removed: int
    files_removed: int
    freed_bytes: int
    skipped_venvs: tuple[Path, ...]
    errors: tuple[str, ...]
    #: directories and files on another file system (a mount or bind mount inside the workdir)
    skipped_mounts: tuple[Path, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "dry_run": self.dry_run,
            "dirs_removed": self.dirs_removed,
            "files_removed": self.files_removed,
            "freed_bytes": self.freed_bytes,
            "skipped_venvs": [str(p) for p in self.skipped_venvs],
            "skipped_mounts": [str(p) for p in self.skipped_mounts],
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class ReleaseFigures:
    """What the service's release endpoint and the process table say, before and after."""

    ok: bool
    error: str | None
    device: str | None
    reserved_before_bytes: int | None
    reserved_after_bytes: int | None
    allocated_before_bytes: int | None
    allocated_after_bytes: int | None
    rss_before_bytes: int | None
    rss_after_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error": self.error,
            "device": self.device,
            "reserved_before_bytes": self.reserved_before_bytes,
            "reserved_after_bytes": self.reserved_after_bytes,
            "allocated_before_bytes": self.allocated_before_bytes,
            "allocated_after_bytes": self.allocated_after_bytes,
            "rss_before_bytes": self.rss_before_bytes,
            "rss_after_bytes": self.rss_after_bytes,
        }


@dataclass(frozen=True)
class CleanCacheResult:
    python: PythonCacheResult
    service_running: bool
    release: ReleaseFigures | None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.clean-cache/1",
            "python": self.python.to_json(),
            "service_running": self.service_running,
            "release": self.release.to_json() if self.release else None,
        }


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").is_file()


MOUNTINFO = Path("/proc/self/mountinfo")


def mount_points(mountinfo: Path = MOUNTINFO) -> frozenset[str]:
    """Every mount point Linux lists for this process; empty elsewhere.

    Needed besides ``st_dev``: a bind mount of a directory of the same file system keeps its
    ``st_dev`` (and ``os.path.ismount`` says False), yet shows a directory from outside the
    workdir.
    """
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return frozenset()
    points = set()
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            # the kernel writes space, tab, newline and backslash as octal escapes
            points.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]))
    return frozenset(points)


def _tree_scan(path: Path, dev: int, mounts: frozenset[str]) -> tuple[int, int, Path | None]:
    """(files, bytes) of regular files under ``path``, symlinks neither followed nor counted,
    and the first entry found on another file system than ``dev`` or mounted (or None)."""
    files = size = 0
    for root, dirs, names in os.walk(path, followlinks=False):
        for name in (*dirs, *names):
            entry = os.path.join(root, name)
            try:
                info = os.lstat(entry)
            except OSError:
                continue
            if info.st_dev != dev or entry in mounts:
                return files, size, Path(entry)
            if stat.S_ISREG(info.st_mode):
                files += 1
                size += info.st_size
    return files, size, None


def clean_python_cache(
    workdir: Path, *, venv: Path | None = None, include_venv: bool = False, dry_run: bool = False
) -> PythonCacheResult:
    """Remove ``__pycache__`` directories and stray ``*.pyc`` files under ``workdir``."""
    root = workdir.resolve()
    if root == Path(root.anchor) or root == Path.home().resolve():
        raise ServiceError(f"refusing to clean Python caches under {root}: set service.workdir")
    if not root.is_dir():
        raise ServiceError(f"service.workdir {root} is not a directory")
    venv_dir = venv.resolve() if venv is not None else None
    root_dev = root.stat().st_dev
    mounted = mount_points()
    dirs = files = freed = 0
    skipped: list[Path] = []
    mounts: list[Path] = []
    errors: list[str] = []
    # os.walk does not descend into symlinked directories (followlinks=False), so the walk
    # cannot leave the workdir through a link; symlinks named __pycache__ or *.pyc are left
    # alone too. A mount point (bind mounts included) has another st_dev: never entered.
    for current, subdirs, names in os.walk(root, followlinks=False):
        here = Path(current)
        keep = []
        for name in subdirs:
            path = here / name
            try:
                info = path.lstat()
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror}")
                continue
            if stat.S_ISLNK(info.st_mode):
                continue
            if info.st_dev != root_dev or str(path) in mounted:
                mounts.append(path)
                continue
            if not include_venv and (path == venv_dir or _is_venv(path)):
                skipped.append(path)
                continue
            if name == "__pycache__":
                count, size, mount = _tree_scan(path, root_dev, mounted)
                if mount is not None:  # rmtree would delete what the mount shows
                    mounts.append(mount)
                    continue
                if not dry_run:
                    try:
                        shutil.rmtree(path)
                    except OSError as exc:
                        errors.append(f"{path}: {exc.strerror}")
                        continue
                dirs += 1
                files += count
                freed += size
                continue
            keep.append(name)
        subdirs[:] = keep
        for name in names:
            if not name.endswith(".pyc"):
                continue
            path = here / name
            try:
                info = path.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                if info.st_dev != root_dev or str(path) in mounted:  # a file mounted over it
                    mounts.append(path)
                    continue
                if not dry_run:
                    path.unlink()
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror}")
                continue
            files += 1
            freed += info.st_size
    return PythonCacheResult(
        root, dry_run, dirs, files, freed, tuple(skipped), tuple(errors), tuple(mounts)
    )


def _figure(body: Any, when: str, key: str) -> int | None:
    try:
        value = body[when][key]
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def release_service_memory(
    settings: Settings, snapshot: processes.ServiceSnapshot
) -> ReleaseFigures:
    """POST service.release_path; RSS of the whole tree from the process table around it."""
    rss_before = snapshot.total_rss_bytes
    client = ServiceClient(settings.service, token=read_token(settings.service), timeout=60.0)
    try:
        reply = client.release()
    except ClientError as exc:
        return ReleaseFigures(False, str(exc), None, None, None, None, None, rss_before, None)
    finally:
        client.close()
    after = processes.find_service(settings)
    rss_after = after.total_rss_bytes if after.running else None
    if reply.status != 200:
        error = f"{settings.service.release_path} answered HTTP {reply.status}"
        if reply.status in (404, 405):
            error = (f"the service has no release endpoint ({settings.service.release_path} "
                     f"answered HTTP {reply.status}; set service.release_path)")  # fmt: skip
        return ReleaseFigures(False, error, None, None, None, None, None, rss_before, rss_after)
    body = reply.body
    device = body.get("device") if isinstance(body, dict) else None
    return ReleaseFigures(
        True,
        None,
        device if isinstance(device, str) else None,
        _figure(body, "before", "reserved_bytes"),
        _figure(body, "after", "reserved_bytes"),
        _figure(body, "before", "allocated_bytes"),
        _figure(body, "after", "allocated_bytes"),
        rss_before,
        rss_after,
    )


def clean_cache(
    settings: Settings, *, include_venv: bool = False, dry_run: bool = False
) -> CleanCacheResult:
    """Python caches always; the service's accelerator cache too when it is up."""
    python = clean_python_cache(
        settings.service.workdir,
        venv=settings.service.venv,
        include_venv=include_venv,
        dry_run=dry_run,
    )
    snapshot = processes.find_service(settings)
    release = None
    if snapshot.running and not dry_run:
        release = release_service_memory(settings, snapshot)
    return CleanCacheResult(python, snapshot.running, release)
