"""Ranks agree on "stop now" without slowing the training step.

A signal reaches the ranks at slightly different moments, so each rank's flag alone cannot decide: they
must stop at the same step or the next collective deadlocks. :class:`StopVote` sums the flags over a
dedicated gloo process group with a *non-blocking* all-reduce started at one check and read at the next,
so the vote never waits on the network (and never syncs a GPU); the price is one check of delay.
Without torch.distributed (one process, or Horovod) it falls back to the strategy's blocking vote.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch


class StopVote:
    """``vote(local) -> bool``: True on every rank at the same call once any rank voted True."""

    def __init__(self) -> None:
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._strategy: Any = None
        self._world = 1

    def setup(self, trainer: pl.Trainer) -> None:
        """Call on every rank (a new process group is a collective call)."""
        import torch.distributed as dist

        self._strategy = trainer.strategy
        self._world = int(trainer.world_size)
        if self._world > 1 and dist.is_available() and dist.is_initialized():
            self._group = dist.new_group(backend="gloo")

    def vote(self, local: bool) -> bool:
        if self._world <= 1:
            return local
        if self._group is None:  # e.g. Horovod: the strategy's own (blocking) reduction
            return bool(self._strategy.reduce_boolean_decision(local, all=False))
        import torch.distributed as dist

        decided = False
        if self._pending is not None:
            work, flags = self._pending
            work.wait()
            decided = bool(flags.item() > 0)
            self._pending = None
        if not decided:
            flags = torch.tensor([1.0 if local else 0.0])
            self._pending = (dist.all_reduce(flags, group=self._group, async_op=True), flags)
        return decided

    def close(self) -> None:
        """Finish the outstanding vote (every rank started it, so it completes) and free the group."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
        if self._group is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group(self._group)
            self._group = None
