"""Both ceilings, and the limits of real out-of-memory messages reproduced from their
machines' figures.

The real-message table: every MPS or CUDA out-of-memory message in tests/fixtures whose
poster stated the machine (RAM, a discrete GPU, the GPU's capacity), planned with those
figures and PyTorch's default ratio, gives the message's ``max allowed`` within 1 %.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.plan.workingset import READINGS, chip_key
from tests.conftest import read_fixture

GIB = 2**30


def plan_json(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(main, ["plan", *args, "--json"])
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, json.loads(result.stdout)


def test_7b_on_16gb_at_pytorchs_ratio_does_not_fit_because_ram_binds() -> None:
    code, doc = plan_json("--preset", "qwen2.5-7b", "--ram", "16GiB", "--high", "1.7",
                          "--max-concurrent", "30")  # fmt: skip
    assert code == 1
    assert doc["fits"] is False
    ceilings = doc["ceilings"]
    assert ceilings["binding"] == "ram"
    # 1.7 x 2/3 x 16 GiB, less 10 %: 16.3 GiB usable, above the 12 GiB RAM ceiling
    assert ceilings["allocator"]["usable_bytes"] > 16 * GIB
    assert ceilings["ram"]["bytes"] == 12 * GIB
    assert doc["total_bytes"] > ceilings["ram"]["bytes"]
    assert doc["max_concurrent_that_fits"] == 0
    assert all(row["refused_by"] == "ram" for row in doc["rows"])


def test_max_concurrent_that_fits_respects_the_lower_ceiling() -> None:
    _, doc = plan_json("--preset", "qwen2.5-3b", "--ram", "16GiB", "--high", "1.7")
    fixed = doc["weights_bytes"] + doc["overhead_bytes"]
    by_ram = (doc["ceilings"]["ram"]["bytes"] - fixed) // doc["per_query_counted_bytes"]
    by_allocator = (doc["usable_bytes"] - fixed) // doc["per_query_counted_bytes"]
    assert by_ram < by_allocator
    assert doc["max_concurrent_that_fits"] == by_ram
    assert doc["ceilings"]["binding"] == "ram"


def test_72b_on_an_80gib_gpu_is_planned_without_a_service() -> None:
    code, doc = plan_json("--preset", "qwen2.5-72b", "--device", "cuda", "--gpu-memory", "80GiB")
    assert doc["limit_bytes"] == 80 * GIB
    assert doc["dtype"] == "bfloat16"
    assert doc["inputs"]["gpu_memory"]["source"].startswith("--gpu-memory")
    # 72.7 billion parameters in bfloat16 are 145 GB: more than the GPU
    assert (code, doc["fits"], doc["ceilings"]["binding"]) == (1, False, "allocator")
    assert doc["ceilings"]["ram"]["counts_the_model"] is False


def test_cuda_without_a_size_or_a_service_asks_for_one() -> None:
    result = CliRunner().invoke(main, ["plan", "--preset", "qwen2.5-0.5b", "--device", "cuda",
                                       "--ram", "16GiB"])  # fmt: skip
    assert result.exit_code == 2
    assert "give --gpu-memory SIZE" in result.stderr


def test_every_input_names_its_source(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config("[serve]\nmax_new_tokens = 64\n")
    _, doc = plan_json("--preset", "qwen2.5-0.5b", "--ram", "16GiB", "--dtype", "float32")
    sources = {name: item["source"] for name, item in doc["inputs"].items()}
    assert sources["dtype"] == "flag --dtype"
    assert sources["max_new_tokens"].startswith("file ")
    assert sources["max_concurrent"] == "mpsctl's default"
    assert sources["prompt_tokens"].startswith("mpsctl's default")
    assert sources["ram"] == "--ram"
    assert sources["working_set"].startswith("estimate: 2/3 of RAM")
    # mpsctl's own ratio, and what PyTorch's default would allow on this Mac: the figure
    # real 16 GB out-of-memory messages print
    assert sources["high_watermark_ratio"] == (
        "mpsctl's default [memory] high_watermark_ratio 1 (PyTorch's default would be 1.7: "
        "max allowed 18.13 GB on this Mac)"
    )
    assert "max allowed: 18.13 GB" in read_fixture("planning-mps-oom-with-ram.txt")


def test_a_known_working_set_and_a_named_chip_replace_the_rule() -> None:
    _, doc = plan_json("--preset", "qwen2.5-3b", "--ram", "48GiB", "--working-set", "37.44GiB")
    assert doc["recommended_max_bytes"] == int(37.44 * GIB)
    assert doc["recommended_max_source"] == "--working-set"
    _, doc = plan_json("--preset", "qwen2.5-3b", "--ram", "16GiB", "--chip", "M3")
    assert doc["recommended_max_bytes"] == round(11.84 * GIB)
    assert "llmfit/pull/754" in doc["recommended_max_source"]
    _, doc = plan_json("--preset", "qwen2.5-3b", "--ram", "24GiB", "--chip", "m3")
    assert doc["recommended_max_bytes"] == 16 * GIB
    assert "no published reading for m3 with 24 GiB" in doc["recommended_max_source"]


def test_every_published_reading_is_the_fixtures_row() -> None:
    rows = [ln.split("\t") for ln in read_fixture("planning-recommended-working-set.tsv")
            .splitlines()[1:]]  # fmt: skip
    for reading in READINGS:
        matches = [r for r in rows if r[5] == reading.source]
        assert matches, reading
        chip, ram, printed = matches[0][:3]
        assert chip_key(re.sub(r"\(.*\)", "", chip)) == reading.chip
        assert int(ram) == reading.ram_gib
        number = re.search(r"([\d.,]+) (?:MiB|MB|GiB|GB)", printed)
        assert number is not None
        assert number.group(1) in reading.printed, (reading, printed)


def messages() -> list[tuple[str, str]]:
    """(message, source line) pairs of the planning fixture."""
    lines = read_fixture("planning-mps-oom-with-ram.txt").splitlines()
    return [(lines[i - 1], line) for i, line in enumerate(lines) if line.startswith("# source:")]


#: (the source's URL, the plan's flags for the machine its poster stated)
REAL_MESSAGES = [
    ("haoheliu/AudioLDM2/issues/20", ["--ram", "16GiB"]),
    ("lllyasviel/Fooocus/issues/980", ["--ram", "8GiB"]),
    ("pytorch/pytorch/issues/105839", ["--ram", "8GiB"]),
    ("pinokiocomputer/pinokio/issues/941", ["--ram", "16GiB"]),
    ("BoBo0037/bobo-fun/issues/8", ["--ram", "64GiB"]),
    # an Intel MacBook Pro: 32 GB of RAM, a 4 GB Radeon Pro Vega 20 with its own memory
    ("run-llama/llama_index/issues/8743", ["--ram", "32GiB", "--discrete-gpu", "4GiB"]),
    ("Comfy-Org/ComfyUI/issues/9308", ["--ram", "128GiB", "--chip", "m3-max"]),
]


def test_the_table_covers_every_message_that_states_its_machine() -> None:
    stated = [src for _, src in messages() if re.search(r"RAM: \d", src)]
    assert len(stated) == len(REAL_MESSAGES)
    for (url, _), source in zip(REAL_MESSAGES, stated, strict=True):
        assert url in source


@pytest.mark.parametrize(("url", "flags"), REAL_MESSAGES)
def test_real_mps_message_limit_is_reproduced_within_1_percent(url: str, flags: list[str]) -> None:
    message = next(msg for msg, src in messages() if url in src)
    found = re.search(r"max allowed: ([\d.]+) (GB|GiB)", message)
    assert found is not None
    # PyTorch prints GiB under a "GB" label (its format_size divides by 1024**3)
    printed = float(found.group(1)) * GIB
    # the posters ran PyTorch with its default ratio, 1.7
    _, doc = plan_json("--preset", "qwen2.5-0.5b", "--device", "mps", "--high", "1.7", *flags)
    assert doc["high_watermark_ratio"] == 1.7
    assert doc["limit_bytes"] == pytest.approx(printed, rel=0.01), url


def test_real_cuda_message_capacity_is_the_plans_limit() -> None:
    """CUDA states the GPU's size in the message: a process with the whole device (no
    per-process fraction) ran out with 23.60 of 23.65 GiB in use; --gpu-memory with the
    printed capacity gives that limit."""
    text = read_fixture("torch-cuda-oom-new-1.txt")
    capacity = re.search(r"total capacity of ([\d.]+) GiB", text)
    in_use = re.search(r"this process has ([\d.]+) GiB memory in use", text)
    assert capacity is not None
    assert in_use is not None
    _, doc = plan_json("--preset", "qwen2.5-0.5b", "--device", "cuda", "--ram", "64GiB",
                       "--gpu-memory", f"{capacity.group(1)}GiB")  # fmt: skip
    assert doc["limit_bytes"] == pytest.approx(float(in_use.group(1)) * GIB, rel=0.01)
