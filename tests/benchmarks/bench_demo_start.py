"""The demo service's start -> healthy, cold and warm, against importing what it needs.

    python tests/benchmarks/bench_demo_start.py [--runs 5]

- cold: ``mpsctl start`` in a new MPSCTL_HOME (it builds the demo checkpoint offline first),
  as README's first command runs it; invocation to return, then stopped;
- warm: ``mpsctl start`` again in that home (the checkpoint exists, the page cache is warm):
  invocation to return, and the service's own start -> healthy (``startup_s`` of
  ``--json``);
- floor: ``python -c "import torch; from transformers import Qwen2ForCausalLM,
  AutoTokenizer"`` in the same venv: the libraries the demo cannot do without, imported.

Interleaved rounds, min / median; target: warm start -> healthy <= 1.3x the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = [sys.executable, "-c", "import torch; from transformers import Qwen2ForCausalLM, "
         "AutoTokenizer"]  # fmt: skip
_SCRIPT = Path(sys.executable).with_name("mpsctl")
MPSCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mpsctl"]
GOAL = 1.3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return time.perf_counter() - began, done.stdout


def ms(values: list[float]) -> str:
    return f"{min(values):6.2f} / {statistics.median(values):6.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {"floor": [], "cold": [], "warm": [], "warm_startup": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = {**os.environ, "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pyc")}
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        base.pop("MPSCTL_CONFIG", None)
        timed(FLOOR, base)  # bytecode and page cache for every row
        for i in range(args.runs):
            env = {**base, "MPSCTL_HOME": str(Path(tmp) / f"home{i}"),
                   "MPSCTL_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
            rows["floor"].append(timed(FLOOR, base)[0])
            rows["cold"].append(timed([*MPSCTL, "start"], env)[0])
            timed([*MPSCTL, "stop"], env)
            wall, out = timed([*MPSCTL, "start", "--json"], env)
            rows["warm"].append(wall)
            rows["warm_startup"].append(float(json.loads(out)["startup_s"]))
            timed([*MPSCTL, "stop"], env)
            print(f"  round {i + 1} done", file=sys.stderr)
    floor = statistics.median(rows["floor"])
    ratio = statistics.median(rows["warm_startup"]) / floor
    print(f"demo start, {args.runs} interleaved rounds (min / median); python "
          f"{sys.version.split()[0]}, {sys.platform}")  # fmt: skip
    print(f"  floor: import torch + Qwen2ForCausalLM, AutoTokenizer  {ms(rows['floor'])}")
    print(f"  cold `mpsctl start` (builds the demo model), wall      {ms(rows['cold'])}")
    print(f"  warm `mpsctl start`, wall                              {ms(rows['warm'])}")
    print(f"  warm start -> healthy (startup_s)                      {ms(rows['warm_startup'])}"
          f"   {ratio:.2f}x floor (goal <= {GOAL})")  # fmt: skip
    print("PASS" if ratio <= GOAL else "FAIL")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
