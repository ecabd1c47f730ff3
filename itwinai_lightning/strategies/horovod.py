"""``horovod``: data-parallel training with Horovod for Lightning 2.x (Lightning dropped Horovod in 2.0).

Each process is started by ``horovodrun``, ``mpirun`` or ``srun`` (one process per device, ``devices: 1``);
Horovod, not Lightning, knows the ranks. Under ``mpirun``/``srun`` a gloo-only Horovod build finds its
peers through the rendezvous that :mod:`~itwinai_lightning.strategies.horovod_rendezvous` runs before
``hvd.init()``. Importing this module does not import Horovod; building the strategy does, and raises
:class:`~itwinai_lightning.errors.MissingExtraError` naming ``itwinai-lightning build-horovod``.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.utilities.distributed import ReduceOp
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only
from torch.optim import Optimizer
from typing_extensions import override

from itwinai_lightning.errors import UserError, require
from itwinai_lightning.launch import where as cluster
from itwinai_lightning.strategies import horovod_rendezvous as rendezvous
from itwinai_lightning.strategies.launch_aware import LaunchAware

INSTALL_HINT = (
    "itwinai-lightning build-horovod (Horovod 0.28.1 is not on PyPI in a form that builds against torch 2.x; "
    "this builds it against your torch, about 5 minutes, once)"
)
COMPRESSIONS = ("none", "fp16")
OPS = ("average", "sum", "adasum")
_REDUCE_NAMES = {"mean": "average", "avg": "average", "sum": "sum", "max": "max", "min": "min"}


def hvd() -> Any:
    """``horovod.torch``, imported on first use (MissingExtraError naming the install script if absent)."""
    return require("horovod.torch", "horovod", hint=INSTALL_HINT)


def _op_name(reduce_op: ReduceOp | str | None) -> str:
    if reduce_op is None:
        return "average"
    if isinstance(reduce_op, str):
        name = _REDUCE_NAMES.get(reduce_op.lower())
    else:
        name = next((n for n, op in _TORCH_OPS.items() if reduce_op == op), None)
    if name is None:
        raise ValueError(f"HorovodStrategy.reduce: unsupported reduce_op {reduce_op!r}")
    return name


_TORCH_OPS = {"sum": ReduceOp.SUM, "max": ReduceOp.MAX, "min": ReduceOp.MIN, "average": ReduceOp.AVG}


class HorovodEnvironment(ClusterEnvironment):
    """Ranks as Horovod sees them (after ``hvd.init()``), whatever launcher started the processes."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR", cluster.detect().master_addr)

    @property
    def main_port(self) -> int:
        return int(os.environ.get("HOROVOD_GLOO_RENDEZVOUS_PORT", "0"))

    @staticmethod
    def detect() -> bool:
        return "HOROVOD_RANK" in os.environ

    def world_size(self) -> int:
        return int(hvd().size())

    def set_world_size(self, size: int) -> None:
        pass  # Horovod owns it

    def global_rank(self) -> int:
        return int(hvd().rank())

    def set_global_rank(self, rank: int) -> None:
        pass  # Horovod owns it

    def local_rank(self) -> int:
        return int(hvd().local_rank())

    def node_rank(self) -> int:
        return int(hvd().cross_rank())


