"""Warm DDP ranks for ``workers_per_trial: N`` trials, kept from one trial to the next.

==========================  ===========================================================================
piece                       what it is
==========================  ===========================================================================
resources                   one placement group per trial, booked by Tune (``PlacementGroupFactory``):
                            N bundles of ``cpus_per_worker`` / ``gpus_per_worker``
rank 0                      the trial's own process (Tune's function trainable, bundle 0): builds the
                            run, reports every epoch and checkpoint to Tune itself
ranks 1..N-1                Ray actors of this module, started in bundles 1..N-1 of that placement group
reuse                       Tune's ``reuse_actors`` keeps the trainable process *and* its placement group
                            for the next trial; :data:`_POOL` (module state of that process) keeps the
                            rank actors, so the next trial finds them with torch and Lightning imported
process group               a fresh gloo/NCCL group per trial, on a fresh port (ranks may have changed)
failure                     a rank that raises prints its traceback and exits, which breaks the others'
                            collectives; rank 0 then kills the pool and the trial fails; Tune's retry
                            (``max_failures``) gets fresh actors. Actors die with their owner, the
                            trainable process. Where rank 0 cannot notice (it waits for a dead rank in
                            the rendezvous), :func:`watch` ends the trial process after
                            ``DEAD_RANK_GRACE_S`` instead of letting it wait for the DDP timeout.
==========================  ===========================================================================

Ray is imported inside functions only.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itwinai_lightning.launch.ray_ranks import rank_envs as envs_of_ranks
from itwinai_lightning.tune.trial import fit_trial

#: extra arguments of every rank's fit: the ``ray_ddp`` strategy in worker mode, one device per process
RANK_ARGS = ("--trainer.strategy=ray_ddp", "--trainer.devices=1", "--trainer.num_nodes=1")
#: seconds a reused rank may take to answer before the pool is replaced
PING_TIMEOUT_S = 30.0
#: seconds rank 0 may go on after another rank died before :func:`watch` ends the trial process
DEAD_RANK_GRACE_S = 10.0


def fresh_process_group() -> None:
    """Drop the previous trial's process group; Lightning then creates one from this trial's env."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def enter_rank(env: dict[str, str]) -> None:
    os.environ.update(env)
    fresh_process_group()


class _RankActor:
    """Actor body: one DDP rank (1..N-1) of multi-worker trials, reused across trials."""

    def ping(self) -> int:
        return os.getpid()

    def run(self, job: dict[str, Any]) -> None:
        try:
            enter_rank(job["env"])
            fit_trial(
                job["base_argv"],
                job["config"],
                Path(job["run_dir"]),
                job["trial_id"],
                _follower_report,
                job["checkpoint"],
                extra_args=RANK_ARGS,
                tracking=job["tracking"],
            )
        except BaseException:
            # exit instead of returning: the sockets of this rank's process group close, so the other ranks'
            # collectives fail at once instead of waiting for the process-group timeout
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)


def _follower_report(metrics: dict[str, float], directory: str) -> bool:
    return False  # rank 0 reports; its stop decision reaches this rank through TuneReporter's broadcast


@dataclass
class RankPool:
    """Ranks 1..N-1 (actors) in the placement group ``placement_group_id`` of the trial process."""

    actors: list[Any]
    placement_group_id: str

    def healthy(self) -> bool:
        import ray

        try:
            ray.get([actor.ping.remote() for actor in self.actors], timeout=PING_TIMEOUT_S)
        except Exception:  # a dead or hung actor: any error means "replace the pool"
            return False
        return True

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


_POOL: RankPool | None = None


def acquire(size: int, cpus: float, gpus: float) -> RankPool:
    """The warm pool of ``size`` rank actors in this trial's placement group (started when missing)."""
    global _POOL
    import ray
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = get_current_placement_group()
    if group is None:
        raise RuntimeError("a multi-worker trial must run in its placement group (PlacementGroupFactory)")
    if _POOL is not None:
        if _POOL.placement_group_id == group.id.hex() and len(_POOL.actors) == size and _POOL.healthy():
            return _POOL
        discard()
    actor_cls = ray.remote(_RankActor)
    actors = [
        actor_cls.options(  # type: ignore[attr-defined]
            num_cpus=cpus,
            num_gpus=gpus,
            max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=index + 1
            ),
        ).remote()
        for index in range(size)
    ]
    _POOL = RankPool(actors, group.id.hex())
    return _POOL


def discard() -> None:
    """Kill the pool (after a failure or a stuck rank): the next trial starts fresh actors."""
    global _POOL
    if _POOL is not None:
        _POOL.kill()
    _POOL = None


def rank_envs(world: int) -> list[dict[str, str]]:
    """Rank environments in bundle order; rank 0 (this process, bundle 0) hosts the rendezvous."""
    import ray
    from ray.util import get_current_placement_group, placement_group_table

    group = get_current_placement_group()
    table = placement_group_table(group)
    addresses = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    hosts = [addresses[table["bundles_to_node_id"][index]] for index in range(world)]
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = int(sock.getsockname()[1])
    return envs_of_ranks(hosts, hosts[0], port, os.environ)


def watch(pending: list[Any], finished: threading.Event, grace_s: float = DEAD_RANK_GRACE_S) -> None:
    """Fail the trial fast when a rank dies while rank 0 is still busy (e.g. waiting in the rendezvous).

    Rank 0 normally fails by itself (its collectives break) and sets ``finished``; if it has not within
    ``grace_s`` it is stuck, and the trial process exits: Tune records the trial as failed and retries it
    on fresh processes.
    """

    def run() -> None:
        import ray

        remaining = list(pending)
        while remaining and not finished.is_set():
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=1.0)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as err:  # the actor died: its result is an error
                    if finished.wait(grace_s):
                        return
                    print(
                        f"tune: a DDP rank of this trial died ({type(err).__name__}) and rank 0 is still "
                        f"waiting for it after {grace_s:.0f} s: ending the trial process",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(1)

    threading.Thread(target=run, name="itwinai-rank-watch", daemon=True).start()
