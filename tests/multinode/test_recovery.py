"""A node lost mid-run: the job's batch shell requeues it without that node and the run completes.

A 3-node cluster whose slurmctld declares a silent node down only after 60 s (sites use 300 s): the
recovery must come from the job script (within ~20 s), not from SLURM's own node-failure requeue. The
requeued job starts once slurmctld has declared the node down (until then the job is still completing
there): time lost is bounded by SlurmdTimeout. Its requeue wait (``cred_expire``) is 10 s instead of 120 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from itwinai_lightning import records
from tests.foundation.conftest import Run, free_port, max_abs_diff, run_cli
from tests.helpers import cluster as mc
from tests.helpers.childenv import child_env
from tests.multinode.conftest import running_cluster
from tests.multinode.test_journeys import _submit, two_node_args

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]
EPOCHS, STEPS_PER_EPOCH = 6, 8  # 64 samples, global batch 8


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Cluster]:
    yield from running_cluster(
        tmp_path_factory, 3, cpus=1, slurmd_timeout=60, extra_conf=["AuthInfo=cred_expire=10"]
    )


def _nodes_of(cluster: mc.Cluster, job: str) -> str:
    fields = dict(
        item.split("=", 1)
        for item in cluster.run("scontrol", "show", "job", job, "-o").stdout.split()
        if "=" in item
    )
    return fields.get("NodeList", "")


def test_a_lost_node_requeues_the_job_without_it(
    three_nodes: mc.Cluster, python_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**python_env, "SLURM_CONF": str(three_nodes.conf)}
    n1, n2, n3 = three_nodes.nodes
    job = _submit(
        three_nodes, env,
        *two_node_args(tmp_path, "--trainer.max_epochs", str(EPOCHS),
                       "--trainer.enable_checkpointing", "true", "--data.init_args.sleep_s", "0.1")[1:],
        "--slurm.nodes", "2",
    )  # fmt: skip
    deadline = time.time() + 180
    while not list(tmp_path.glob("version_0/checkpoints/*.ckpt")):  # an epoch finished on both nodes
        assert time.time() < deadline, "no epoch finished"
        assert three_nodes.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.2)
    assert three_nodes.run("scontrol", "show", "hostnames", _nodes_of(three_nodes, job)).stdout.split() == [
        n1,
        n2,
    ]
    killed_at = time.time()
    assert three_nodes.kill_node(1) > 0  # node 2 dies: its slurmd, slurmstepd and rank 1

    assert three_nodes.wait_job(job, timeout=240) == "COMPLETED", (tmp_path / "slurm").glob("*.err")
    out = next((tmp_path / "slurm").glob("*.out")).read_text()
    err = next((tmp_path / "slurm").glob("*.err")).read_text()
    assert f"lost node on {n2}; requeued without {n2} (restart 1)" in err, err[-3000:]
    assert "restart 1 on" in out and n2 not in out.split("restart 1 on", 1)[1].splitlines()[0]

    record = records.load(tmp_path)
    assert record["status"] == "completed", record.get("error")
    assert record["hostnames"] == [n1, n3]  # the requeued job ran on nodes 1 and 3
    (restart,) = record["sections"]["slurm"]["restarts"]
    assert (restart["restart"], restart["job_id"], restart["cause"]) == (1, job, "lost node")
    assert restart["hosts"] == [n2] and restart["excluded"] == [n2]
    checkpoint = restart["checkpoint"]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert restart["resumed_step"] == state["global_step"] > 0
    assert restart["failed_step"] >= restart["resumed_step"]
    assert restart["steps_lost"] == restart["failed_step"] - restart["resumed_step"] <= STEPS_PER_EPOCH
    assert 0 < restart["time_lost_s"] < time.time() - killed_at
    # the requeued job continued the run's own record: the lost attempt's error is in the restart entry
    assert "peer" in restart["error"] and not list(tmp_path.glob("version_0/run_record.*.json"))
    assert sorted(p.name for p in tmp_path.glob("version_*")) == ["version_0"]
    # the final step count of an uninterrupted run, on both ranks
    steps = [json.loads((tmp_path / f"launch_rank{r}.json").read_text())["steps"] for r in (0, 1)]
    assert steps == [EPOCHS * STEPS_PER_EPOCH] * 2

    # the weights of a run resumed by hand from the same checkpoint (2 ranks on one host, global batch 8)
    by_hand = tmp_path / "by_hand"
    args = [
        "fit", *two_node_args(by_hand, "--trainer.max_epochs", str(EPOCHS))[1:], "--trainer.num_nodes", "1",
        "--trainer.devices", "2", "--ckpt_path", checkpoint,
    ]  # fmt: skip
    resumed = run_cli([], args, child_env(), by_hand)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    job_weights = Run(0, "", "", 0.0, tmp_path).weights(0)
    assert max_abs_diff(job_weights, resumed.weights(0)) < 1e-6


def test_torchrun_restarts_a_group_across_nodes_from_the_newest_checkpoint(
    two_nodes: mc.Cluster, node_env: dict[str, str], tmp_path: Path
) -> None:
    """torchrun --max-restarts 1 on each of 2 nodes (c10d rendezvous): rank 1 (node 2) is killed at step 12;
    both agents restart their workers, which resume from the run's newest timed checkpoint. Node 1's agent
    sees a membership change, not a failure (its TORCHELASTIC_RESTART_COUNT stays 0): the attempt number
    must come from elsewhere (launch/where.attempt_number)."""
    port = free_port()
    args = two_node_args(
        tmp_path, "--trainer.max_epochs=3",  # 24 optimizer steps
        "--trainer.callbacks+=TimedCheckpoint", "--trainer.callbacks.every_min=0.001",
        "--trainer.callbacks.check_every_n_steps=2",
        "--trainer.callbacks+=tests.foundation.weights.KillOnFirstAttempt", "--trainer.callbacks.rank=1",
        "--trainer.callbacks.at_step=12",
    )  # fmt: skip
    procs = []
    for i in range(2):
        argv = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--max-restarts", "1", "--monitor-interval", "0.2", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"{two_nodes.nodes[0]}:{port}", "--rdzv_id", "restart",
            "-m", "itwinai_lightning", *args,
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(two_nodes.on_node(i, argv), env=node_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        )  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    run = Run(0, outs[0][0], outs[0][1], 0.0, tmp_path)
    assert run.launch(0)["steps"] == 24 and run.launch(1)["steps"] == 24
    record = records.load(tmp_path)
    assert record["status"] == "completed" and record["hostnames"] == two_nodes.nodes
    restarts = record["sections"]["restarts"]
    assert restarts["count"] == 1 and restarts["attempts"][0]["restart"] == 1
    resumed_from = Path(restarts["attempts"][0]["checkpoint"])
    assert resumed_from.parent == Path(record["run_dir"]) / "checkpoints"
    step = int(resumed_from.stem.split("=")[1])
    assert 2 <= step <= 12 and 12 - step <= 8  # steps lost: at most a few checks of the clock
    assert len(list(tmp_path.glob("version_*"))) == 1  # both nodes, both attempts: one run directory
