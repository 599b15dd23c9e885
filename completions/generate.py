"""Regenerate the shell completion scripts from click's own shell completion.

python completions/generate.py          # rewrite completions/mpsctl.{bash,zsh,fish}
python completions/generate.py --check  # exit 1 when a file is stale (the tests run this)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHELLS = ("bash", "zsh", "fish")


def generate(shell: str) -> str:
    env = {**os.environ, "_MPSCTL_COMPLETE": f"{shell}_source"}
    done = subprocess.run(
        [sys.executable, "-c", "from mpsctl.cli import main; main(prog_name='mpsctl')"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout


def main(argv: list[str]) -> int:
    stale = []
    for shell in SHELLS:
        path = HERE / f"mpsctl.{shell}"
        text = generate(shell)
        if "--check" in argv:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(stale)}; run: python completions/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
