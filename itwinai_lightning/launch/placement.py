"""Where every rank of a run really runs: its host, its launcher's view, gathered onto every rank.

The RunRecord's ``hostnames``, ``num_nodes``, ``devices_per_node`` and ``launcher`` come from here, not from
rank 0 alone or from the Trainer's arguments: one ``all_gather`` through the strategy (so it works under
DDP, DeepSpeed, Horovod and Ray alike) of each rank's host name and launch context.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from itwinai_lightning.launch.where import ClusterInfo, detect

if TYPE_CHECKING:
    import lightning.pytorch as pl

#: Bytes of a host name carried per rank (longer names are cut; 64 is the POSIX HOST_NAME_MAX).
NAME_BYTES = 64
_INTS = 3  # rank, local_rank, node_rank as the launcher reported them


@dataclass(frozen=True)
class RankPlace:
    """One rank's place: global rank, its host, local rank and node index as the launcher set them."""

    rank: int
    hostname: str
    local_rank: int
    node_rank: int


@dataclass(frozen=True)
class Placement:
    """Every rank's place, in rank order, and the figures the RunRecord derives from it."""

    launcher: str
    ranks: tuple[RankPlace, ...]

    @property
    def hostnames(self) -> list[str]:
        """Distinct hosts in the order of their first rank (rank 0's host first)."""
        seen: dict[str, None] = {}
        for place in self.ranks:
            seen.setdefault(place.hostname, None)
        return list(seen)

    @property
    def num_nodes(self) -> int:
        return len(self.hostnames)

    @property
    def devices_per_node(self) -> int:
        """Ranks on the busiest host (equal on every host in a well-formed launch)."""
        counts: dict[str, int] = {}
        for place in self.ranks:
            counts[place.hostname] = counts.get(place.hostname, 0) + 1
        return max(counts.values()) if counts else 1

    def record_fields(self) -> dict[str, Any]:
        return {
            "launcher": self.launcher,
            "hostnames": self.hostnames,
            "num_nodes": self.num_nodes,
            "devices_per_node": self.devices_per_node,
            "world_size": len(self.ranks),
            "ranks": [
                {"rank": p.rank, "hostname": p.hostname, "local_rank": p.local_rank, "node_rank": p.node_rank}
                for p in self.ranks
            ],
        }


def lost_places(error: str, placed: Placement | None, own_rank: int) -> tuple[RankPlace, ...] | None:
    """The ranks a collective error points at: those on the host of the peer address in ``error`` (gloo
    names it, e.g. ``[10.0.0.12]:4321``), else every other rank; None when the placement is unknown."""
    import re
    import socket

    if placed is None:
        return None
    others = [p for p in placed.ranks if p.rank != own_rank]
    addresses = set(re.findall(r"\[([0-9a-fA-F.:]+)\]:\d+", error))
    if addresses:
        hit = []
        for place in others:
            try:
                if socket.gethostbyname(place.hostname) in addresses:
                    hit.append(place)
            except OSError:
                continue
        if hit:
            return tuple(hit)
    return tuple(others)


def lost_peer(error: str, placed: Placement | None, own_rank: int) -> str:
    """:func:`lost_places` in words: ``rank 1 on node2, ...`` (``another rank`` when unknown)."""
    places = lost_places(error, placed, own_rank)
    return ", ".join(f"rank {p.rank} on {p.hostname}" for p in places or ()) or "another rank"


def own_place(rank: int, info: ClusterInfo | None = None) -> RankPlace:
    info = detect() if info is None else info
    return RankPlace(rank, platform.node(), info.local_rank, info.node_rank)


def encode(place: RankPlace) -> list[int]:
    name = place.hostname.encode()[:NAME_BYTES]
    return [
        place.rank,
        place.local_rank,
        place.node_rank,
        len(name),
        *name,
        *([0] * (NAME_BYTES - len(name))),
    ]


def decode(row: list[int]) -> RankPlace:
    rank, local_rank, node_rank, length = (int(v) for v in row[: _INTS + 1])
    name = bytes(int(v) for v in row[_INTS + 1 : _INTS + 1 + length]).decode(errors="replace")
    return RankPlace(rank, name, local_rank, node_rank)


def known(trainer: pl.Trainer | None) -> Placement | None:
    """The placement already gathered for this Trainer, if any (no collective)."""
    from itwinai_lightning import per_trainer

    return per_trainer.get(trainer, per_trainer.PLACEMENT)


def of(trainer: pl.Trainer) -> Placement:
    """The placement gathered for this Trainer; gathered now (a collective) if it was not yet."""
    from itwinai_lightning import per_trainer

    placed = known(trainer)
    if placed is None:
        placed = gather(trainer)
        per_trainer.put(trainer, per_trainer.PLACEMENT, placed)
    return placed


def gather(trainer: pl.Trainer) -> Placement:
    """Every rank's place (a collective: call on all ranks). One process: this host alone."""
    import torch

    info = detect()
    place = own_place(int(trainer.global_rank), info)
    if trainer.world_size <= 1:
        return Placement(info.launcher, (place,))
    row = torch.tensor(encode(place), dtype=torch.int64, device=trainer.strategy.root_device)
    gathered = trainer.strategy.all_gather(row)
    rows = gathered.reshape(-1, row.numel()).cpu().tolist()
    places = sorted((decode(r) for r in rows), key=lambda p: p.rank)
    return Placement(info.launcher, tuple(places))
