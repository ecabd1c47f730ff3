"""AMD GPUs (amdgpu sysfs, amdsmi) and CPU energy (RAPL) on fake sysfs trees with scripted counters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from itwinai_lightning.monitoring import rapl
from itwinai_lightning.monitoring.amd import SysfsAMDBackend, visible_entry
from itwinai_lightning.monitoring.device import GIB, BackendUnavailable, TorchDevice
from itwinai_lightning.monitoring.sampler import Sampler
from tests.monitoring.fake_device import Clock
from tests.monitoring.fake_sysfs import AmdCard, RaplZone, cpu_topology

# three cards whose card numbers do not follow PCI order (as on real nodes)
CARDS = [(0, "0000:d1:00.0", "0xbbbb"), (1, "0000:c1:00.0", "0xaaaa"), (2, "0000:d6:00.0", "0xcccc")]


def _cards(root: Path, energy: bool = True) -> dict[str, AmdCard]:
    return {bdf: AmdCard(root, n, bdf, unique, energy=energy) for n, bdf, unique in CARDS}


# ------------------------------------------------------------------------------------------------ AMD
def test_amd_sysfs_readings_in_their_units(tmp_path: Path) -> None:
    cards = _cards(tmp_path)
    cards["0000:c1:00.0"].set(busy_pct=87, vram_bytes=3 * 2**30, power_w=412.5, temp_c=61.0, sclk_mhz=1700)
    backend = SysfsAMDBackend.open(TorchDevice(0), root=tmp_path, env={})
    assert backend.device_name == "AMD GPU 0000:c1:00.0"  # physical 0 = the first in PCI order
    reading = backend.read()
    assert reading == {
        "gpu_util_pct": 87.0,
        "gpu_mem_used_gb": pytest.approx(3.0),
        "gpu_power_w": pytest.approx(412.5),
        "gpu_temp_c": pytest.approx(61.0),
        "gpu_sm_clock_mhz": pytest.approx(1700.0),
        "gpu_energy_j": 0.0,
    }
    assert backend.has_energy_counter and GIB == 2**30


def test_amd_device_mapping_follows_rocr_hip_and_torch(tmp_path: Path) -> None:
    _cards(tmp_path)

    def chosen(index: int, env: dict[str, str], bdf: str | None = None) -> str:
        return SysfsAMDBackend.open(TorchDevice(index, pci_bus_id=bdf), root=tmp_path, env=env).device_name

    assert chosen(1, {}) == "AMD GPU 0000:d1:00.0"
    assert chosen(0, {"ROCR_VISIBLE_DEVICES": "2,0"}) == "AMD GPU 0000:d6:00.0"
    assert chosen(1, {"ROCR_VISIBLE_DEVICES": "2,0"}) == "AMD GPU 0000:c1:00.0"
    # HIP_VISIBLE_DEVICES indexes into what ROCR_VISIBLE_DEVICES left visible
    assert chosen(0, {"ROCR_VISIBLE_DEVICES": "2,0", "HIP_VISIBLE_DEVICES": "1"}) == "AMD GPU 0000:c1:00.0"
    assert chosen(0, {"ROCR_VISIBLE_DEVICES": "GPU-cccc"}) == "AMD GPU 0000:d6:00.0"
    # the PCI address torch reports is exact, whatever the environment says
    assert chosen(0, {"ROCR_VISIBLE_DEVICES": "2"}, bdf="0000:D1:00.0") == "AMD GPU 0000:d1:00.0"
    with pytest.raises(BackendUnavailable, match="ROCR_VISIBLE_DEVICES='1' has no device 1"):
        visible_entry(1, {"ROCR_VISIBLE_DEVICES": "1"})
    with pytest.raises(BackendUnavailable, match="no AMD GPU 5"):
        chosen(0, {"ROCR_VISIBLE_DEVICES": "5"})


def test_amd_energy_integrates_exactly_by_counter_and_by_power(tmp_path: Path) -> None:
    """With hwmon's energy counter the window energy is the counter's delta; without one, the trapezoid of
    power over the sample times (exact for a piecewise-linear power curve)."""
    for energy, root in ((True, tmp_path / "counter"), (False, tmp_path / "power")):
        card = _cards(root, energy=energy)["0000:c1:00.0"]
        clock = Clock(0.0)
        sampler = Sampler([SysfsAMDBackend.open(TorchDevice(0), root=root, env={})], clock=clock)
        card.set(power_w=100.0, energy_j=5000.0)
        sampler.open("run")
        sampler.sample_once()
        for t, power, counter in ((10.0, 300.0, 7000.0), (20.0, 300.0, 10000.0), (30.0, 100.0, 12000.0)):
            clock.t = t
            card.set(power_w=power, energy_j=counter)
            sampler.sample_once()
        window = sampler.cut("run")
        if energy:  # 12000 J - 5000 J
            assert sampler.energy.source == "counter" and window["energy_wh"] == pytest.approx(7000 / 3600)
        else:  # (100+300)/2*10 + 300*10 + (300+100)/2*10 = 7000 J
            assert sampler.energy.source == "integrated"
            assert window["energy_wh"] == pytest.approx(7000 / 3600)


def test_no_amd_card_or_no_readable_metric_says_why(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="no amdgpu device under"):
        SysfsAMDBackend.open(TorchDevice(0), root=tmp_path, env={})
    card = AmdCard(tmp_path, 0, "0000:c1:00.0")
    for path in [card.device / "gpu_busy_percent", card.device / "mem_info_vram_used", *card.hwmon.iterdir()]:
        path.unlink()
    with pytest.raises(BackendUnavailable, match="no readable amdgpu metric"):
        SysfsAMDBackend.open(TorchDevice(0), root=tmp_path, env={})


FAKE_AMDSMI = '''
"""A stand-in for amdsmi with the real function names; readings come from state.json beside it."""
import json, pathlib

_STATE = pathlib.Path(__file__).with_name("state.json")
_calls = []


class AmdSmiException(Exception):
    pass


class AmdSmiLibraryException(AmdSmiException):
    pass


class AmdSmiRetryException(AmdSmiLibraryException):
    pass


class AmdSmiParameterException(AmdSmiException):
    pass


class AmdSmiInitFlags:
    INIT_AMD_GPUS = 2


class AmdSmiTemperatureType:
    EDGE = 0


class AmdSmiTemperatureMetric:
    CURRENT = 0


class AmdSmiClkType:
    GFX = 0


def _gpu(handle):
    return json.loads(_STATE.read_text())["gpus"][handle]


def amdsmi_init(flags=None):
    _calls.append(("init", flags))


def amdsmi_shut_down():
    _calls.append(("shut_down",))


def amdsmi_get_processor_handles():
    return list(range(len(json.loads(_STATE.read_text())["gpus"])))


def amdsmi_get_gpu_device_bdf(handle):
    return _gpu(handle)["bdf"]


def amdsmi_get_gpu_device_uuid(handle):
    return _gpu(handle)["uuid"]


def amdsmi_get_gpu_asic_info(handle):
    return {"market_name": "AMD Instinct MI250X", "vendor_id": "0x1002"}


def amdsmi_get_gpu_activity(handle):
    return {"gfx_activity": _gpu(handle)["busy"], "umc_activity": 3, "mm_activity": "N/A"}


def amdsmi_get_gpu_vram_usage(handle):
    return {"vram_total": 65520, "vram_used": _gpu(handle)["vram_mb"]}


def amdsmi_get_power_info(handle):
    return {"average_socket_power": _gpu(handle)["power"], "current_socket_power": "N/A"}


def amdsmi_get_temp_metric(handle, sensor, metric):
    raise AmdSmiLibraryException("AMDSMI_STATUS_NOT_SUPPORTED")  # edge sensor missing (as on MI250X)


def amdsmi_get_clock_info(handle, clk_type):
    return {"clk": 1650, "min_clk": 500, "max_clk": 1700}


def amdsmi_get_energy_count(handle):
    return {"power": _gpu(handle)["ticks"], "counter_resolution": 15.259, "timestamp": 1}
'''


def test_the_amdsmi_path_with_a_fake_amdsmi_module(tmp_path: Path, python_env: dict[str, str]) -> None:
    """amdsmi (imported lazily, from sys.path) is preferred to sysfs; the device is picked in PCI order;
    energy = accumulator x counter_resolution µJ; a metric it cannot report is not asked again."""
    package = tmp_path / "site" / "amdsmi"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_AMDSMI)
    state = {
        "gpus": [
            {"bdf": "0000:d1:00.0", "uuid": "b", "busy": 10, "vram_mb": 1024, "power": 90, "ticks": 0},
            {"bdf": "0000:c1:00.0", "uuid": "a", "busy": 55, "vram_mb": 2048, "power": 480, "ticks": 10**6},
        ]
    }
    (package / "state.json").write_text(json.dumps(state))
    child = textwrap.dedent(
        """
        import json, pathlib, sys
        from itwinai_lightning.monitoring.backends import open_gpu_backend
        from itwinai_lightning.monitoring.device import TorchDevice
        import amdsmi
        backend, reason = open_gpu_backend(TorchDevice(0))
        first = backend.read()
        state_file = pathlib.Path(amdsmi.__file__).with_name("state.json")
        state = json.loads(state_file.read_text())
        state["gpus"][1]["ticks"] = 3_000_000
        state_file.write_text(json.dumps(state))
        second = backend.read()
        temp_calls = backend._metrics._unsupported
        backend.close()
        print(json.dumps({"name": backend.name, "device": backend.device_name, "first": first,
                          "second": second, "unsupported": sorted(temp_calls), "calls": amdsmi._calls,
                          "counter": backend.has_energy_counter}))
        """
    )
    env = {**python_env, "PYTHONPATH": f"{tmp_path / 'site'}:{python_env['PYTHONPATH']}"}
    env.pop("ROCR_VISIBLE_DEVICES", None)
    env.pop("HIP_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["name"] == "amdsmi" and out["device"] == "AMD Instinct MI250X" and out["counter"] is True
    first, second = out["first"], out["second"]
    assert first["gpu_util_pct"] == 55.0 and first["gpu_power_w"] == 480.0  # 0000:c1 is first in PCI order
    assert first["gpu_mem_used_gb"] == pytest.approx(2.0) and first["gpu_sm_clock_mhz"] == 1650.0
    assert first["gpu_energy_j"] == pytest.approx(1_000_000 * 15.259e-6)
    assert second["gpu_energy_j"] - first["gpu_energy_j"] == pytest.approx(2_000_000 * 15.259e-6)
    assert "gpu_temp_c" not in first and out["unsupported"] == ["gpu_temp_c"]
    assert out["calls"] == [["init", 2], ["shut_down"]]


@pytest.mark.amd
def test_a_real_amd_gpu_reads_sane_figures() -> None:
    import torch

    from itwinai_lightning.monitoring.backends import open_gpu_backend

    if not (torch.cuda.is_available() and torch.version.hip):
        pytest.skip("needs an AMD GPU under ROCm")
    backend, reason = open_gpu_backend(TorchDevice.of(0))
    assert backend is not None, reason
    reading = backend.read()
    assert 0 <= reading["gpu_util_pct"] <= 100 and reading["gpu_power_w"] > 0


# ----------------------------------------------------------------------------------------------- RAPL
def _rapl(root: Path, max_range: int = 262_143_328_850) -> dict[str, RaplZone]:
    cpu_topology(root, {0: 0, 1: 0, 2: 1, 3: 1})
    return {
        "package-0": RaplZone(root, "0", "package-0", max_range),
        "dram-0": RaplZone(root, "0:0", "dram", max_range),
        "core-0": RaplZone(root, "0:1", "core", max_range),
        "package-1": RaplZone(root, "1", "package-1", max_range),
        "dram-1": RaplZone(root, "1:0", "dram", max_range),
    }


def test_rapl_reads_package_and_dram_of_the_ranks_sockets_across_a_wrap(tmp_path: Path) -> None:
    zones = _rapl(tmp_path, max_range=1_000_000)
    assert rapl.rank_packages(tmp_path, cpus=[0, 1]) == {0}
    assert rapl.rank_packages(tmp_path, cpus=[1, 2]) == {0, 1}
    zones["package-0"].set(900_000)
    zones["dram-0"].set(100_000)
    backend = rapl.RaplBackend.open({0}, tmp_path)
    assert backend.domains == ["package-0", "package-0/dram"]  # not core (part of the package), not socket 1
    clock = Clock(0.0)
    sampler = Sampler([backend], clock=clock)
    sampler.open("run")
    sampler.sample_once()
    for t, package, dram in ((1.0, 950_000, 150_000), (2.0, 50_000, 200_000), (3.0, 400_000, 260_000)):
        clock.t = t
        zones["package-0"].set(package)  # wraps at 1 J between t=1 and t=2
        zones["core-0"].set(package // 2)
        zones["package-1"].set(package * 7)
        zones["dram-0"].set(dram)
        sampler.sample_once()
    window = sampler.cut("run")
    # package: 900000 -> 950000 -> (wrap) 50000 -> 400000 = 500000 uJ; dram: 160000 uJ
    assert window["cpu_energy_wh"] == pytest.approx(0.66 / 3600)
    assert backend.wraps == 1 and sampler.cpu_energy.counter_resets == 0


def test_two_ranks_on_one_socket_count_it_once() -> None:
    a, b = rapl.host_key("node-a"), rapl.host_key("node-b")
    assert a != b and a < 2**53  # exact in the float64 the ranks gather
    # ranks 0 and 1 share socket 0 of node a; rank 2 spans both sockets of node a; rank 3 is on node b
    assert rapl.owners([(a, {0}), (a, {0}), (a, {0, 1}), (b, {0})]) == [{0}, set(), {1}, {0}]


def test_unreadable_rapl_counters_give_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendUnavailable, match=r"no RAPL powercap zones under .*\(a VM"):
        rapl.RaplBackend.open({0}, tmp_path)
    _rapl(tmp_path)
    with pytest.raises(BackendUnavailable, match=r"no RAPL package zone for socket\(s\) \[5\]"):
        rapl.RaplBackend.open({5}, tmp_path)
    real = Path.read_text

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(BackendUnavailable, match=r"energy_uj is not readable .*root-only"):
        rapl.RaplBackend.open({0}, tmp_path)


def test_a_two_rank_fit_reads_the_shared_socket_once_and_records_cpu_energy(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    """A real 2-process gloo fit whose cores all sit on socket 0 of a fake node drawing a steady 40 W on
    its package (+ 5 W DRAM): rank 0 reads it, rank 1 does not, and the run's CPU energy is 45 W times its
    duration (counted twice it would be 90 W)."""
    import os
    import threading
    import time

    from itwinai_lightning import records
    from tests.foundation.conftest import fit_args, run_cli

    root = tmp_path / "sysroot"
    cpu_topology(root, dict.fromkeys(range(os.cpu_count() or 1), 0))
    package, dram = RaplZone(root, "0", "package-0"), RaplZone(root, "0:0", "dram")
    stop = threading.Event()

    def draw() -> None:
        start = time.monotonic()
        while not stop.wait(0.002):
            elapsed = time.monotonic() - start
            package.set(int(40e6 * elapsed))
            dram.set(int(5e6 * elapsed))

    writer = threading.Thread(target=draw, daemon=True)
    writer.start()
    out = tmp_path / "run"
    monitors = [
        "--trainer.callbacks+=TimingMonitor",
        "--trainer.callbacks+=GPUMonitor", "--trainer.callbacks.interval_s=0.05",
        f"--trainer.callbacks.sysfs_root={root}",
    ]  # fmt: skip
    try:
        run = run_cli([], fit_args(out, "--trainer.max_epochs=3", *monitors), python_env, out)
    finally:
        stop.set()
        writer.join()
    assert run.returncode == 0, run.stderr[-3000:]
    record = records.load(out)
    section = record["sections"]["device_monitor"]
    assert section["cpu_energy_readers"] == [{"rank": 0, "sockets": [0]}]
    assert section["cpu_energy_domains"] == ["package-0", "package-0/dram"]
    assert section["cpu_energy_source"] == "rapl" and section.get("cpu_energy_unavailable_reason") is None
    for epoch in record["epochs"]:
        assert epoch["cpu_energy_wh"] > 0
        assert epoch["cpu_energy_wh_ranks"]["min"] == epoch["cpu_energy_wh"]  # one rank reported it
    summary = record["summary"]
    # over the whole run (setup to fit end: seconds, so a late write by the test's thread hardly matters)
    watts = summary["cpu_energy_wh"] * 3600 / summary["fit_wall_time_s"]
    assert 45 * 0.8 < watts < 45 * 1.2, watts
    assert summary["cpu_energy_wh"] >= sum(e["cpu_energy_wh"] for e in record["epochs"])
    per_sample = summary["cpu_energy_wh"] / summary["total_samples"]
    assert summary["energy_per_sample_wh"] == pytest.approx(per_sample)
    assert "energy_wh" not in summary  # no GPU here: GPU energy stays absent, never a zero
    assert f"CPU {summary['cpu_energy_wh']:.3g} Wh" in run.stdout + run.stderr
