"""A service started with its credential on the command line (``vllm serve --api-key KEY``,
``--token=KEY``) has that command line shown by ``probe`` and kept in the probe history
and the JSON documents: the credential is masked there like everywhere else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

SECRETS = ("s3cret-key-one", "s3cret-key-two")


@pytest.mark.parametrize("args", [["--json", "--record"], []])
def test_probe_masks_a_credential_in_the_service_command_line(
    write_config,
    tmp_path: Path,
    args: list[str],  # type: ignore[no-untyped-def]
) -> None:
    port = free_port()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "uvicorn",
                                "app:app", "--api-key", SECRETS[0], f"--token={SECRETS[1]}",
                                "--port", str(port)])  # fmt: skip
    try:
        write_config(
            # its argv names the service's port: the service, still loading (not listening)
            f'[service]\ncommand = ["uvicorn", "app:app"]\nurl = "http://127.0.0.1:{port}"\n'
            f'match = "uvicorn app:app .*--port {port}$"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "mpsctl", "probe", "--timeout", "1", *args],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**os.environ, "COLUMNS": "400"},
        )  # fmt: skip
    finally:
        sleeper.kill()
        sleeper.wait()

    assert "--api-key ****" in done.stdout or '"****"' in done.stdout, done.stdout[-2000:]
    written = "".join(
        p.read_text(errors="replace") for p in Path(os.environ["MPSCTL_HOME"]).rglob("*")
        if p.is_file()
    )  # fmt: skip
    for secret in SECRETS:
        assert secret not in done.stdout + done.stderr + written
