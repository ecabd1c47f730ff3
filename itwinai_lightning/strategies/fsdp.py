"""``hpc_fsdp``: Lightning's FSDP, launcher-aware as ``hpc_ddp`` is, configurable from YAML, on CUDA and CPU.

Lightning's :class:`~lightning.pytorch.strategies.FSDPStrategy` knows none of the launchers, timeouts and
launch checks of :class:`~itwinai_lightning.strategies.launch_aware.LaunchAware`, takes its wrap and
checkpointing policies only as Python objects, and refuses the CPU. This subclass adds the first, turns
class *names* from YAML into policies, and runs on CPU with gloo, where torch's FSDP supports it:

==========================  ===================  ======================================================
feature                     CUDA (nccl)           CPU (gloo)
==========================  ===================  ======================================================
full / sharded checkpoints  yes                   yes (full ones gathered without ``offload_to_cpu``)
auto-wrap, act. checkpoint  yes                   yes
``bf16-mixed`` precision    yes                   yes (slow: no bf16 kernels on most CPUs)
``16-mixed`` precision      yes                   no: one clear line
``cpu_offload``             yes                   no: parameters already live on the CPU
HYBRID_SHARD / device mesh  yes                   no: Lightning builds the mesh on CUDA only
==========================  ===================  ======================================================

Importing this module does not import anything beyond torch and Lightning.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins import ClusterEnvironment
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from typing_extensions import override

from itwinai_lightning import compat
from itwinai_lightning.errors import UserError
from itwinai_lightning.strategies.launch_aware import LaunchAware

SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")
STATE_DICT_TYPES = ("full", "sharded")
_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16}
_DTYPES |= {"fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
_KEY = "trainer.strategy.init_args"


def _dotted(name: str) -> type[nn.Module] | None:
    """``package.module.Class`` -> the class (import errors become one line); a bare name -> ``None``."""
    if "." not in name:
        return None
    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        hint = "give 'package.module.Class' or a class name"
        raise UserError(f"{_KEY}: cannot import '{name}'; {hint}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"{_KEY}: '{name}' is not a torch.nn.Module class")
    return cls


def resolve_classes(names: Iterable[str], model: nn.Module, key: str) -> set[type[nn.Module]]:
    """Module classes named in YAML: dotted import paths, or bare names of classes the model contains."""
    present = {type(m).__name__: type(m) for m in model.modules()}
    classes: set[type[nn.Module]] = set()
    for name in names:
        cls = _dotted(name) or present.get(name)
        if cls is None:
            known = ", ".join(sorted(present)) or "none"
            raise UserError(f"{_KEY}.{key}: the model has no module of class '{name}' (it has: {known})")
        classes.add(cls)
    return classes


def mixed_precision_from(spec: Mapping[str, str] | None) -> Any:
    """``{param_dtype: bfloat16, reduce_dtype: float32, buffer_dtype: bfloat16}`` -> torch MixedPrecision."""
    if not spec:
        return None
    from torch.distributed.fsdp import MixedPrecision

    fields = ("param_dtype", "reduce_dtype", "buffer_dtype")
    unknown = sorted(set(spec) - set(fields))
    if unknown:
        raise UserError(f"{_KEY}.mixed_precision: unknown key {unknown[0]!r}; use {', '.join(fields)}")
    dtypes: dict[str, Any] = {}
    for field, value in spec.items():
        if value not in _DTYPES:
            raise UserError(f"{_KEY}.mixed_precision.{field}: {value!r} is not one of {', '.join(_DTYPES)}")
        dtypes[field] = _DTYPES[value]
    return MixedPrecision(**dtypes)


class HPCFSDPStrategy(LaunchAware, FSDPStrategy):
    """Fully sharded data parallelism under torchrun, srun, mpirun, Ray or Lightning, on CUDA or CPU.

    Arguments (all settable from YAML under ``trainer.strategy.init_args``):

    ===========================  =============================================================================
    ``auto_wrap``                module classes that become their own FSDP unit: bare class names found in
                                 the model (``Block``) or import paths (``torch.nn.TransformerEncoderLayer``)
    ``min_num_params``           or: wrap every submodule with at least this many parameters
    ``activation_checkpointing`` module classes whose activations are recomputed in the backward pass
    ``mixed_precision``          ``{param_dtype, reduce_dtype, buffer_dtype}`` as dtype names; default: from
                                 ``trainer.precision`` (``bf16-mixed``, ``16-mixed``, ``bf16-true``)
    ``cpu_offload``              keep parameters and gradients on the CPU between uses (CUDA only)
    ``sharding_strategy``        ``FULL_SHARD`` (default), ``SHARD_GRAD_OP``, ``NO_SHARD``, ``HYBRID_SHARD``
    ``state_dict_type``          ``sharded`` (default: one file per rank, a directory) or ``full`` (one file
                                 gathered on rank 0); both resume with ``ckpt_path``
    ``timeout`` ...              as ``hpc_ddp``: ``timeout``, ``init_timeout``, ``process_group_backend``
    ===========================  =============================================================================

    :meth:`full_state_dict` gathers the whole model's weights (for export, the model registry, inference).
    The strategy logs nothing itself.
    """

    label = "hpc_fsdp"

    def __init__(
        self,
        auto_wrap: list[str] | None = None,
        min_num_params: int | None = None,
        activation_checkpointing: list[str] | None = None,
        mixed_precision: dict[str, str] | None = None,
        cpu_offload: bool = False,
        sharding_strategy: str = "FULL_SHARD",
        state_dict_type: Literal["full", "sharded"] = "sharded",
        timeout: float | timedelta | None = 1800.0,
        init_timeout: float | timedelta | None = None,
        process_group_backend: str | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        **kwargs: Any,
    ) -> None:
        if auto_wrap and min_num_params is not None:
            raise UserError(f"{_KEY}: give auto_wrap (module classes) or min_num_params, not both")
        if min_num_params is not None and min_num_params < 1:
            raise UserError(f"{_KEY}.min_num_params must be >= 1, got {min_num_params}")
        if sharding_strategy not in SHARDING:
            choices = ", ".join(SHARDING)
            raise UserError(f"{_KEY}.sharding_strategy: {sharding_strategy!r} is not one of {choices}")
        if state_dict_type not in STATE_DICT_TYPES:
            raise UserError(f"{_KEY}.state_dict_type: {state_dict_type!r} is not 'full' or 'sharded'")
        for name in [*(auto_wrap or []), *(activation_checkpointing or [])]:
            _dotted(name)  # import paths fail here, before any process starts; bare names at setup
        launch = self._launch_aware_kwargs(timeout, init_timeout, cluster_environment)
        super().__init__(
            process_group_backend=process_group_backend,
            cpu_offload=cpu_offload,
            mixed_precision=mixed_precision_from(mixed_precision),
            sharding_strategy=sharding_strategy,  # type: ignore[arg-type]
            state_dict_type=state_dict_type,
            **launch,
            **kwargs,
        )
        self._wrap_names = list(auto_wrap or [])
        self._min_num_params = min_num_params
        self._checkpoint_names = list(activation_checkpointing or [])
        self._hidden_example_input: Any = None
        self._writer_group: Any = None  # the background checkpoint writes' own gloo group

    # ---------------------------------------------------------------- launch, devices, process group
    @property
    def on_cpu(self) -> bool:
        return self.accelerator is not None and not isinstance(self.accelerator, CUDAAccelerator)

    @override
    def setup_environment(self) -> None:
        if self.on_cpu:
            self._check_cpu_settings()
        with self.rendezvous_window():
            super().setup_environment()

    def _check_cpu_settings(self) -> None:
        precision = getattr(self.precision_plugin, "precision", "32-true")
        if precision in ("16-mixed", "16-true"):
            hint = "use 'bf16-mixed' or '32-true'"
            raise UserError(f"trainer.precision: FSDP on CPU has no fp16 ({precision!r}); {hint}")
        if self.cpu_offload is not None and self.cpu_offload.offload_params:
            raise UserError(f"{_KEY}.cpu_offload needs a GPU (on CPU, parameters are in host memory)")
        if "HYBRID" in str(self.sharding_strategy) or "device_mesh" in self.kwargs:
            raise UserError(f"{_KEY}.sharding_strategy: hybrid sharding (a device mesh) needs CUDA devices")

    # ---------------------------------------------------------------- wrapping
    @override
    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self._wrap_names:
            classes = resolve_classes(self._wrap_names, model, "auto_wrap")
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
        elif self._min_num_params is not None:
            from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

            policy = functools.partial(size_based_auto_wrap_policy, min_num_params=self._min_num_params)
            self.kwargs["auto_wrap_policy"] = policy
        checkpointed = resolve_classes(self._checkpoint_names, model, "activation_checkpointing")
        already = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
        if self.on_cpu and not already:
            # torch's FSDP accepts the CPU only as an explicit device; Lightning passes the CUDA index
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
        else:
            model = super()._setup_model(model)
        if checkpointed:
            _checkpoint_activations(model, checkpointed)
        return model

    @override
    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        # Lightning's model summary runs example_input_array through the bare module, whose parameters
        # FSDP holds sharded: hide it while FSDP owns the module (the summary still lists the layers)
        module = self.lightning_module
        if module is not None and module.example_input_array is not None:
            self._hidden_example_input = module.example_input_array
            module.example_input_array = None

    @override
    def teardown(self) -> None:
        module = self.lightning_module
        if module is not None and self._hidden_example_input is not None:
            module.example_input_array = self._hidden_example_input
            self._hidden_example_input = None
        super().teardown()

    # ---------------------------------------------------------------- state dicts
    def _full_context(self, rank0_only: bool = True) -> AbstractContextManager[Any]:
        """FSDP's full-state-dict mode; on CPU without ``offload_to_cpu`` (torch frees what it clones)."""
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.api import FullOptimStateDictConfig

        offload = not self.on_cpu and self.world_size > 1
        assert self.model is not None
        return FSDP.state_dict_type(
            module=self.model,
            state_dict_type=StateDictType.FULL_STATE_DICT,
            state_dict_config=FullStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
            optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
        )

    def full_state_dict(self, rank0_only: bool = True) -> dict[str, torch.Tensor]:
        """The whole model's weights, gathered from every rank (a collective: call it on all ranks).

        With ``rank0_only`` the other ranks get ``{}``. Keys are the LightningModule's own, so the result
        loads into a fresh instance with ``load_state_dict``.
        """
        assert self.model is not None
        with self._full_context(rank0_only):
            return dict(self.model.state_dict())

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self._state_dict_type == "full":
            return self.full_state_dict()
        return super().lightning_module_state_dict()

    @override
    def optimizer_state(self, optimizer: Any) -> dict[str, torch.Tensor]:
        if self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer  # the wrapped torch optimizer (public property)
        with self._full_context():
            state = FSDP.optim_state_dict(self.model, optimizer)  # type: ignore[arg-type]
            if self.global_rank == 0:
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)  # type: ignore[arg-type]
            return state

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """A sharded state inside a background save (``TimedCheckpoint``): training waits while every
        rank copies its shards; the checkpoint IO's writer thread writes them with torch's distributed
        checkpoint (over a gloo group of its own), whose ``.metadata`` comes last: the mark of a complete
        checkpoint (:func:`itwinai_lightning.runs.newest.latest_checkpoint`). Anything else: Lightning's."""
        import torch.distributed.checkpoint as dcp

        io: Any = self.checkpoint_io
        if (
            self._state_dict_type != "sharded"
            or storage_options is not None
            or not getattr(io, "background", 0)
        ):
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        started = time.perf_counter()
        path = Path(self.broadcast(filepath))
        if path.is_file():
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        shards = {"model": checkpoint.pop("state_dict")}
        shards.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        shards = _copied(shards)
        if self.global_rank == 0:  # the trainer state first: the shards' .metadata marks the end
            torch.save(checkpoint, path / compat.fsdp_metadata_filename())
        group = self._checkpoint_group()
        io.write_in_background(
            lambda: dcp.save(shards, checkpoint_id=path, process_group=group),
            path,
            time.perf_counter() - started,
        )

    def _checkpoint_group(self) -> Any:
        """A gloo group of its own for the background writes' collectives (never beside training's)."""
        if self._writer_group is None:
            self._writer_group = torch.distributed.new_group(backend="gloo")
        return self._writer_group

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        except (ValueError, IndexError) as err:
            # Lightning's loaders index the optimizer's per-parameter state, which plain SGD has not
            stateless = 'must have the keys "state"' in str(err) or isinstance(err, IndexError)
            if not stateless:
                raise
            path = Path(checkpoint_path)
            if path.is_dir():
                raise UserError(
                    f"{path}: resuming a sharded FSDP checkpoint needs an optimizer with state "
                    f"(Adam, SGD with momentum); with plain SGD set {_KEY}.state_dict_type: full"
                ) from None
        # a full checkpoint of a stateless optimizer: the weights are loaded; restore the hyperparameters
        checkpoint = torch.load(path, map_location="cpu", weights_only=bool(weights_only))
        checkpoint.pop("state_dict", None)
        for optimizer, saved in zip(self.optimizers, checkpoint.get("optimizer_states", []), strict=True):
            for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=True):
                group.update({k: v for k, v in saved_group.items() if k != "params"})
        return dict(checkpoint)


def _copied(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every tensor copied (a sharded tensor: its local shards), so training may go on."""
    from lightning_utilities.core.apply_func import apply_to_collection

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        if hasattr(tensor, "local_shards"):  # a ShardedTensor: this rank's shards, copied in place
            for shard in tensor.local_shards():
                shard.tensor = shard.tensor.detach().clone()
            return tensor
        return tensor.detach().clone()

    return apply_to_collection(state, torch.Tensor, copy)  # type: ignore[no-any-return]


def _checkpoint_activations(model: nn.Module, classes: set[type[nn.Module]]) -> None:
    """Recompute the activations of every module of ``classes`` in the backward pass."""
    from itwinai_lightning import compat

    CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper = compat.activation_checkpointing()
    wrapper = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    kinds = tuple(classes)
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=wrapper, check_fn=lambda m: isinstance(m, kinds)
    )
