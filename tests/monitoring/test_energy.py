"""Energy and aggregation math against a scripted device behind the backend interface."""

from __future__ import annotations

import itertools
import math

import pytest

from itwinai_lightning.monitoring import aggregate as agg
from itwinai_lightning.monitoring.backends import BackendUnavailable, DeviceBackend, open_gpu_backend
from itwinai_lightning.monitoring.energy import EnergyAccumulator
from itwinai_lightning.monitoring.nvml import nvml_identifiers
from itwinai_lightning.monitoring.sampler import Sampler
from tests.monitoring.fake_device import Clock, ScriptedDevice


def ramp(t: float) -> float:
    """Power rising linearly from 100 W at t=0 to 300 W at t=3600 s: exactly 200 Wh over the hour."""
    return 100.0 + 200.0 * t / 3600.0


def ramp_energy_j(t: float) -> float:
    return 100.0 * t + 100.0 * t * t / 3600.0


# Irregular sample times (a real sampler drifts): every interval is different.
TIMES = [0.0, 0.7, 13.0, 250.25, 900.0, 1799.5, 1800.0, 2400.0, 3000.1, 3599.0, 3600.0]


def run_sampler(device: ScriptedDevice, clock: Clock, times: list[float]) -> Sampler:
    sampler = Sampler([device], interval_s=1.0, clock=clock)
    clock.t = times[0]
    sampler.open("run")
    for t in times:
        clock.t = t
        sampler.sample_once()
    return sampler


def test_known_power_curve_gives_exact_wh_by_integration_and_by_counter() -> None:
    clock = Clock()
    device = ScriptedDevice(clock, ramp)
    assert isinstance(device, DeviceBackend)
    integrated = run_sampler(device, clock, TIMES)
    summary = integrated.cut("run")
    assert summary["energy_wh"] == pytest.approx(200.0, rel=1e-12)
    assert integrated.energy.source == "integrated"
    readings = [ramp(t) for t in [*TIMES, TIMES[-1]]]  # cut() samples once more at the boundary
    assert summary["samples"] == len(readings)
    assert summary["gpu_power_mean_w"] == pytest.approx(sum(readings) / len(readings))
    assert summary["gpu_power_max_w"] == pytest.approx(300.0)
    assert summary["gpu_util_mean_pct"] == 50.0

    clock2 = Clock()
    counted = run_sampler(ScriptedDevice(clock2, lambda t: 0.0, energy=ramp_energy_j), clock2, TIMES)
    assert counted.energy.energy_wh == pytest.approx(200.0, rel=1e-12)  # power reads 0: counter wins
    assert counted.energy.source == "counter"
    assert counted.energy.integrated_wh == 0.0


def test_counter_reset_does_not_corrupt_the_total() -> None:
    clock = Clock()
    device = ScriptedDevice(clock, ramp, energy=ramp_energy_j, reset_at=1800.0)
    sampler = run_sampler(device, clock, TIMES)
    assert sampler.energy.counter_resets == 1
    assert sampler.energy.source == "mixed"  # the reset interval is bridged by the trapezoid
    assert sampler.energy.energy_wh == pytest.approx(200.0, rel=1e-12)


def test_missing_and_failing_samples_do_not_corrupt_the_total() -> None:
    clock = Clock()
    device = ScriptedDevice(
        clock, ramp, energy=ramp_energy_j, missing=frozenset({900.0, 2400.0}), failing=frozenset({13.0})
    )
    sampler = run_sampler(device, clock, TIMES)
    assert sampler.read_errors == 1
    assert sampler.energy.energy_wh == pytest.approx(200.0, rel=1e-12)
    assert sampler.energy.integrated_wh == pytest.approx(200.0, rel=1e-12)  # linear: trapezoid is exact

    # a non-linear curve with a gap: the trapezoid spans the real timestamps (no energy lost or invented)
    acc = EnergyAccumulator()
    for t, p in [(0.0, 100.0), (10.0, None), (20.0, 300.0)]:
        acc.add(t, p)
    assert acc.energy_j == pytest.approx(0.5 * (100 + 300) * 20)
    acc.add(20.0, 5000.0)  # a repeated timestamp carries no energy
    assert acc.energy_j == pytest.approx(4000.0)


