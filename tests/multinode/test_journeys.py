"""Every user journey across 2 nodes (one task per node) on the network-namespace cluster.

The tiny DDP fit (tests/foundation/tiny.yaml: SGD, no shuffling, no batch norm) at global batch 8 must end
with the weights of one process at batch 8, whatever launcher spreads the 2 ranks over the 2 hosts, and the
RunRecord must name both hosts and the launcher that really started the ranks.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from itwinai_lightning import records
from tests.foundation.conftest import Run, fit_args, free_port, max_abs_diff, run_cli
from tests.helpers.childenv import child_env
from tests.helpers.cluster import Cluster
from tests.helpers.engines import require_module

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]
REPO = Path(__file__).resolve().parents[2]
TUNE_TINY = REPO / "tests" / "tune" / "tiny.yaml"
TINY = REPO / "tests" / "foundation" / "tiny.yaml"


def two_node_args(out: Path, *extra: str) -> list[str]:
    """The tiny fit as 1 device x 2 nodes at batch 4 per rank (global batch 8)."""
    return fit_args(out, "--trainer.num_nodes", "2", "--data.init_args.batch_size", "4", *extra, devices=1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("reference")
    run = run_cli([], fit_args(out, "--trainer.strategy", "auto", devices=1), child_env(), out)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def check_parity(run: Run, reference: Run) -> None:
    """Both ranks hold the same weights, equal to one process on the same global batch."""
    w0, w1 = run.weights(0), run.weights(1)
    assert max_abs_diff(w0, w1) == 0.0
    ref = reference.weights(0)
    moved = max_abs_diff(ref, reference.weights(0, "initial"))
    assert moved > 1e-2
    assert max_abs_diff(w0, ref) < 2e-3 * moved  # the tolerance of the one-node launcher tests


def check_record(run_dir: Path, cluster: Cluster, launcher: str) -> dict:
    record = records.load(run_dir)
    assert record["status"] == "completed", record.get("error")
    assert record["launcher"] == launcher
    assert record["hostnames"] == cluster.nodes  # every rank's host, rank 0's first
    assert (record["num_nodes"], record["devices_per_node"], record["world_size"]) == (2, 1, 2)
    assert [(r["rank"], r["hostname"]) for r in record["ranks"]] == list(enumerate(cluster.nodes))
    return record


def srun(*extra: str) -> list[str]:
    return ["srun", "-N", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *extra]


@pytest.mark.parametrize("strategy", ["hpc_ddp", "hpc_deepspeed", "hpc_fsdp", "horovod"])
def test_srun_across_two_nodes(
    strategy: str, two_nodes: Cluster, node_env: dict[str, str], reference: Run, tmp_path: Path
) -> None:
    if strategy in ("hpc_deepspeed", "horovod"):
        require_module(strategy.removeprefix("hpc_"), "bash scripts/setup.sh")
    run = run_cli(srun(), two_node_args(tmp_path, "--trainer.strategy", strategy), node_env, tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    for rank in (0, 1):
        detected = run.launch(rank)["detected"]
        assert (detected["launcher"], detected["rank"], detected["node_rank"]) == ("srun", rank, rank)
    check_parity(run, reference)
    check_record(tmp_path, two_nodes, "srun")  # horovod too: not "horovodrun", not 1 node


def test_torchrun_c10d_between_namespaces(
    two_nodes: Cluster, node_env: dict[str, str], reference: Run, tmp_path: Path
) -> None:
    port = free_port()
    procs = []
    for i in range(2):
        argv = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{two_nodes.nodes[0]}:{port}", "--rdzv_id", "mn",
            "-m", "itwinai_lightning", *two_node_args(tmp_path),
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                two_nodes.on_node(i, argv), env=node_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            )
        )  # fmt: skip
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    check_parity(Run(0, "", "", 0.0, tmp_path), reference)
    check_record(tmp_path, two_nodes, "torchrun")


def test_mpirun_across_two_hosts_in_an_allocation(
    two_nodes: Cluster, node_env: dict[str, str], reference: Run, tmp_path: Path
) -> None:
    """Open MPI's mpirun in a 2-node sbatch job starts its daemons through SLURM (no ssh, no PMI)."""
    fit = [sys.executable, "-m", "itwinai_lightning", *two_node_args(tmp_path)]
    command = " ".join(["mpirun", "-np", "2", "--bind-to", "none", *fit])
    job = subprocess.run(
        ["sbatch", "--parsable", "-N", "2", "--ntasks-per-node=1", "-o", str(tmp_path / "job.out"),
         "--wrap", command],
        env=node_env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert two_nodes.wait_job(job, timeout=240) == "COMPLETED", (tmp_path / "job.out").read_text()[-3000:]
    check_parity(Run(0, "", "", 0.0, tmp_path), reference)
    check_record(tmp_path, two_nodes, "mpirun")


def _submit(cluster: Cluster, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "slurm", *args, "--slurm.python", sys.executable,
         "--slurm.time", "00:15:00", "--slurm.submit", "true"],
        env=env, capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"submitted job (\d+)", proc.stdout)
    assert match, proc.stdout
    return match.group(1)


