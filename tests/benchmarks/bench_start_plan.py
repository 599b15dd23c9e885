"""What the memory plan adds to `mpsctl start`: start's code path with and without it.

    python tests/benchmarks/bench_start_plan.py [--runs 15]

Builds the tiny demo checkpoint in a temporary MPSCTL_HOME (torch needed, once), then runs
two child processes alternately: one imports start's module and loads the settings, the
other does the same and then computes start's plan notes (``start_notes``: the lazy imports
of mpsctl.plan, config.json, the safetensors header, the RAM). Prints the median and minimum
wall time of each, their difference, and the time of the ``start_notes`` call measured
inside the child (imports included, as start pays them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

PRELUDE = (
    "import mpsctl.control.start; from mpsctl.settings import load_settings; s = load_settings()"
)
WITHOUT = [sys.executable, "-c", PRELUDE]
WITH = [
    sys.executable,
    "-c",
    PRELUDE + "\nimport time; t = time.perf_counter()\n"
    "from mpsctl.plan.configured import start_notes\n"
    "notes = start_notes(s)\n"
    "print(time.perf_counter() - t)\n"
    "assert notes == ([], []), notes",
]


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MPSCTL_HOME": home}
        env.pop("MPSCTL_CONFIG", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: with bytecode
        demo = os.path.join(home, "demo-model")
        subprocess.run([sys.executable, "-m", "mpsctl", "demo-model", demo], env=env,
                       check=True, capture_output=True)  # fmt: skip
        for argv in (WITHOUT, WITH):  # warm the page cache and write the .pyc files
            run_once(argv, env)
        without, with_plan, inside = [], [], []
        for _ in range(args.runs):
            without.append(run_once(WITHOUT, env)[0])
            elapsed, printed = run_once(WITH, env)
            with_plan.append(elapsed)
            inside.append(float(printed))
    print(f"runs each:                          {args.runs}")
    for label, times in (("start's imports + settings", without), ("  + start_notes()", with_plan)):
        print(f"{label:<36}median {statistics.median(times) * 1000:6.1f} ms, "
              f"min {min(times) * 1000:6.1f} ms")  # fmt: skip
    extra = statistics.median(with_plan) - statistics.median(without)
    print(f"difference of the medians:          {extra * 1000:6.1f} ms")
    print(f"start_notes() inside the child:     median {statistics.median(inside) * 1000:6.1f} ms, "
          f"min {min(inside) * 1000:6.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