def test_epoch_windows_partition_the_run_energy_exactly() -> None:
    clock = Clock()
    sampler = Sampler([ScriptedDevice(clock, ramp)], interval_s=1.0, clock=clock)
    sampler.open("run")
    epochs = []
    boundaries = [0.0, 600.0, 1500.0, 3600.0]
    sampler.cut("epoch")  # opens at t=0
    for start, end in itertools.pairwise(boundaries):
        for t in (start + (end - start) * f for f in (0.31, 0.62, 0.9)):
            clock.t = t
            sampler.sample_once()
        clock.t = end
        epochs.append(sampler.cut("epoch"))
    run = sampler.cut("run")
    for (start, end), epoch in zip(itertools.pairwise(boundaries), epochs, strict=True):
        exact = (ramp_energy_j(end) - ramp_energy_j(start)) / 3600.0
        assert epoch["energy_wh"] == pytest.approx(exact, rel=1e-12)
        assert epoch["duration_s"] == pytest.approx(end - start)
    assert sum(e["energy_wh"] for e in epochs) == pytest.approx(run["energy_wh"], rel=1e-12)
    assert run["energy_wh"] == pytest.approx(200.0, rel=1e-12)


def test_sampler_thread_samples_at_its_interval_and_closes_backends() -> None:
    import time

    device = ScriptedDevice(time.monotonic, lambda t: 120.0)
    sampler = Sampler([device], interval_s=0.02)
    sampler.open("run")
    sampler.start()
    started, deadline = time.monotonic(), time.monotonic() + 30
    while device.reads < 15 and time.monotonic() < deadline:  # ~0.3 s at 50 Hz; longer when loaded
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    summary = sampler.cut("run")
    sampler.stop()
    assert device.closed
    assert summary["samples"] >= 15 and summary["samples"] <= elapsed / 0.02 + 2  # never faster than 50 Hz
    assert summary["energy_wh"] == pytest.approx(120.0 * summary["duration_s"] / 3600.0, rel=0.05)


def test_cross_rank_math() -> None:
    rows = [[10.0, 1.5, math.nan], [30.0, 2.5, 4.0]]
    cols = agg.columns(rows, ["util", "energy", "power"])
    assert agg.min_mean_max(cols["util"]) == {"min": 10.0, "mean": 20.0, "max": 30.0}
    assert agg.total(cols["energy"]) == 4.0
    assert agg.min_mean_max(cols["power"]) == {"min": 4.0, "mean": 4.0, "max": 4.0}  # NaN = missing
    assert agg.min_mean_max([math.nan]) is None and agg.total([math.nan]) is None
    values = sorted(float(v) for v in range(1, 101))
    assert agg.percentile(values, 50) == pytest.approx(50.5)
    assert agg.percentile(values, 90) == pytest.approx(90.1)
    assert agg.percentile(values, 99) == pytest.approx(99.01)
    assert agg.percentile([7.0], 99) == 7.0
    logged = agg.flatten_for_logging(
        {
            "ranks": 2,
            "wall_time_s": 3.0,
            "wall_time_s_ranks": {"min": 2.0, "mean": 2.5, "max": 3.0},
            "gpu_util_mean_pct": {"min": 1.0, "mean": 2.0, "max": 3.0},
            "samples_ranks": {"min": 1, "mean": 1, "max": 1},
        },
        "m/",
    )
    assert logged == {
        "m/wall_time_s": 3.0,
        "m/wall_time_s/min": 2.0,
        "m/wall_time_s/max": 3.0,
        "m/gpu_util_mean_pct": 2.0,
        "m/gpu_util_mean_pct/min": 1.0,
        "m/gpu_util_mean_pct/max": 3.0,
    }


def test_each_rank_resolves_the_gpu_it_uses() -> None:
    assert nvml_identifiers(0, None) == ["0"]
    assert nvml_identifiers(1, "3,1") == ["1"]
    assert nvml_identifiers(0, "3,1") == ["3"]
    uuid = "GPU-8f7c1a2b-1111-2222-3333-444455556666"
    assert nvml_identifiers(1, f"2, {uuid}") == [uuid]
    mig = "MIG-1a2b3c4d-aaaa-bbbb-cccc-ddddeeeeffff"
    assert nvml_identifiers(0, mig) == [mig]
    assert nvml_identifiers(0, "MIG-GPU-8f7c/1/0") == ["MIG-GPU-8f7c/1/0"]
    assert nvml_identifiers(2, "0,1") == []  # not visible: nothing to guess
    # torch's device UUID comes first: exact whatever CUDA_DEVICE_ORDER says
    assert nvml_identifiers(0, "5", torch_uuid="8f7c1a2b-0000") == [
        "GPU-8f7c1a2b-0000",
        "MIG-8f7c1a2b-0000",
        "5",
    ]


def test_without_nvml_the_gpu_backend_says_why() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; covered by test_gpu.py")
    backend, reason = open_gpu_backend(0)
    assert backend is None
    assert "NVML" in reason
    from itwinai_lightning.monitoring.nvml import NVMLBackend

    with pytest.raises(BackendUnavailable, match="NVML"):
        NVMLBackend.open(0)
