"""End-to-end sweeps on a real local Ray (2 CPUs): ASHA + a crashing trial, PBT, DDP trials, resume."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from itwinai_lightning.cli.run import run_lightning_cli
from tests.tune.conftest import TINY, read_csv, read_params, run_tune, tune_command, tune_env, write_search

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MULTI = "itwinai_lightning.loggers.multi.MultiLogger"
DDP_ARGS = (
    "--data.init_args.shuffle=false",
    "--model.init_args.optimizer=sgd",
    "--trainer.max_epochs=2",
    "--data.init_args.batch_size=16",
)


def test_asha_sweep_stops_some_records_all_and_best_yaml_reproduces(
    tmp_path: Path, ray_tmp: Path, python_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    search = write_search(
        tmp_path / "search.yaml",
        out,
        ray_tmp,
        search_space={
            "model.init_args.lr": {"loguniform": [1.0e-4, 1.0e-1]},
            # one optimizer name the model rejects: those trials crash, are retried, and reported
            "model.init_args.optimizer": {"choice": ["adam", "adam", "adam", "bogus"]},
        },
        num_samples=6,
        max_failures=1,
        scheduler={"type": "asha", "reduction_factor": 2},
    )
    proc = run_tune(search, tune_env(python_env))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Trial status:" in proc.stdout  # Ray's live progress table

    rows = read_csv(out / "sweep" / "results.csv")
    assert len(rows) == 6
    statuses = [row["status"] for row in rows]
    failed = [row for row in rows if row["status"] == "failed"]
    assert all(row["model.init_args.optimizer"] == "bogus" for row in failed)
    assert failed and "optimizer" in failed[0]["error"]
    assert f"trial {failed[0]['trial_id']} failed" in proc.stdout
    good = [row for row in rows if row["status"] != "failed"]
    assert len(good) >= 4
    assert "stopped_early" in statuses and "completed" in statuses
    for row in good:
        params = read_params(out / "sweep" / "trials" / row["trial_id"])
        assert math.isclose(params[0]["optimizer_lr"], float(row["model.init_args.lr"]), rel_tol=1e-9)
        if row["status"] == "completed":
            assert int(row["epochs"]) == 4  # max_epochs
        else:  # stopped by ASHA after at least its grace period, before the end
            assert 1 <= int(row["epochs"]) < 4

    best = min(good, key=lambda row: float(row["val_loss"]))
    assert best["status"] == "completed"
    best_yaml = out / "sweep" / "best.yaml"
    assert best["trial_id"] in best_yaml.read_text()
    cli = run_lightning_cli(
        ["fit", "--config", str(best_yaml), f"--trainer.default_root_dir={tmp_path / 'refit'}"]
    )
    refit = float(cli.trainer.callback_metrics["val_loss"])
    assert refit == pytest.approx(float(best["val_loss"]), rel=1e-3)


def test_pbt_exploited_trial_continues_with_the_mutated_value(
    tmp_path: Path, ray_tmp: Path, python_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    search = write_search(
        tmp_path / "search.yaml",
        out,
        ray_tmp,
        search_space={"model.init_args.lr": {"grid": [1.0e-4, 3.0e-2]}},
        num_samples=1,
        scheduler={
            "type": "pbt",
            "perturbation_interval": 1,
            "synch": True,
            "quantile_fraction": 0.5,
            "resample_probability": 1.0,
            "hyperparam_mutations": {"model.init_args.lr": {"loguniform": [1.0e-3, 5.0e-2]}},
        },
    )
    proc = run_tune(search, tune_env(python_env), "--trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_csv(out / "sweep" / "results.csv")
    assert len(rows) == 2
    exploited = []
    for row in rows:
        starts = read_params(out / "sweep" / "trials" / row["trial_id"])
        for before, after in itertools.pairwise(starts):
            assert after["restored"] is True
            if after["params"]["model.init_args.lr"] != before["params"]["model.init_args.lr"]:
                exploited.append(after)
    assert exploited, "PBT never exploited/mutated a trial"
    for start in exploited:
        # the optimizer really uses the mutated value, not the one stored in the donor's checkpoint
        assert start["optimizer_lr"] == pytest.approx(start["params"]["model.init_args.lr"], rel=1e-9)
        assert 1.0e-3 <= start["optimizer_lr"] <= 5.0e-2
        assert start["start_epoch"] >= 1


def test_ddp_trials_reuse_ranks_through_asha_stops_and_nest_mlflow_runs(
    tmp_path: Path, ray_tmp: Path, python_env: dict[str, str], mlflow_server: Any
) -> None:
    out = tmp_path / "out"
    # 3 trials x 2 DDP workers, one after the other on 2 CPUs; ASHA stops every trial through Tune (at max_t,
    # and the hopeless lr=1e-4 early), which must not cost the warm ranks
    search = write_search(
        tmp_path / "search.yaml",
        out,
        ray_tmp,
        search_space={"model.init_args.lr": {"grid": [1.0e-2, 3.0e-2, 1.0e-4]}},
        num_samples=1,
        workers_per_trial=2,
        scheduler={"type": "asha", "reduction_factor": 2},
    )
    logger = tmp_path / "logger.yaml"
    backend = {"type": "mlflow", "tracking_uri": mlflow_server.uri, "batch_interval_s": 0.2}
    multi = {"experiment": "tune-ddp", "backends": [backend], "isolation": "thread"}
    logger.write_text(yaml.safe_dump({"trainer": {"logger": {"class_path": MULTI, "init_args": multi}}}))
    # 2 ranks x batch 16 without shuffling must train exactly what 1 process x batch 32 does
    proc = run_tune(search, tune_env(python_env), "--config", str(logger), *DDP_ARGS, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_csv(out / "sweep" / "results.csv")
    status = {float(row["model.init_args.lr"]): (row["status"], int(row["epochs"])) for row in rows}
    assert status == {1.0e-2: ("completed", 2), 3.0e-2: ("completed", 2), 1.0e-4: ("stopped_early", 1)}
    pids = []
    for row in rows:
        assert 0 < float(row["val_loss"]) < 1
        trial_dir = out / "sweep" / "trials" / row["trial_id"]
        record = json.loads((trial_dir / "run_record.json").read_text())
        assert (record["launcher"], record["world_size"]) == ("ray", 2)
        # the record is ended, not left "running"; a stopped DDP trial ends its fit on every rank together
        assert (record["status"], record["error"]) == ("completed", None)
        # Tune waited for every trial to finish, the early-stopped last one too: its logger was finalized
        summary = json.loads((trial_dir / "tracking_summary.json").read_text())
        assert summary["backends"][0]["delivered"] > 0 and summary["backends"][0]["spooled"] == 0
        (start,) = read_params(trial_dir)
        assert len(set(start["rank_pids"])) == 2
        pids.append(start["rank_pids"])
    # all trials ran on the very same warm processes
    assert pids[0] == pids[1] == pids[2]

    single = run_lightning_cli(
        ["fit", "--config", str(TINY), *DDP_ARGS[:-1], "--data.init_args.batch_size=32",
         "--model.init_args.lr=0.01", f"--trainer.default_root_dir={tmp_path / 'single'}"]
    )  # fmt: skip
    ddp = next(row for row in rows if float(row["model.init_args.lr"]) == 1.0e-2)
    assert float(ddp["val_loss"]) == pytest.approx(
        float(single.trainer.callback_metrics["val_loss"]), rel=1e-4
    )

    # one MLflow parent run for the sweep, each trial's run nested under it with its id, params, metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("tune-ddp")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("itwinai.kind") == "tune_sweep"]
    assert parent.info.run_name == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    assert parent.data.params["metric"] == "val_loss" and parent.data.params["workers_per_trial"] == "2"
    assert parent.data.params["search_space.model.init_args.lr"].startswith("grid")
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    by_trial = {run.data.tags["itwinai.tune_trial_id"]: run for run in children}
    assert set(by_trial) == {row["trial_id"] for row in rows}
    for row in rows:
        child = by_trial[row["trial_id"]]
        assert child.data.params["tune_trial_id"] == row["trial_id"]
        assert float(child.data.params["model.init_args.lr"]) == float(row["model.init_args.lr"])
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert history and history[-1].value == pytest.approx(float(row["val_loss"]), rel=1e-6)


def test_a_killed_ddp_rank_fails_the_trial_and_the_retry_gets_fresh_ranks(
    tmp_path: Path, ray_tmp: Path, python_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    marker = tmp_path / "killed.pid"
    search = write_search(
        tmp_path / "search.yaml",
        out,
        ray_tmp,
        search_space={"model.init_args.lr": {"choice": [1.0e-2]}},
        num_samples=1,
        workers_per_trial=2,
        max_failures=1,
    )
    # rank 1 dies while building its run: rank 0 is left waiting in the DDP rendezvous
    killer = {
        "class_path": "tests.tune.faults.KillRankOnce",
        "init_args": {"marker": str(marker), "when": "init"},
    }
    faults = tmp_path / "faults.yaml"
    faults.write_text(yaml.safe_dump({"trainer": {"callbacks": [killer]}}))
    proc = run_tune(
        search, tune_env(python_env), "--config", str(faults), "--trainer.max_epochs=1", timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 is still waiting for it" in proc.stdout + proc.stderr  # the watchdog, not the DDP timeout
    (row,) = read_csv(out / "sweep" / "results.csv")
    assert row["status"] == "completed" and int(row["epochs"]) == 1
    (retry,) = read_params(out / "sweep" / "trials" / row["trial_id"])
    # Tune's retry ran on fresh processes
    assert int(marker.read_text()) not in retry["rank_pids"] and len(set(retry["rank_pids"])) == 2


def test_resume_after_the_sweep_process_is_killed(
    tmp_path: Path, ray_tmp: Path, python_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    search = write_search(
        tmp_path / "search.yaml",
        out,
        ray_tmp,
        search_space={"model.init_args.lr": {"grid": [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2]}},
        num_samples=1,
        max_concurrent_trials=1,
    )
    env = tune_env(python_env)
    trials = out / "sweep" / "trials"
    proc = subprocess.Popen(
        tune_command(search),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if trials.is_dir() and len(list(trials.glob("*/params.jsonl"))) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        started = time.time()
        while time.monotonic() < deadline and proc.poll() is None:  # Tune saved its experiment state since
            if any(p.stat().st_mtime >= started for p in (out / "sweep").glob("experiment_state*.json")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone: the assertion above says why
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    started_before = {p.parent.name for p in trials.glob("*/params.jsonl")}
    assert not (out / "sweep" / "results.csv").exists()

    resumed = run_tune(search, env, "--tune.resume=true")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the sweep" in resumed.stdout
    rows = read_csv(out / "sweep" / "results.csv")
    assert len(rows) == 4
    assert {row["status"] for row in rows} == {"completed"}
    assert started_before <= {row["trial_id"] for row in rows}
    finished_first = [p for p in started_before if len(read_params(trials / p)) == 1]
    assert finished_first, "no trial from the killed run was kept"


def test_a_metric_the_model_never_logs_stops_the_sweep_in_one_line(
    tmp_path: Path, ray_tmp: Path, python_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    search = write_search(
        tmp_path / "search.yaml", out, ray_tmp, metric="val_los", num_samples=4,
        search_space={"model.init_args.lr": {"loguniform": [1.0e-4, 1.0e-1]}},
    )  # fmt: skip
    start = time.monotonic()
    proc = run_tune(search, tune_env(python_env))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("itwinai-lightning: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "tune.metric 'val_los' is not logged by the model (did you mean 'val_loss'?)" in errors[0]
    assert "val_psnr" in errors[0]  # what the model does log
    # the line is the last thing said: Ray (and its workers' teardown output) is stopped before it
    assert proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    assert not (out / "sweep" / "results.csv").exists()
    assert time.monotonic() - start < 240  # stopped after the first epoch, not after 4 trials

    # the suggested continuation is refused in one line: the aborted sweep never measured its metric
    resumed = run_tune(search, tune_env(python_env), "--tune.resume", "true")
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    (line,) = resumed.stderr.strip().splitlines()
    assert "was stopped on a user error" in line and "without --tune.resume" in line

    # the corrected command is not blocked by the aborted sweep: it replaces it, and says so
    corrected = run_tune(
        search, tune_env(python_env), "--tune.metric", "val_loss", "--tune.num_samples", "1",
        "--trainer.max_epochs", "1",
    )  # fmt: skip
    assert corrected.returncode == 0, corrected.stderr[-3000:]
    assert "replacing the sweep" in corrected.stderr and "stopped on a user error" in corrected.stderr
    rows = read_csv(out / "sweep" / "results.csv")
    assert len(rows) == 1 and rows[0]["status"] == "completed" and int(rows[0]["epochs"]) == 1
    assert math.isfinite(float(rows[0]["val_loss"]))
    assert not (out / "sweep" / "ABORTED").exists()


def test_a_second_sweep_with_the_same_name_is_refused_unless_resuming(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    (out / "sweep").mkdir(parents=True)
    (out / "sweep" / "results.csv").write_text("trial_id,val_loss\nabc,0.1\n")
    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({"tune": {"output_dir": str(out), "search_space": {
        "model.init_args.lr": {"loguniform": [1.0e-4, 1.0e-1]}}}}))  # fmt: skip
    proc = run_tune(search, tune_env(python_env))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert (
        "already holds a sweep (results.csv)" in line
        and "--tune.resume true" in line
        and "--tune.name" in line
    )
    assert (out / "sweep" / "results.csv").read_text() == "trial_id,val_loss\nabc,0.1\n"  # untouched
    assert not (out / "sweep" / "configs").exists()
