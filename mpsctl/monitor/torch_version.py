"""Which torch the service will run, read without importing torch, and doctor's check on it.

The running service reports its version in its memory report; otherwise it comes from the
service venv's ``torch-*.dist-info/METADATA`` (or that venv's own interpreter reading it).
"""

from __future__ import annotations

import glob
import importlib.metadata
import re
from pathlib import Path

from mpsctl.probe import ProbeResult
from mpsctl.settings import Settings
from mpsctl.torch_env import Check

#: torch.mps.recommended_max_memory() appeared in torch 2.5
RECOMMENDED_MAX_SINCE = (2, 5)


def torch_version_in(venv: Path) -> str | None:
    """torch's version as the venv's interpreter sees it, without importing torch.

    First ``<venv>/lib/python*/site-packages/torch-*.dist-info/METADATA``; when that is not
    there, the venv's own python reads the metadata (``importlib.metadata``), which also finds
    a torch from the system site-packages (``venv --system-site-packages``), a ``.pth`` path
    or a Debian ``dist-packages``.
    """
    patterns = (
        "lib/python*/site-packages/torch-*.dist-info/METADATA",
        "Lib/site-packages/torch-*.dist-info/METADATA",
    )
    for pattern in patterns:
        for metadata in sorted(glob.glob(str(venv / pattern)), reverse=True):
            version = _metadata_version(Path(metadata))
            if version:
                return version
    return _version_from_interpreter(venv)


_ASK_VERSION = (
    "import importlib.metadata as m\n"
    "try:\n    print(m.version('torch'))\n"
    "except m.PackageNotFoundError:\n    pass\n"
)


def _version_from_interpreter(venv: Path) -> str | None:
    """torch's version from the venv's python (metadata only: about 50 ms), or None."""
    import subprocess

    for python in (venv / "bin" / "python", venv / "Scripts" / "python.exe"):
        if not python.is_file():
            continue
        try:
            done = subprocess.run(
                [str(python), "-I", "-c", _ASK_VERSION],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        version = done.stdout.strip()
        return version if done.returncode == 0 and re.fullmatch(r"\S{1,64}", version) else None
    return None


def _metadata_version(path: Path) -> str | None:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
                if not line.strip():
                    break  # the headers end at the first blank line
    except OSError:
        return None
    return None


def version_tuple(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def torch_checks(settings: Settings, result: ProbeResult) -> list[Check]:
    report = result.health.memory_report or {}
    version = report.get("torch_version") if isinstance(report.get("torch_version"), str) else None
    origin = "reported by the running service"
    if version is None and settings.service.venv is not None:
        version = torch_version_in(settings.service.venv)
        origin = f"in {settings.service.venv}"
    elif version is None and settings.reference_service:
        try:
            version = importlib.metadata.version("torch")  # METADATA only: torch is not imported
            origin = "in mpsctl's own environment (the reference service's)"
        except importlib.metadata.PackageNotFoundError:
            return [
                Check(
                    "torch.version",
                    "info",
                    "torch is not installed next to mpsctl: the reference service needs it",
                    "pip install 'mpsctl[serve]'",
                )
            ]
    if version is None:
        if settings.service.venv:
            message = f"torch is not installed in {settings.service.venv}"
            fix = "check service.venv points at the venv the service really runs in"
        else:
            message = "torch version unknown (service.venv unset)"
            fix = "set service.venv so doctor can read torch's METADATA"
        return [Check("torch.version", "info", message, fix)]
    parsed = version_tuple(version)
    if parsed is not None and parsed < RECOMMENDED_MAX_SINCE:
        off_mps = result.accelerator.device in ("cpu", "cuda")
        return [
            Check(
                "torch.version",
                "info" if off_mps else "warning",
                f"torch {version} {origin} lacks torch.mps.recommended_max_memory() (torch >= "
                "2.5): the service cannot report its MPS limit in bytes, only the ratio",
                "upgrade torch in the service's venv: pip install -U 'torch>=2.5'",
            )
        ]
    return [Check("torch.version", "ok", f"torch {version} {origin}")]
