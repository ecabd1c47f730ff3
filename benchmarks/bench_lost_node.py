"""Time from a killed node to training again, and steps lost, on the 3-node test cluster.

Starts the 3-node cluster (tests/helpers/cluster.py; root) with ``SlurmdTimeout`` ``--slurmd-timeout``
(sites use 300 s) and SLURM's requeue wait (``cred_expire``) at 10 s. Each repetition submits the tiny
2-node fit (6 epochs of 8 steps, an epoch-end checkpoint each, ``slurm.checkpoint_every_min`` at its default)
through ``itwinai-lightning slurm``, kills node 2 (its slurmd and every process on it) ``--kill-after`` s
after the first checkpoint, and waits for the job to complete on nodes 1 and 3. The figures come from the
RunRecord's ``restarts`` entry: ``time_lost_s`` (the failure note's time to training again) and
``steps_lost``; plus the seconds from the kill to the batch shell's decision to requeue (the job script's
own part: the survivors' note, srun's grace, the probe).

    python benchmarks/bench_lost_node.py [--reps 3] [--slurmd-timeout 60]

Expected: time lost ~ SlurmdTimeout + ~20 s (SLURM starts the requeued job only once the old one has ended
on every node, which on a dead node is when slurmctld declares it down).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from itwinai_lightning import records  # noqa: E402
from tests.helpers import cluster as mc  # noqa: E402
from tests.helpers.childenv import child_env  # noqa: E402

TINY = REPO / "tests" / "foundation" / "tiny.yaml"


def one_run(cluster: mc.Cluster, root: Path, kill_after: float) -> dict[str, float]:
    out = root / f"run{len(list(root.iterdir()))}"
    env = {**child_env(), "SLURM_CONF": str(cluster.conf)}
    submit = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "slurm", "--config", str(TINY), "--trainer.devices", "1",
         "--trainer.num_nodes", "2", "--data.init_args.batch_size", "4", "--trainer.max_epochs", "6",
         "--trainer.enable_checkpointing", "true", "--data.init_args.sleep_s", "0.1",
         f"--trainer.default_root_dir={out}", "--slurm.nodes", "2", "--slurm.python", sys.executable,
         "--slurm.time", "00:15:00", "--slurm.submit", "true"],
        env=env, capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip
    found = re.search(r"submitted job (\d+)", submit.stdout)
    if submit.returncode != 0 or not found:
        raise SystemExit(f"submit failed:\n{submit.stderr[-2000:]}")
    job = found.group(1)
    deadline = time.time() + 300
    while not list(out.glob("version_*/checkpoints/*.ckpt")):
        if time.time() > deadline:
            raise SystemExit("no checkpoint")
        time.sleep(0.2)
    time.sleep(kill_after)
    nodes = cluster.run("scontrol", "show", "job", job, "-o").stdout
    index = 1 if cluster.nodes[1] in cluster.run(
        "scontrol", "show", "hostnames", re.search(r" NodeList=(\S+)", nodes).group(1)  # type: ignore[union-attr]
    ).stdout.split() else 0  # fmt: skip
    killed = time.time()
    cluster.kill_node(index)
    while cluster.job_state(job) not in mc.FINAL_STATES:
        if time.time() > deadline + 600:
            raise SystemExit("job never ended")
        time.sleep(0.5)
    decided = (out / ".recoveries.jsonl").stat().st_mtime - killed  # the batch shell's requeue decision
    (restart,) = records.load(out)["sections"]["slurm"]["restarts"]
    # the killed node stays dead: bring it back for the next repetition
    slurmd = ["/usr/sbin/slurmd", "-f", str(cluster.conf), "-N", cluster.nodes[index], "-c"]
    subprocess.run(cluster.on_node(index, slurmd), env=cluster.env, check=True)
    cluster.run("scontrol", "update", f"NodeName={cluster.nodes[index]}", "State=RESUME", check=False)
    cluster.wait_idle(120)
    return {
        "time_lost_s": float(restart["time_lost_s"]),
        "steps_lost": float(restart["steps_lost"]),
        "kill_to_decision_s": decided,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--slurmd-timeout", type=int, default=60)
    parser.add_argument("--kill-after", type=float, default=1.0, help="seconds after the first checkpoint")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lost-node-") as tmp:
        root = Path(tmp)
        cluster = mc.start(
            root / "cluster", nodes=3, cpus=1, slurmd_timeout=args.slurmd_timeout,
            extra_conf=["AuthInfo=cred_expire=10"],
        )  # fmt: skip
        runs_root = root / "runs"
        runs_root.mkdir()
        try:
            results = [one_run(cluster, runs_root, args.kill_after) for _ in range(args.reps)]
        finally:
            mc.stop(root / "cluster")
    print(f"lost node on the 3-node test cluster, SlurmdTimeout {args.slurmd_timeout} s, {args.reps} reps")
    for key in ("kill_to_decision_s", "time_lost_s", "steps_lost"):
        values = [r[key] for r in results]
        print(
            f"  {key:18s} median {statistics.median(values):7.1f}  "
            f"min {min(values):7.1f}  max {max(values):7.1f}"
        )


if __name__ == "__main__":
    main()
