"""GPUMonitor: utilisation, memory, power, temperature, clock and energy of the GPU each rank uses, and the
CPU energy of the sockets the ranks run on (RAPL)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from itwinai_lightning import records
from itwinai_lightning.monitoring import aggregate as agg
from itwinai_lightning.monitoring import rapl
from itwinai_lightning.monitoring.backends import DeviceBackend, HostBackend, TorchDevice, open_gpu_backend
from itwinai_lightning.monitoring.device import BackendUnavailable
from itwinai_lightning.monitoring.sampler import Sampler

#: Per-rank window figures gathered across ranks (one small all_gather per epoch and one at fit end).
GATHERED = (
    "gpu_util_mean_pct",
    "gpu_util_max_pct",
    "gpu_power_mean_w",
    "gpu_power_max_w",
    "energy_wh",
    "integrated_energy_wh",
    "cpu_energy_wh",
    "gpu_mem_used_max_gb",
    "gpu_temp_max_c",
    "gpu_sm_clock_mean_mhz",
    "cpu_util_mean_pct",
    "host_mem_max_gb",
    "samples",
)
#: Per-rank figures recorded as one number across ranks (which statistic) and as ``<name>_ranks``.
ACROSS_RANKS = {
    "gpu_util_mean_pct": "mean",
    "gpu_util_max_pct": "max",
    "gpu_power_mean_w": "mean",
    "gpu_power_max_w": "max",
    "gpu_mem_used_max_gb": "max",
    "gpu_temp_max_c": "max",
    "gpu_sm_clock_mean_mhz": "mean",
}


class GPUMonitor(Callback):
    """Samples the rank's GPU (NVML) and host (psutil) in a background thread; no work in the training step.

    Each rank opens the CUDA device it trains on (``trainer.strategy.root_device``), matched to NVML by
    the device UUID torch reports, else by ``CUDA_VISIBLE_DEVICES`` (indices, ``GPU-``/``MIG-`` UUIDs).
    Without a GPU or NVML it says so in one info line and records the host figures only.

    Logged once per training epoch (rank 0, after ONE all_gather across ranks); with ``log_every_n_steps``
    also every N steps, then the figures are rank 0's own (no collective per step):

    =============================================  =====  ================================================
    metric (``prefix`` + key)                      unit   meaning
    =============================================  =====  ================================================
    ``gpu_util_mean_pct``, ``gpu_util_max_pct``    %      GPU utilisation over the epoch, mean / peak
    ``gpu_power_mean_w``, ``gpu_power_max_w``      W      board power, mean / peak
    ``energy_wh``                                  Wh     energy of all ranks' GPUs over the epoch (sum)
    ``cpu_energy_wh``                              Wh     RAPL energy (package + DRAM) of the sockets the
                                                          ranks run on, each socket counted once (sum)
    ``gpu_mem_used_max_gb``                        GiB    device memory in use, peak
    ``gpu_temp_max_c``                             °C     temperature, peak
    ``gpu_sm_clock_mean_mhz``                      MHz    SM clock, mean
    ``cpu_util_mean_pct``                          %      host CPU utilisation (whole node), mean
    ``host_mem_max_gb``                            GiB    resident memory of the rank (+ workers), peak
    =============================================  =====  ================================================

    Per-rank figures are recorded and logged as one number across ranks (the mean of means, the maximum
    of peaks), with ``/min`` and ``/max`` beside them in the logs and ``<key>_ranks`` in the record.
    GPUs are read through NVML, amdsmi or the amdgpu sysfs files (the first that opens). GPU energy comes
    from the device's energy counter where it has one, else from the trapezoidal integral of power over
    the real sample times (see :mod:`itwinai_lightning.monitoring.energy`). CPU energy comes from RAPL
    (:mod:`itwinai_lightning.monitoring.rapl`): at setup the ranks exchange their host and sockets (one
    all_gather), and each socket of a node is read by the lowest rank running on it; where the counters
    cannot be read the record gives the reason (``cpu_energy_unavailable_reason``), never a zero.
    The RunRecord gets the same figures per epoch and for the whole run (setup to fit end), plus a
    ``device_monitor`` section (backend, device, energy source, which rank reads which socket). Across a
    SLURM requeue ``state_dict``
    carries the energy of the finished epochs, so the run's ``energy_wh`` covers every job (an epoch cut
    by the requeue counts from the point it resumed).

    Args:
        interval_s: seconds between samples.
        log_every_n_steps: also log rank 0's window every N training steps (None: per epoch only).
        prefix: prefix of logged metric names.
        record: write figures to the RunRecord.
        cpu_energy: read the CPU sockets' RAPL energy counters.
        sysfs_root: the directory ``/sys`` is under (``/``; another where a container mounts the host's
            sysfs elsewhere).
    """

    def __init__(
        self,
        interval_s: float = 0.5,
        log_every_n_steps: int | None = None,
        prefix: str = "monitor/",
        record: bool = True,
        cpu_energy: bool = True,
        sysfs_root: str = "/",
    ) -> None:
        super().__init__()
        if interval_s <= 0:
            raise ValueError(f"GPUMonitor(interval_s=...) must be > 0, got {interval_s}")
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"GPUMonitor(log_every_n_steps=...) must be >= 1, got {log_every_n_steps}")
        self.interval_s = interval_s
        self.log_every_n_steps = log_every_n_steps
        self.prefix = prefix
        self.record = record
        self.cpu_energy = cpu_energy
        self.sysfs_root = sysfs_root
        self.sampler: Sampler | None = None
        self.gpu: DeviceBackend | None = None
        self.reason = ""
        self.rapl: rapl.RaplBackend | None = None
        self.rapl_reason = ""
        self.rapl_readers: list[dict[str, Any]] = []
        self.run_values: dict[str, Any] = {}
        self._energy_before_wh = 0.0  # finished epochs of the jobs before a requeue (all ranks)
        self._energy_epochs_wh = 0.0  # finished epochs of this job (all ranks)
        self._cpu_before_wh = 0.0
        self._cpu_epochs_wh = 0.0

    # -- backends ----------------------------------------------------------------------------------
    def _open_gpu(self, trainer: pl.Trainer) -> None:
        device = trainer.strategy.root_device
        if device.type != "cuda":
            self.gpu, self.reason = None, f"the run uses '{device.type}', not a CUDA GPU"
            return
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        self.gpu, self.reason = open_gpu_backend(TorchDevice.of(index))

    def _open_rapl(self, trainer: pl.Trainer) -> None:
        """This rank's RAPL reader for the sockets it owns (one all_gather of host and sockets)."""
        import socket

        packages = rapl.rank_packages(self.sysfs_root)
        mask = float(sum(1 << p for p in packages if p < 52))
        rows = agg.gather_rows(trainer, [float(rapl.host_key(socket.gethostname())), mask])
        owned = rapl.owners([(int(h), {p for p in range(52) if int(m) >> p & 1}) for h, m in rows])
        self.rapl_readers = [{"rank": r, "sockets": sorted(s)} for r, s in enumerate(owned) if s]
        mine = owned[trainer.global_rank]
        if not mine:
            self.rapl_reason = "another rank on this node reads this rank's socket(s)"
            return
        try:
            self.rapl = rapl.RaplBackend.open(mine, self.sysfs_root)
        except BackendUnavailable as err:
            self.rapl_reason = str(err)

    def _make_backends(self, trainer: pl.Trainer) -> list[DeviceBackend]:
        """The backends to sample; override to plug in another device (same interface)."""
        self._open_gpu(trainer)
        backends: list[DeviceBackend] = [HostBackend()]
        if self.gpu is not None:
            backends.insert(0, self.gpu)
        if self.cpu_energy:
            self._open_rapl(trainer)
            if self.rapl is not None:
                backends.append(self.rapl)
        else:
            self.rapl_reason = "GPUMonitor(cpu_energy=False)"
        return backends

    # -- hooks -------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.sampler is not None:
            return
        self._energy_before_wh = self._energy_epochs_wh = 0.0
        self._cpu_before_wh = self._cpu_epochs_wh = 0.0
        backends = self._make_backends(trainer)
        if self.gpu is None:
            rank_zero_info(
                f"GPUMonitor: no GPU monitoring ({self.reason}); "
                "recording CPU utilisation and host memory only."
            )
        self.sampler = Sampler(backends, interval_s=self.interval_s)
        self.sampler.open("run")
        self.sampler.start()

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sampler is not None:
            self.sampler.cut("epoch")  # opens the epoch window at this exact boundary
            if self.log_every_n_steps:
                self.sampler.cut("steps")

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = self.log_every_n_steps
        if n and self.sampler is not None and (batch_idx + 1) % n == 0 and trainer.global_rank == 0:
            window = self.sampler.cut("steps")
            agg.log_to_loggers(trainer, self._local_metrics(window), trainer.global_step)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sampler is None:
            return
        values = self._aggregate(trainer, self.sampler.cut("epoch", reopen=False))
        self._energy_epochs_wh += values.get("energy_wh") or 0.0
        self._cpu_epochs_wh += values.get("cpu_energy_wh") or 0.0
        agg.log_to_loggers(
            trainer, agg.flatten_for_logging(values, self.prefix), trainer.global_step, trainer.current_epoch
        )
        if self.record:
            records.contribute(trainer, epoch=trainer.current_epoch, epoch_values=values)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sampler is None:
            return
        run = self._aggregate(trainer, self.sampler.cut("run", reopen=False))
        self.run_values = run
        if not self.record:
            return
        energy, cpu = run.get("energy_wh"), run.get("cpu_energy_wh")
        summary = {
            "energy_wh": energy + self._energy_before_wh if energy is not None else None,
            "cpu_energy_wh": cpu + self._cpu_before_wh if cpu is not None else None,
            "gpu_util_mean_pct": run.get("gpu_util_mean_pct"),
            "gpu_power_mean_w": run.get("gpu_power_mean_w"),
            "cpu_util_mean_pct": run.get("cpu_util_mean_pct"),
            "host_mem_max_gb": run.get("host_mem_max_gb"),
            "gpu_mem_used_max_gb": run.get("gpu_mem_used_max_gb"),
        }
        section = {
            "backend": self.gpu.name if self.gpu else "psutil",
            "gpu_device": self.gpu.device_name if self.gpu else None,
            "gpu_unavailable_reason": self.reason or None,
            "interval_s": self.interval_s,
            "energy_source": self.sampler.energy.source,
            "counter_resets": self.sampler.energy.counter_resets,
            "read_errors": self.sampler.read_errors,
            "cpu_energy_source": "rapl" if cpu is not None else None,
            "cpu_energy_domains": self.rapl.domains if self.rapl else None,
            "cpu_energy_wraps": self.rapl.wraps if self.rapl else None,
            "cpu_energy_readers": self.rapl_readers or None,
            "cpu_energy_unavailable_reason": None if cpu is not None else (self.rapl_reason or None),
            "run": run,
        }
        records.contribute(
            trainer,
            summary={k: v for k, v in summary.items() if v is not None},
            section="device_monitor",
            section_values=section,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "energy_wh": self._energy_before_wh + self._energy_epochs_wh,
            "cpu_energy_wh": self._cpu_before_wh + self._cpu_epochs_wh,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._energy_before_wh = float(state_dict.get("energy_wh") or 0.0)
        self._cpu_before_wh = float(state_dict.get("cpu_energy_wh") or 0.0)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._stop()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None

    # -- aggregation -------------------------------------------------------------------------------
    def _aggregate(self, trainer: pl.Trainer, window: dict[str, float]) -> dict[str, Any]:
        rows = agg.gather_rows(trainer, [window.get(name) for name in GATHERED])
        cols = agg.columns(rows, GATHERED)
        out: dict[str, Any] = {"ranks": len(rows)}
        for name, which in ACROSS_RANKS.items():
            stats = agg.min_mean_max(cols[name])
            out[name] = stats[which] if stats else None
            out[f"{name}_ranks"] = stats
        out["energy_wh"] = agg.total(cols["energy_wh"])
        out["integrated_energy_wh"] = agg.total(cols["integrated_energy_wh"])
        out["cpu_energy_wh"] = agg.total(cols["cpu_energy_wh"])
        cpu = agg.min_mean_max(cols["cpu_util_mean_pct"])
        mem = agg.min_mean_max(cols["host_mem_max_gb"])
        out["cpu_util_mean_pct"] = cpu["mean"] if cpu else None
        out["host_mem_max_gb"] = mem["max"] if mem else None
        for name in (
            "energy_wh",
            "cpu_energy_wh",
            "cpu_util_mean_pct",
            "host_mem_max_gb",
            "samples",
        ):
            out[f"{name}_ranks"] = agg.min_mean_max(cols[name])
        return {k: v for k, v in out.items() if v is not None}

    def _local_metrics(self, window: dict[str, float]) -> dict[str, float]:
        keep = [k for k in window if k.startswith(("gpu_", "cpu_", "host_", "energy_"))]
        return {f"{self.prefix}steps/{k}": window[k] for k in keep}