def test_slurm_fit_job_with_torchrun_per_node(
    two_nodes: Cluster, node_env: dict[str, str], reference: Run, tmp_path: Path
) -> None:
    job = _submit(
        two_nodes,
        node_env,
        *two_node_args(tmp_path)[1:],
        "--slurm.nodes",
        "2",
        "--slurm.launcher",
        "torchrun",
    )
    state = two_nodes.wait_job(job, timeout=240)
    assert state == "COMPLETED", [p.read_text()[-2000:] for p in (tmp_path / "slurm").glob("*.err")]
    check_parity(Run(0, "", "", 0.0, tmp_path), reference)
    check_record(tmp_path, two_nodes, "torchrun")


def test_preemption_across_nodes_resumes_exactly(
    two_nodes: Cluster, node_env: dict[str, str], tmp_path: Path
) -> None:
    epochs, steps_per_epoch = 6, 8  # 64 samples, global batch 8
    # submitted into a root that already holds an earlier run's checkpoint (a laptop test, another job)
    earlier = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    earlier.parent.mkdir(parents=True)
    torch.save({"epoch": 4, "global_step": 40, "state_dict": {}}, earlier)
    job = _submit(
        two_nodes, node_env,
        *two_node_args(tmp_path, "--trainer.max_epochs", str(epochs),
                       "--trainer.enable_checkpointing", "true", "--data.init_args.sleep_s", "0.05")[1:],
        "--slurm.nodes", "2",
    )  # fmt: skip
    deadline = time.time() + 180
    while not list(tmp_path.glob("version_1/checkpoints/*.ckpt")):  # an epoch finished on both nodes
        assert time.time() < deadline, "no epoch finished"
        assert two_nodes.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.3)
    two_nodes.run("scancel", "--signal=USR1", job)
    while not (two_nodes.job_state(job) == "PENDING" and "Restarts=1" in two_nodes.run(
        "scontrol", "show", "job", job, "-o").stdout):  # fmt: skip
        assert time.time() < deadline, two_nodes.job_state(job)
        time.sleep(0.5)
    two_nodes.wait_idle(60)  # the previous instance released both nodes (see tests/slurm/test_jobs.py)
    time.sleep(2)
    two_nodes.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    assert two_nodes.wait_job(job, timeout=240) == "COMPLETED"

    record = check_record(tmp_path, two_nodes, "srun")
    # the job's own run directory, continued by its requeue; never the earlier run's checkpoint
    assert record["run_dir"] == str((tmp_path / "version_1").resolve())
    assert sorted(p.name for p in tmp_path.glob("version_*")) == ["version_0", "version_1"]
    (requeue,) = record["sections"]["slurm"]["requeues"]
    (resume,) = record["sections"]["slurm"]["resumes"]
    total = epochs * steps_per_epoch
    assert 0 < requeue["global_step"] < total, "preempted mid-run"
    assert requeue["rank_steps"] == [requeue["global_step"]] * 2  # both ranks stopped at the same step
    assert resume["checkpoint"] == requeue["checkpoint"] and resume["global_step"] == requeue["global_step"]
    saved = sorted(p.name for p in Path(requeue["checkpoint"]).parent.iterdir() if "requeue" in p.name)
    assert saved == ["requeue.ckpt"]  # one checkpoint for the stop, no partial file left
    # both ranks ended at exactly the global step count of an uninterrupted run
    assert [json.loads((tmp_path / f"launch_rank{r}.json").read_text())["steps"] for r in (0, 1)] == [
        total
    ] * 2


def test_lost_node_ends_the_job_naming_rank_and_host(
    two_nodes: Cluster, node_env: dict[str, str], tmp_path: Path
) -> None:
    timeout_s, slack_s = 5, 40
    marker = tmp_path / "signalled"
    args = two_node_args(
        tmp_path, "--trainer.max_epochs", "1000", f"--trainer.strategy.init_args.timeout={timeout_s}",
        "--trainer.callbacks+=tests.foundation.weights.SignalRank", "--trainer.callbacks.rank=1",
        "--trainer.callbacks.at_step=3", "--trainer.callbacks.signal_name=SIGKILL",
        f"--trainer.callbacks.marker={marker}",
    )  # fmt: skip
    run = run_cli(["srun", "-N", "2", "--ntasks-per-node=1"], args, node_env, tmp_path, timeout=300)
    ended = time.time()
    assert run.returncode != 0
    assert ended - float(marker.read_text().split()[0]) < timeout_s + slack_s
    assert "lost a peer" in run.stderr and f"rank 1 on {two_nodes.nodes[1]}" in run.stderr, run.stderr[-3000:]


