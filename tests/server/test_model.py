"""ModelHolder's pieces that need no HTTP: OOM recognition, traceback clearing, devices."""

from __future__ import annotations

import weakref
from typing import Any

import pytest

from mpsctl.errors import ConfigError
from mpsctl.server.model import choose_device, forget_frames, is_out_of_memory
from tests.conftest import read_fixture


def mps_message(fixture: str) -> str:
    """PyTorch's MPS message from a recorded traceback (its last line), without the type."""
    last = read_fixture(fixture).strip().splitlines()[-1]
    return last.removeprefix("RuntimeError: ")


@pytest.mark.parametrize(
    "fixture",
    ["torch-mps-oom-6-gib.txt", "torch-mps-oom-11-traceback.txt", "torch-mps-oom-1.txt"],
)
def test_mps_out_of_memory_is_a_plain_runtime_error_recognised_by_its_text(fixture: str) -> None:
    assert is_out_of_memory(RuntimeError(mps_message(fixture)))


def test_cuda_out_of_memory_is_recognised_by_its_real_types() -> None:
    import torch

    message = read_fixture("torch-cuda-oom-new-2-torch-OutOfMemoryError.txt")

    assert is_out_of_memory(torch.cuda.OutOfMemoryError(message))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert issubclass(torch.cuda.OutOfMemoryError, RuntimeError)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("Expected all tensors to be on the same device"),
        RuntimeError("error: MPS backend out of memory"),  # not PyTorch's message
        ValueError("MPS backend out of memory (MPS allocated: 1 GiB)"),  # not a RuntimeError
        MemoryError(),
    ],
)
def test_other_errors_are_not_out_of_memory(error: BaseException) -> None:
    assert not is_out_of_memory(error)


def test_forget_frames_drops_the_tensors_a_traceback_pins() -> None:
    import torch

    refs: list[weakref.ref[Any]] = []

    def forward() -> None:
        activations = torch.ones(64, 64)
        refs.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory.")

    try:
        forward()
    except RuntimeError as exc:
        kept = exc  # held elsewhere, as a log record or a retry helper would
    assert refs[0]() is not None  # pinned through kept.__traceback__

    forget_frames(kept)

    assert refs[0]() is None


def test_explicit_devices_must_exist() -> None:
    assert choose_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        choose_device("tpu")
