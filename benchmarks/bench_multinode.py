"""Time to the first training step on 2 nodes vs 1, per launcher; the health check on the emulated network.

Starts the 2-node test cluster (tests/helpers/cluster.py; root), then, interleaved over repetitions:

* ``srun``: the tiny hpc_ddp fit with TimingMonitor as ``srun -N 1`` (1 task) and ``srun -N 2``
  (1 task per node);
* ``torchrun``: one torchrun on node 1 (``--nnodes 1``) vs one per node (``--nnodes 2``, c10d rendezvous);
* ``mpirun``: ``mpirun -np 1`` in a 1-node ``sbatch`` allocation vs ``-np 2`` in a 2-node one;
* ``env --check`` over both nodes (all-reduce latency and bus bandwidth).

Prints medians and spread (min-max); time to first step is TimingMonitor's ``time_to_first_step_s`` (setup
to the end of the first optimizer step, rank 0), so interpreter start-up is not in it.

    python benchmarks/bench_multinode.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
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
TIMING = "--trainer.callbacks+=itwinai_lightning.callbacks.timing.TimingMonitor"
STAMP = "--trainer.callbacks+=benchmarks.bench_multinode.FirstStepStamp"
STAMP_FILE = "first_step_at"


def _stamp_class() -> type:
    """A callback that writes the wall-clock time of rank 0's first finished training step."""
    import time

    import lightning.pytorch as pl

    class FirstStepStamp(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
            path = Path(trainer.default_root_dir) / STAMP_FILE
            if trainer.global_rank == 0 and not path.exists():
                path.write_text(repr(time.time()))

    return FirstStepStamp


def __getattr__(name: str) -> type:  # lazily, so this script's own start stays light
    if name == "FirstStepStamp":
        return _stamp_class()
    raise AttributeError(name)


def fit(out: Path, nodes: int) -> list[str]:
    return ["-m", "itwinai_lightning", "fit", "--config", str(TINY), "--trainer.devices", "1",
            "--trainer.num_nodes", str(nodes), "--data.init_args.batch_size", str(8 // nodes), TIMING, STAMP,
            "--trainer.default_root_dir", str(out)]  # fmt: skip


def first_step(out: Path, launched: float) -> tuple[float, float]:
    """(launch to rank 0's first step, s; TimingMonitor's setup to first step, s)."""
    stamp = float((out / STAMP_FILE).read_text())
    return stamp - launched, float(records.load(out)["summary"]["time_to_first_step_s"])


def run_srun(cluster: mc.Cluster, env: dict[str, str], out: Path, nodes: int) -> tuple[float, float]:
    cmd = [
        "srun",
        "-N",
        str(nodes),
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        sys.executable,
        *fit(out, nodes),
    ]
    launched = time.time()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    return first_step(out, launched)


def run_torchrun(
    cluster: mc.Cluster, env: dict[str, str], out: Path, nodes: int, port: int
) -> tuple[float, float]:
    procs = []
    launched = time.time()
    for i in range(nodes):
        argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
                "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                "--rdzv_endpoint", f"{cluster.nodes[0]}:{port}", "--rdzv_id", str(port),
                *fit(out, nodes)]  # fmt: skip
        procs.append(subprocess.Popen(cluster.on_node(i, argv), env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))  # fmt: skip
    assert all(p.wait(timeout=300) == 0 for p in procs)
    return first_step(out, launched)


def run_mpirun(cluster: mc.Cluster, env: dict[str, str], out: Path, nodes: int) -> tuple[float, float]:
    """``mpirun -np N`` inside an N-node allocation (Open MPI starts its daemons through SLURM); the launch
    time includes ``sbatch``'s scheduling, as a user's would."""
    command = " ".join(["mpirun", "-np", str(nodes), "--bind-to", "none", sys.executable, *fit(out, nodes)])
    cmd = ["sbatch", "--wait", "-N", str(nodes), "--ntasks-per-node=1", "-o", str(out) + ".out",
           "--wrap", command]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    launched = time.time()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    return first_step(out, launched)


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"median {med:.3g} (min {min(values):.3g}, max {max(values):.3g}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    reps = parser.parse_args().reps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = mc.start(root / "cluster", nodes=2, cpus=1)
        env = {**child_env(), "SLURM_CONF": str(cluster.conf)}
        try:
            times: dict[str, list[tuple[float, float]]] = {}
            for rep in range(reps):
                for nodes in (1, 2):
                    key = f"srun {nodes} node(s)"
                    times.setdefault(key, []).append(run_srun(cluster, env, root / f"s{nodes}-{rep}", nodes))
                    key = f"torchrun {nodes} node(s)"
                    port = 29400 + rep * 2 + nodes
                    times.setdefault(key, []).append(
                        run_torchrun(cluster, env, root / f"t{nodes}-{rep}", nodes, port)
                    )
                    key = f"mpirun {nodes} node(s)"
                    mpi = run_mpirun(cluster, env, root / f"m{nodes}-{rep}", nodes)
                    times.setdefault(key, []).append(mpi)
            check = ["srun", "-N", "2", "--ntasks-per-node=1", sys.executable, "-m",
                     "itwinai_lightning", "env", "--check", "--json", "--timeout", "60"]  # fmt: skip
            sizes: dict[int, list[tuple[float, float]]] = {}
            for _ in range(reps):
                out = subprocess.run(check, env=env, check=True, capture_output=True, text=True, timeout=120)
                report = json.loads(out.stdout.strip().splitlines()[-1])
                for s in report["sizes"]:
                    sizes.setdefault(s["bytes"], []).append((s["latency_us"], s["busbw_gbps"]))
        finally:
            mc.stop(root / "cluster")
    for index, title in enumerate(("launch to first training step", "setup to first step (TimingMonitor)")):
        print(f"{title}, s (rank 0)")
        for key, values in times.items():
            print(f"  {key:<20} {spread([v[index] for v in values])}")
        for launcher in ("srun", "torchrun", "mpirun"):
            one = statistics.median(v[index] for v in times[f"{launcher} 1 node(s)"])
            two = statistics.median(v[index] for v in times[f"{launcher} 2 node(s)"])
            print(f"  {launcher}: 2 nodes / 1 node = {two / one:.2f}")
    print("health check over 2 nodes (veth on one machine): all-reduce latency us / bus bandwidth GB/s")
    for size, values in sizes.items():
        lat = [v[0] for v in values]
        bw = [v[1] for v in values]
        print(f"  {size:>9} B  latency {spread(lat)}  busbw {spread(bw)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
