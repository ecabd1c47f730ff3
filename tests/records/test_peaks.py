"""The peak FLOP/s behind MFU: Lightning's ``get_available_flops`` first for a CUDA device, our table next.

No GPU here: the device's name and compute capability are what torch would report on one (the only part
faked); ``tests/records/test_recorder.py::test_mfu_on_a_gpu_uses_the_peak_table`` runs on a real GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from itwinai_lightning.records import peaks

CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu_named(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def name_it(name: str, capability: tuple[int, int] = (9, 0)) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    yield name_it
    torch.set_float32_matmul_precision("highest")


def test_lightning_answers_for_the_nvidia_gpus_it_knows(gpu_named) -> None:  # type: ignore[no-untyped-def]
    gpu_named("NVIDIA H100 80GB HBM3")
    assert peaks.device_peak_flops_per_s(CUDA, "bf16-mixed") == 989.4e12  # Lightning's (our table: 989e12)
    assert peaks.device_peak_flops_per_s(CUDA, "32-true") == 66.9e12
    torch.set_float32_matmul_precision("high")  # TF32 matmuls: Lightning's TF32 figure
    assert peaks.device_peak_flops_per_s(CUDA, "32-true") == 494.7e12
    gpu_named("NVIDIA GeForce RTX 4090", (8, 9))  # a GPU only Lightning's table has
    assert peaks.device_peak_flops_per_s(CUDA, "bf16-mixed") == 82.6e12


def test_our_table_answers_where_lightning_does_not_without_a_warning(gpu_named) -> None:  # type: ignore[no-untyped-def]
    gpu_named("AMD Instinct MI300X")  # torch under ROCm reports its GPUs as cuda devices
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "FLOPs not found" stays out of the user's terminal
        assert peaks.device_peak_flops_per_s(CUDA, "bf16-mixed") == 1307.4e12
        gpu_named("NVIDIA H200")
        assert peaks.device_peak_flops_per_s(CUDA, "16-mixed") == 989e12
        gpu_named("NVIDIA GH200 480GB")
        assert peaks.device_peak_flops_per_s(CUDA, "32-true") == 67e12
        gpu_named("Intel Data Center GPU Max 1550")
        assert peaks.device_peak_flops_per_s(CUDA, "bf16-mixed") is None
