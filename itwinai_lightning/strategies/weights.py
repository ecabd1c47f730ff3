"""The whole model's weights under any strategy: FSDP gathers its shards, the others hold a replica."""

from __future__ import annotations

from typing import Any

import torch


def gathered_state_dict(trainer: Any, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The LightningModule's full ``state_dict`` on CPU (a collective under FSDP: call it on every rank).

    With ``rank0_only`` under FSDP the other ranks get ``{}``; replicating strategies return the local copy.
    """
    gather = getattr(trainer.strategy, "full_state_dict", None)
    state = gather(rank0_only=rank0_only) if callable(gather) else trainer.lightning_module.state_dict()
    return {key: value.detach().cpu().clone() for key, value in state.items()}