class HorovodStrategy(LaunchAware, ParallelStrategy):
    """Horovod data parallelism: allreduce of gradients through ``hvd.DistributedOptimizer``.

    Arguments (YAML ``trainer.strategy.init_args``):

    ============================  ==========================================================================
    ``compression``               ``none`` or ``fp16`` (gradients sent as float16, halves the bytes)
    ``op``                        ``average`` (default, DDP semantics), ``sum`` or ``adasum`` (needs a
                                  Horovod built with MPI)
    ``backward_passes_per_step``  gradients accumulated locally before one allreduce; defaults to
                                  ``trainer.accumulate_grad_batches`` and must agree with it
    ``gradient_predivide_factor`` split the averaging before/after the sum (``op: average`` only)
    ``rendezvous_port``           under ``mpirun``/``srun``: port of the gloo rendezvous server that rank 0
                                  starts (default ``MASTER_PORT``, else derived from the job id)
    ``timeout``                   seconds a gloo collective waits for the other ranks
                                  (``HOROVOD_GLOO_TIMEOUT_SECONDS``; default Horovod's 30 s); a peer that
                                  died or hung is then named in one line, as with ``hpc_ddp``
    ============================  ==========================================================================

    Shares the launch-aware mixin with ``hpc_ddp``, ``hpc_fsdp`` and ``hpc_deepspeed``: device pinning
    (one GPU per local rank, or the only visible one), the launch check and the lost-peer message.

    At the start of fit, rank 0's parameters, optimizer hyper-parameters and (non-empty) optimizer state are
    broadcast to all ranks; learning rates are *not* scaled by the number of workers (same semantics as DDP:
    gradients are averaged over the global batch). Lightning's metric sync (``sync_dist``), ``all_gather``,
    ``broadcast`` and ``barrier`` go through Horovod; samplers get Horovod's rank and size. The strategy logs
    nothing itself. Checkpoints are ordinary Lightning checkpoints written by rank 0.
    """

    strategy_name = "horovod"
    label = "horovod"

    def __init__(
        self,
        compression: str = "none",
        op: str = "average",
        backward_passes_per_step: int | None = None,
        gradient_predivide_factor: float = 1.0,
        rendezvous_port: int | None = None,
        timeout: float | None = None,
        accelerator: Any = None,
        parallel_devices: list[torch.device] | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise UserError(
                f"strategy.init_args.compression must be one of {COMPRESSIONS}, got {compression!r}"
            )
        if op not in OPS:
            raise UserError(f"strategy.init_args.op must be one of {OPS}, got {op!r}")
        if backward_passes_per_step is not None and backward_passes_per_step < 1:
            raise UserError("strategy.init_args.backward_passes_per_step must be >= 1")
        if gradient_predivide_factor != 1.0 and op != "average":
            raise UserError("strategy.init_args.gradient_predivide_factor needs op: average")
        if rendezvous_port is not None and not 0 < rendezvous_port < 65536:
            raise UserError(f"strategy.init_args.rendezvous_port must be in 1..65535, got {rendezvous_port}")
        horovod = hvd()
        if op == "adasum" and not horovod.mpi_built():
            raise UserError(
                f"strategy.init_args.op: adasum needs Horovod built with MPI; rebuild: {INSTALL_HINT}"
            )
        launch = self._launch_aware_kwargs(timeout, None, HorovodEnvironment())
        self._timeout = launch["timeout"]
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=launch["cluster_environment"],
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
        )
        self.compression = compression
        self.op = op
        self.backward_passes_per_step = backward_passes_per_step
        self.gradient_predivide_factor = gradient_predivide_factor
        self.rendezvous_port = rendezvous_port
        self._exit_stack: ExitStack | None = None

    # ---- ranks and devices -------------------------------------------------------------------------------
    def set_world_ranks(self) -> None:
        """Called by the Trainer while it is built: start Horovod and check it sees the whole job."""
        horovod = hvd()
        launched = cluster.detect()
        if not horovod.is_initialized() and rendezvous.needs_rendezvous(launched):
            rendezvous.prepare(launched, port=self.rendezvous_port)  # mpirun/srun: gloo rendezvous
        if self.timeout_s is not None and not horovod.is_initialized():
            os.environ["HOROVOD_GLOO_TIMEOUT_SECONDS"] = str(max(1, round(self.timeout_s)))
        horovod.init()
        if launched.world_size > 1 and horovod.size() != launched.world_size:
            raise UserError(
                f"strategy: horovod sees {horovod.size()} process(es) but {launched.launcher} started "
                f"{launched.world_size}; was HOROVOD_RANK/HOROVOD_SIZE set by hand? Unset them, or launch "
                f"with horovodrun, mpirun or srun"
            )
        rank_zero_only.rank = self.global_rank  # type: ignore[attr-defined]

    @property
    @override
    def global_rank(self) -> int:
        return int(hvd().rank())

    @property
    @override
    def local_rank(self) -> int:
        return int(hvd().local_rank())

    @property
    @override
    def world_size(self) -> int:
        return int(hvd().size())

    @property
    def is_distributed(self) -> bool:
        return True

    @property
    @override
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    @override
    def setup_environment(self) -> None:
        if isinstance(self.accelerator, CUDAAccelerator):
            torch.cuda.set_device(self.root_device)
        super().setup_environment()

    @override
    def model_to_device(self) -> None:
        assert self.model is not None
        self.model.to(self.root_device)

    # ---- optimizers ---------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: Any) -> None:
        super().setup(trainer)  # accelerator, model on its device, optimizers, precision
        if trainer.state.fn != TrainerFn.FITTING:
            return
        passes = self._resolve_backward_passes(trainer)
        horovod = hvd()
        assert self.lightning_module is not None
        horovod.broadcast_parameters(self.lightning_module.state_dict(), root_rank=0)
        wrapped = [self._wrap(opt, passes) for opt in self.optimizers]
        for config in self.lr_scheduler_configs:  # schedulers must step the wrapped optimizer
            original = getattr(config.scheduler, "optimizer", None)
            if original in self.optimizers:
                config.scheduler.optimizer = wrapped[self.optimizers.index(original)]
        self.optimizers = wrapped
        self._exit_stack = ExitStack()
        if self.op != "adasum":
            for opt in wrapped:  # we synchronize right after backward (see optimizer_step)
                self._exit_stack.enter_context(opt.skip_synchronize())  # type: ignore[attr-defined]

    def _resolve_backward_passes(self, trainer: Any) -> int:
        accumulate = int(trainer.accumulate_grad_batches)
        passes = self.backward_passes_per_step
        if passes is None:
            return accumulate
        if accumulate == 1 and passes > 1:
            rank_zero_info(
                f"horovod: backward_passes_per_step={passes} -> trainer.accumulate_grad_batches={passes}"
            )
            trainer.accumulate_grad_batches = passes
        elif passes != accumulate:
            raise UserError(
                f"strategy.init_args.backward_passes_per_step ({passes}) disagrees with "
                f"trainer.accumulate_grad_batches ({accumulate}); set one of them, or both to the same value"
            )
        return passes

    def _wrap(self, optimizer: Optimizer, passes: int) -> Optimizer:
        """Broadcast rank 0's optimizer settings and state, then wrap in ``hvd.DistributedOptimizer``."""
        horovod = hvd()
        groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        settings = horovod.broadcast_object(groups, root_rank=0)
        for group, setting in zip(optimizer.param_groups, settings, strict=True):
            group.update(setting)
        if optimizer.state_dict()["state"]:  # a fresh optimizer has none: nothing to broadcast, and no
            horovod.broadcast_optimizer_state(optimizer, root_rank=0)  # dummy step that would move weights
        assert self.lightning_module is not None
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        named = [(n, p) for n, p in self.lightning_module.named_parameters() if id(p) in owned]
        kwargs: dict[str, Any] = {
            "named_parameters": named,
            "compression": horovod.Compression.fp16
            if self.compression == "fp16"
            else horovod.Compression.none,
            "backward_passes_per_step": passes,
            "op": {"average": horovod.Average, "sum": horovod.Sum, "adasum": horovod.Adasum}[self.op],
        }
        if self.gradient_predivide_factor != 1.0:
            kwargs["gradient_predivide_factor"] = self.gradient_predivide_factor
        wrapped = horovod.DistributedOptimizer(optimizer, **kwargs)
        wrapped.load_state_dict(optimizer.state_dict())  # DistributedOptimizer starts from an empty state
        return wrapped

    @override
    def optimizer_step(self, optimizer: Any, closure: Any, model: Any = None, **kwargs: Any) -> Any:
        """Run the closure (forward + backward), wait for the gradient allreduce, then step.

        Lightning runs backward *inside* ``optimizer.step(closure)``, after Horovod's own ``step`` would have
        synchronized, so synchronization is skipped there and done here, before gradient clipping and
        ``on_before_optimizer_step`` see the gradients.
        """
        hvd_optimizer = getattr(optimizer, "optimizer", optimizer)  # unwrap LightningOptimizer

        def synchronized_closure() -> Any:
            result = closure()
            hvd_optimizer.synchronize()
            return result

        return super().optimizer_step(optimizer, synchronized_closure, model, **kwargs)

    # ---- collectives --------------------------------------------------------------------------------------
    @override
    def reduce(self, tensor: Any, group: Any = None, reduce_op: ReduceOp | str | None = "mean") -> Any:
        if not isinstance(tensor, torch.Tensor):
            return tensor
        horovod = hvd()
        op = {"average": horovod.Average, "sum": horovod.Sum, "max": horovod.Max, "min": horovod.Min}
        return horovod.allreduce(tensor.contiguous(), op=op[_op_name(reduce_op)])

    @override
    def all_gather(self, tensor: torch.Tensor, group: Any = None, sync_grads: bool = False) -> torch.Tensor:
        """``(world_size, *tensor.shape)``, like ``torch.distributed.all_gather`` stacked."""
        stacked = tensor.contiguous().unsqueeze(0)
        if sync_grads:
            return hvd().allgather(stacked)
        with torch.no_grad():
            return hvd().allgather(stacked)

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return hvd().broadcast_object(obj, root_rank=src)

    @override
    def barrier(self, name: str | None = None) -> None:
        hvd().barrier()

    @override
    def teardown(self) -> None:
        if self._exit_stack is not None:
            self._exit_stack.close()
            self._exit_stack = None
        if isinstance(self.accelerator, CUDAAccelerator) and self.lightning_module is not None:
            self.lightning_module.cpu()
            torch.cuda.empty_cache()
        super().teardown()
