"""``hpc_deepspeed``: Lightning's DeepSpeed strategy, launcher-aware and usable on CPU (gloo) as on CUDA.

Lightning's :class:`~lightning.pytorch.strategies.DeepSpeedStrategy` refuses any accelerator but CUDA.
DeepSpeed itself runs on CPU (its CPU accelerator, gloo collectives), so this subclass lifts three CUDA-only
assumptions when the accelerator is the CPU: the accelerator check, the device index (DeepSpeed wants
``torch.device("cpu", local_rank)``) and the device-index validation. On CUDA it behaves like the stock one.

Importing this module does not import DeepSpeed (Lightning's own module imports it lazily too); building the
strategy does, and raises :class:`~itwinai_lightning.errors.MissingExtraError` when it is missing.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import ClusterEnvironment
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from typing_extensions import override

from itwinai_lightning.errors import UserError, require
from itwinai_lightning.state_files import atomic_save, atomic_write, copied_to_cpu
from itwinai_lightning.strategies.launch_aware import LaunchAware

ZERO_STAGES = (0, 1, 2, 3)


def _load_config(config: str | Path | dict[str, Any] | None) -> dict[str, Any] | None:
    """A DeepSpeed config given as a dict (YAML mapping) or a path to a JSON file; ``None`` stays ``None``."""
    if config is None:
        return None
    if isinstance(config, dict):
        return copy.deepcopy(config)
    path = Path(config)
    if not path.is_file():
        raise UserError(f"strategy.init_args.config: DeepSpeed config file '{path}' does not exist")
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(
            f"strategy.init_args.config: '{path}' is not valid JSON ({err.msg}, line {err.lineno})"
        ) from None
    if not isinstance(loaded, dict):
        raise UserError(f"strategy.init_args.config: '{path}' must hold a JSON object")
    return loaded


class HPCDeepSpeedStrategy(LaunchAware, DeepSpeedStrategy):
    """DeepSpeed ZeRO on CPU or CUDA, under any launcher (torchrun, srun, mpirun, Lightning's own).

    Arguments (all settable from YAML under ``trainer.strategy.init_args``):

    ============================  ==========================================================================
    ``stage``                     ZeRO stage 0, 1, 2 or 3 (default 2)
    ``offload_optimizer``         keep optimizer state on the CPU (ZeRO 1-3)
    ``offload_parameters``        keep parameters on the CPU (ZeRO 3)
    ``config``                    a raw DeepSpeed config: a mapping or a path to a JSON file; it replaces the
                                  config built from the arguments above (Lightning fills in batch sizes,
                                  precision and gradient clipping from the Trainer)
    ``process_group_backend``     ``gloo`` / ``nccl`` / ``ccl``; default: nccl on CUDA, gloo on CPU
    ``timeout``, ``init_timeout`` as ``hpc_ddp``: the collective timeout in s (default 1800) and the first
                                  rendezvous window (default ``max(timeout, 300 s)``); a lost peer is one
                                  line naming it
    ``**kwargs``                  any other :class:`~lightning.pytorch.strategies.DeepSpeedStrategy` argument
    ============================  ==========================================================================

    Precision is ``trainer.precision``: ``32-true`` or ``bf16-mixed`` on CPU, also ``16-mixed`` on GPU.
    With an offloaded optimizer and a plain torch optimizer, ``zero_force_ds_cpu_optimizer`` defaults to false
    so any optimizer works (DeepSpeedCPUAdam is faster).

    The strategy logs nothing itself; checkpoints are DeepSpeed checkpoint *directories* (one shard per rank
    with ZeRO 1-3) and resume with ``ckpt_path``. Inside a background save (``TimedCheckpoint``) every rank
    copies the files DeepSpeed hands it to CPU memory and the checkpoint IO's writer thread writes them
    (each atomically); the directory's ``latest`` tag is written once every rank's files are on disk.
    """

    label = "hpc_deepspeed"

    def __init__(
        self,
        stage: int = 2,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        config: dict[str, Any] | str | None = None,
        process_group_backend: str | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        timeout: float | timedelta | None = 1800.0,
        init_timeout: float | timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        require("deepspeed", "deepspeed")
        if stage not in ZERO_STAGES:
            raise UserError(
                f"strategy.init_args.stage: ZeRO stage must be one of {ZERO_STAGES}, got {stage!r}"
            )
        if offload_parameters and stage != 3:
            raise UserError(
                "strategy.init_args.offload_parameters needs stage: 3 (ZeRO-3 partitions parameters)"
            )
        if offload_optimizer and stage == 0:
            raise UserError("strategy.init_args.offload_optimizer needs stage 1, 2 or 3")
        raw = _load_config(config)
        if raw is not None and offload_optimizer:
            raw.setdefault("zero_force_ds_cpu_optimizer", False)
        launch = self._launch_aware_kwargs(timeout, init_timeout, cluster_environment)
        super().__init__(
            zero_optimization=True,
            stage=stage,
            offload_optimizer=offload_optimizer,
            offload_parameters=offload_parameters,
            config=raw,
            process_group_backend=process_group_backend,
            **launch,
            **kwargs,
        )
        if raw is None and offload_optimizer and self.config is not None:
            self.config.setdefault("zero_force_ds_cpu_optimizer", False)
        self._writer_group: Any = None  # the background checkpoint writes' own gloo group

    @property
    def _on_cpu(self) -> bool:
        return self.accelerator is not None and not isinstance(self.accelerator, CUDAAccelerator)

    @property
    @override
    def root_device(self) -> torch.device:
        if self._on_cpu:
            return torch.device("cpu", self.local_rank)  # DeepSpeed reads the index as its local rank
        return super().root_device

    @override
    def setup_environment(self) -> None:
        if not self._on_cpu:
            super().setup_environment()
            return
        precision = getattr(self.precision_plugin, "precision", "32-true")
        if precision in ("16-mixed", "16-true"):
            raise UserError(
                f"trainer.precision: DeepSpeed on CPU has no fp16 ({precision!r}); "
                "use 'bf16-mixed' or '32-true'"
            )
        DDPStrategy.setup_environment(self)  # the stock DeepSpeed strategy stops here on a CPU accelerator

    @override
    def setup_distributed(self) -> None:
        with self.rendezvous_window():  # init_timeout for the first rendezvous, then timeout
            if not self._on_cpu:
                super().setup_distributed()
                return
            # on CPU every rank's device is "cpu": the stock device-index validation does not apply
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Inside a background save: DeepSpeed gathers its files as always, this rank keeps a CPU copy of
        each (training waits only for that), and the checkpoint IO's writer thread writes them, waits for
        every rank's writer (a gloo group of its own) and lets rank 0 write ``latest``, the mark of a
        complete checkpoint (:func:`itwinai_lightning.runs.newest.latest_checkpoint`). Otherwise:
        Lightning's synchronous save."""
        io: Any = self.checkpoint_io
        if storage_options is not None or not getattr(io, "background", False):
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        started = time.perf_counter()
        directory = Path(self.broadcast(filepath))
        files: list[tuple[Any, str]] = []
        engine = self.deepspeed_engine
        own, engine.checkpoint_engine = engine.checkpoint_engine, _copying_engine(files)
        try:
            engine.save_checkpoint(
                str(directory),
                client_state={
                    k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")
                },
                tag=_TAG,
                save_latest=False,  # written by the writer thread once every rank's files are on disk
                exclude_frozen_parameters=self.exclude_frozen_parameters,
            )
        finally:
            engine.checkpoint_engine = own
        group = self._checkpoint_group()
        rank_zero = self.global_rank == 0

        def write() -> None:
            for state, path in files:
                atomic_save(state, path)
            torch.distributed.barrier(group=group)
            if rank_zero:
                atomic_write(directory / "latest", _TAG.encode())

        io.write_in_background(write, directory, time.perf_counter() - started)

    def _checkpoint_group(self) -> Any:
        """A gloo group of its own for the background writes' barrier (never beside training's)."""
        if self._writer_group is None:
            self._writer_group = torch.distributed.new_group(backend="gloo")
        return self._writer_group


#: the tag (subdirectory) Lightning's DeepSpeed strategy saves under
_TAG = "checkpoint"


def _copying_engine(files: list[tuple[Any, str]]) -> Any:
    """A DeepSpeed checkpoint engine that appends ``(CPU copy of the state, path)`` to ``files`` for each
    file DeepSpeed saves, instead of writing it."""
    from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

    class Copying(CheckpointEngine):  # type: ignore[misc]
        def create(self, info: Any) -> None:
            return None

        def save(self, state_dict: Any, path: str) -> None:
            files.append((copied_to_cpu(state_dict)[0], str(path)))

        def load(self, path: str, map_location: Any = None) -> Any:
            return torch.load(path, map_location=map_location, weights_only=False)

        def commit(self, info: Any) -> bool:
            return True

        def preserves_storage_sharing(self) -> bool:
            return False  # DeepSpeed need not clone: the copy above is compact

    return Copying()