def test_health_check_across_nodes(two_nodes: Cluster, node_env: dict[str, str]) -> None:
    env_check = [sys.executable, "-m", "itwinai_lightning", "env", "--check", "--json", "--timeout", "30"]
    proc = subprocess.run(srun(*env_check), env=node_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["allreduce_ok"] and report["allgather_ok"]
    assert (report["launcher"], report["backend"], report["hosts"]) == ("srun", "gloo", two_nodes.nodes)
    assert [s["bytes"] for s in report["sizes"]] == [8, 65536, 1048576, 8388608]
    assert all(s["latency_us"] > 0 and s["busbw_gbps"] > 0 for s in report["sizes"])
    assert report["sizes"][-1]["latency_us"] > report["sizes"][0]["latency_us"]  # 8 MiB takes longer than 8 B
    assert re.match(rf"rank [01] on ({'|'.join(two_nodes.nodes)})", report["slowest"])

    # node 2's rank never starts the check: rank 0 names it and its host, exits 1 within the timeout
    never = f'if [ "$SLURM_PROCID" = 1 ]; then sleep 120; else exec {" ".join(env_check[:-1])} 6; fi'
    started = time.time()
    proc = subprocess.run(srun("sh", "-c", never), env=node_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and time.time() - started < 6 + 40
    (line,) = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("{")] or [""]
    missing = json.loads(line)["missing"] if line else []
    assert missing == [f"rank 1 ({two_nodes.nodes[1]})"], proc.stdout + proc.stderr[-2000:]


def test_slurm_tune_on_a_ray_cluster_spanning_both_nodes(
    two_nodes: Cluster, node_env: dict[str, str], tmp_path: Path
) -> None:
    require_module("ray", 'pip install "itwinai-lightning[ray]"')
    out = tmp_path / "out"
    search = tmp_path / "search.yaml"
    tune = {
        "search_space": {"model.init_args.lr": {"grid": [0.01, 0.03]}},
        "num_samples": 1, "workers_per_trial": 2, "cpus_per_worker": 1, "output_dir": str(out),
        "name": "sweep",
    }  # fmt: skip
    search.write_text(yaml.safe_dump({"tune": tune}))
    job = _submit(
        two_nodes, node_env, "--config", str(TUNE_TINY), "--config", str(search), "--trainer.max_epochs", "2",
        "--data.init_args.shuffle", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--slurm.command", "tune", "--slurm.nodes", "2",
    )  # fmt: skip
    state = two_nodes.wait_job(job, timeout=400)
    job_dir = tmp_path / "run" / "slurm"
    assert state == "COMPLETED", [p.read_text()[-3000:] for p in job_dir.glob("*.err")]
    token = job_dir / "ray-auth-token"
    assert token.stat().st_mode & 0o077 == 0 and len(token.read_text().strip()) == 64  # the user's only
    script = (job_dir / "job.sbatch").read_text()
    assert "export RAY_AUTH_MODE=token" in script and "RAY_AUTH_TOKEN_PATH" in script
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not any("ray stop" in line for line in commands)  # would stop all the user's Rays on the node
    deadline = time.time() + 60
    while _processes_with(f"RAY_AUTH_TOKEN_PATH={token}") and time.time() < deadline:
        time.sleep(1)
    assert _processes_with(f"RAY_AUTH_TOKEN_PATH={token}") == []  # the job's Ray ended with the job

    rows = list(csv.DictReader((out / "sweep" / "results.csv").open()))
    assert sorted(row["status"] for row in rows) == ["completed", "completed"]
    for row in rows:  # the two ranks of every trial ran on different nodes, as the trials recorded
        record = records.load(out / "sweep" / "trials" / row["trial_id"])
        assert record["launcher"] == "ray" and record["world_size"] == 2
        assert sorted(record["hostnames"]) == sorted(two_nodes.nodes)

    best = min(rows, key=lambda r: float(r["val_loss"]))
    import ray

    from itwinai_lightning.cli.run import run_lightning_cli

    refit = [
        "fit",
        "--config",
        str(out / "sweep" / "best.yaml"),
        f"--trainer.default_root_dir={tmp_path / 'r'}",
    ]
    try:  # best.yaml runs ray_ddp with the trial's 2 workers: a local Ray in this process
        cli = run_lightning_cli(refit)
    finally:
        ray.shutdown()
    assert float(cli.trainer.callback_metrics["val_loss"]) == pytest.approx(float(best["val_loss"]), rel=1e-4)


def test_benchmark_points_of_one_and_two_nodes(
    two_nodes: Cluster, node_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "benchmark", "--config", str(TINY),
         "--benchmark.strategies", "[hpc_ddp]", "--benchmark.workers", "[1, 2]",
         "--benchmark.repetitions", "1", "--benchmark.batch_size", "8", "--benchmark.accelerator", "cpu",
         "--benchmark.output_dir", str(out), "--benchmark.submit", "true",
         "--benchmark.slurm", '{"ntasks_per_node": 1, "wait": true, "time": "00:10:00"}'],
        env=node_env, capture_output=True, text=True, timeout=400, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader((out / "benchmark_summary.csv").open()))
    assert [(r["launcher"], int(r["workers"]), int(r["nodes"])) for r in rows] == [
        ("srun", 1, 1),
        ("srun", 2, 2),
    ]
    two = records.load(out / "hpc_ddp-w2-r0")
    assert two["hostnames"] == two_nodes.nodes and two["launcher"] == "srun"
    html = (out / "report.html").read_text()
    assert "<th>nodes</th>" in html


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--slurm.nodes", "3"], "partition 'debug' has 2 node(s)"),
        (["--slurm.nodes", "1", "--trainer.num_nodes", "2"], "slurm.nodes=1 but trainer.num_nodes=2"),
        (["--slurm.nodes", "2", "--trainer.strategy", "ddp_spawn"], "starts its processes on one machine"),
    ],
)
def test_slurm_bad_node_counts_are_one_line_before_submission(
    extra: list[str], fragment: str, two_nodes: Cluster, node_env: dict[str, str], tmp_path: Path
) -> None:
    before = _next_job_id(two_nodes)
    proc = subprocess.run(
        [sys.executable, "-m", "itwinai_lightning", "slurm", "--config", str(TINY),
         "--trainer.default_root_dir", str(tmp_path), *extra, "--slurm.submit", "true"],
        env=node_env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("itwinai-lightning: error:") and fragment in line
    assert _next_job_id(two_nodes) == before  # nothing was submitted


def _processes_with(variable: str) -> list[int]:
    """Processes whose environment holds ``variable`` (NAME=value) exactly: one job's own processes."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and variable.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def _next_job_id(cluster: Cluster) -> int:
    """The id slurmctld gives the next job: unchanged when nothing was submitted, even by a job
    that has already ended (an earlier test's job leaving the queue does not count)."""
    config = cluster.run("scontrol", "show", "config").stdout
    found = re.search(r"^NEXT_JOB_ID\s*=\s*(\d+)", config, re.MULTILINE)
    assert found, config[:500]
    return int(found.group(1))


def test_predict_across_two_nodes_matches_one_process(
    two_nodes: Cluster, node_env: dict[str, str], tmp_path: Path
) -> None:
    """srun -N 2: each host predicts its share of 37 inputs; the index restores one prediction per input in
    order, equal to a single process, and the predict record names both hosts."""
    from itwinai_lightning import inference

    fit_dir = tmp_path / "fit"
    fit = run_cli(
        [], [*fit_args(fit_dir, devices=1), "--trainer.enable_checkpointing", "true"], node_env, fit_dir
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = str(next(fit_dir.rglob("*.ckpt")))
    writer = "--trainer.callbacks+=itwinai_lightning.inference.ShardedPredictionWriter"

    def predict(prefix: list[str], out: Path, nodes: int) -> None:
        args = ["predict", "--config", str(TINY), "--trainer.num_nodes", str(nodes), "--trainer.devices", "1",
                "--data.init_args.val_samples", "37", "--data.init_args.batch_size", "4",
                "--trainer.default_root_dir", str(out), writer, "--ckpt_path", ckpt]  # fmt: skip
        run = run_cli(prefix, args, node_env, out)
        assert run.returncode == 0, run.stderr[-4000:]

    predict([], tmp_path / "one", 1)
    predict(srun(), tmp_path / "two", 2)
    # the two nodes' tasks agreed on one run directory (rank 0's claim, keyed by the SLURM job and step)
    assert [p.name for p in (tmp_path / "two").glob("version_*")] == ["version_0"]
    got = inference.read(str(tmp_path / "two" / "version_0" / "predictions"))
    torch.testing.assert_close(
        got, inference.read(str(tmp_path / "one" / "latest" / "predictions")), atol=1e-6, rtol=1e-5
    )
    index = json.loads((tmp_path / "two" / "version_0" / "predictions" / "index.json").read_text())
    assert (index["num_samples"], index["world_size"], sorted(index["samples"])) == (37, 2, [18, 19])
    record = records.load(tmp_path / "two")
    assert record["hostnames"] == two_nodes.nodes and record["launcher"] == "srun"
