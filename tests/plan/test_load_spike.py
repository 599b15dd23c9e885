"""The load spike against a real process's RSS: the 0.5b demo's bfloat16 checkpoint loaded
with ``from_pretrained`` by a child process that imports torch and transformers first.

Measured: the process's peak RSS (``ru_maxrss``) less its RSS before the load. The plan's
figure for the same growth is the model in the target dtype plus, when loading converts
the dtype, the checkpoint's own bytes (the source pages stay resident while the converted
copy is built). Loading in the stored dtype maps the file and copies nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpsctl.plan.arch import read_model_dir
from mpsctl.plan.memory import compute_figures

LOAD = """
import json, os, resource, sys
import torch
from transformers import AutoModelForCausalLM

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

before = rss()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"before": before, "peak": peak,
                  "weights": sum(p.nbytes for p in model.parameters())}))
"""


def measured_load(model_dir: Path, dtype: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", LOAD, str(model_dir), dtype],
                          capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_converting_load_peaks_at_both_copies_within_10_percent(
    demo_05b: Path, dtype: str
) -> None:
    arch = read_model_dir(demo_05b)
    figures = compute_figures(arch, dtype, prompt_tokens=16, max_new_tokens=16, device="cpu")
    assert figures.converts  # the demo's checkpoint is bfloat16
    real = measured_load(demo_05b, dtype)
    assert figures.weights_bytes == real["weights"]
    growth = real["peak"] - real["before"]
    predicted = figures.weights_bytes + figures.load_spike_bytes
    assert predicted == pytest.approx(growth, rel=0.10), (predicted, growth)
    # without the spike the plan would be a third (float32) or a half (float16) short
    assert figures.weights_bytes < 0.75 * growth


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
def test_a_load_in_the_stored_dtype_has_no_spike(demo_05b: Path) -> None:
    figures = compute_figures(read_model_dir(demo_05b), "bfloat16", prompt_tokens=16,
                              max_new_tokens=16, device="cpu")  # fmt: skip
    assert (figures.converts, figures.load_spike_bytes) == (False, 0)
    real = measured_load(demo_05b, "bfloat16")
    # No second copy: the growth is the mapped checkpoint's pages as far as loading touched
    # them (from a few % to most of the weights, by how warm the page cache is) plus Python's
    # objects, never the two copies (2x the weights) of a converting load.
    assert real["peak"] - real["before"] < 1.5 * figures.weights_bytes
