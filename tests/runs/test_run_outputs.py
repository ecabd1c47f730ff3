"""What a run leaves behind and what the next command takes from it, as a new user goes: the gallery copied
with ``examples --to``, the quickstart trained twice, then predict and test the way the README says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from itwinai_lightning import inference, records
from itwinai_lightning.records.written import written_checkpoints
from itwinai_lightning.runs.ckpt_path import resolve

ITL = [sys.executable, "-m", "itwinai_lightning"]
SMALL = ["--trainer.max_epochs", "2", "--data.num_samples", "128", "--data.val_samples", "32",
         "--data.batch_size", "16", "--trainer.enable_progress_bar", "false"]  # fmt: skip


def _itl(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ITL, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("itwinai-lightning: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copied gallery where the quickstart was trained twice (the same command, re-run)."""
    from tests.helpers.childenv import child_env

    cwd = tmp_path_factory.mktemp("user")
    env = child_env()
    assert _itl(["examples", "--to", "."], env, cwd).returncode == 0
    for n in (0, 1):
        fit = _itl(["fit", "--config", "quickstart.yaml", *SMALL], env, cwd)
        assert fit.returncode == 0, fit.stderr[-3000:]
        (cwd / f"fit{n}.out").write_text(fit.stdout)
        (cwd / f"fit{n}.err").write_text(fit.stderr)
    return cwd


def test_a_rerun_gets_a_directory_of_its_own_and_latest_names_it(gallery: Path) -> None:
    root = gallery / "runs" / "quickstart"
    runs = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert runs == ["latest", "version_0", "version_1"]
    assert (root / "latest").is_symlink() and (root / "latest").resolve() == (root / "version_1").resolve()
    for n in (0, 1):
        run = root / f"version_{n}"
        # one layout: config, record, checkpoints and the default logger's folder, nothing of the other run
        assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "run_record.json",
                                                         "tensorboard"]  # fmt: skip
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
            "epoch=1-step=16.ckpt",
            "last.ckpt",
        ]
        assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
        rec = records.load(run)
        assert rec["run_dir"] == str(run.resolve()) and rec["status"] == "completed"
        # the saved config names the root, so --config of it starts a new run instead of writing into this one
        assert (
            yaml.safe_load((run / "config.yaml").read_text())["trainer"]["default_root_dir"]
            == "runs/quickstart"
        )
    ids = {records.load(root / f"version_{n}")["run_id"] for n in (0, 1)}
    assert len(ids) == 2 and records.load(root)["run_id"] == records.load(root / "version_1")["run_id"]
    assert "already held" not in (gallery / "fit1.err").read_text()  # nothing of the first run is touched


def test_a_rerun_summary_counts_and_names_only_its_own_checkpoints(gallery: Path) -> None:
    out = (gallery / "fit1.out").read_text()
    assert f"run directory: {(gallery / 'runs' / 'quickstart' / 'version_1').resolve()}" in out
    line = next(ln for ln in out.splitlines() if "checkpoints:" in ln)
    assert "2 written by this run under checkpoints" in line, out
    assert "last.ckpt" in line and "epoch=1-step=16.ckpt" in line and "best (val_loss)" in line
    assert "version_0" not in out and "last-v1" not in out
    written = records.load(gallery / "runs" / "quickstart")["checkpoints"]
    assert (written["last"], written["best"]) == ("checkpoints/last.ckpt", "checkpoints/epoch=1-step=16.ckpt")
    assert written["monitor"] == "val_loss" and len(written["files"]) == 2


def test_a_run_without_monitoring_callbacks_still_has_its_figures(gallery: Path) -> None:
    rec = records.load(gallery / "runs" / "quickstart")
    summary = rec["summary"]
    # TimingMonitor is installed by default: 2 epochs of 128 samples
    assert summary["epochs_completed"] == 2 and summary["total_samples"] == 256
    assert summary["samples_per_s"] > 0 and summary["fit_wall_time_s"] > 0
    assert summary["monitor"] == "val_loss"
    final = rec["epochs"][-1]["metrics"]["val_loss"]
    out = (gallery / "fit1.out").read_text()
    assert f"final val_loss {final:.4g}" in out and "samples/s" in out and "best val_loss" in out


def test_predict_without_a_checkpoint_is_refused_and_writes_nothing(gallery: Path) -> None:
    from tests.helpers.childenv import child_env

    proc = _itl(
        ["predict", "--config", "quickstart.yaml", "--config", "predict.yaml", *SMALL], child_env(), gallery
    )
    line = _error_line(proc)
    assert "no --ckpt_path" in line and "untrained" in line and "--ckpt_path module" in line
    assert "replaces trainer.callbacks" not in proc.stderr  # the shipped predict.yaml composes quietly
    assert not (gallery / "runs" / "predict").exists()


def test_a_checkpoint_that_does_not_exist_is_one_line(gallery: Path) -> None:
    from tests.helpers.childenv import child_env

    missing = "runs/quickstart/checkpoints/last.ckpt"  # the path the docs used to give
    args = [
        "predict",
        "--config",
        "quickstart.yaml",
        "--config",
        "predict.yaml",
        *SMALL,
        "--ckpt_path",
        missing,
    ]
    line = _error_line(_itl(args, child_env(), gallery))
    assert f"ckpt_path {missing}: no such file or directory" in line and "a run directory" in line
    assert not (gallery / "runs" / "predict").exists()


def test_predict_from_the_run_directory_as_the_readme_says(gallery: Path) -> None:
    from tests.helpers.childenv import child_env

    args = ["predict", "--config", "quickstart.yaml", "--config", "predict.yaml", *SMALL,
            "--ckpt_path", "runs/quickstart"]  # fmt: skip
    proc = _itl(args, child_env(), gallery)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = "runs/quickstart/version_1/checkpoints/epoch=1-step=16.ckpt"
    assert (
        f"ckpt_path runs/quickstart: {best} (the best checkpoint of its newest run, version_1)" in proc.stdout
    )
    assert "litmodels" not in proc.stdout + proc.stderr
    assert inference.read(str(gallery / "runs" / "predict" / "latest" / "predictions")).shape[0] == 32
    rec = records.load(gallery / "runs" / "predict")
    assert (rec["stage"], rec["status"]) == ("predict", "completed")
    assert rec["run_dir"] == str((gallery / "runs" / "predict" / "version_0").resolve())
    # the fit's record and config were not touched by predict
    assert (
        json.loads((gallery / "runs" / "quickstart" / "latest" / "run_record.json").read_text())["stage"]
        == "fit"
    )
    # predicting again is a new run with its own predictions: nothing to refuse, nothing replaced
    again = _itl(args, child_env(), gallery)
    assert again.returncode == 0, again.stderr[-3000:]
    assert inference.read(str(gallery / "runs" / "predict" / "version_1" / "predictions")).shape[0] == 32
    assert (gallery / "runs" / "predict" / "version_0" / "predictions" / "index.json").is_file()


def test_test_with_last_takes_the_latest_runs_last_checkpoint(gallery: Path) -> None:
    from tests.helpers.childenv import child_env

    proc = _itl(["test", "--config", "quickstart.yaml", *SMALL, "--ckpt_path", "last"], child_env(), gallery)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = "runs/quickstart/version_1/checkpoints/last.ckpt"
    assert (
        f"ckpt_path last (in runs/quickstart): {last} (the last checkpoint of its newest run, version_1)"
        in (proc.stdout)
    )
    assert "dirpath has changed" not in proc.stderr
    root = gallery / "runs" / "quickstart"
    fitted = root / "version_1"
    assert records.load(fitted)["stage"] == "fit"  # the fit's record and config are kept ...
    assert yaml.safe_load((fitted / "config.yaml").read_text())["ckpt_path"] is None
    tested = root / "version_2"  # ... the test is a run of its own, with stage-named files
    assert sorted(p.name for p in tested.iterdir()) == [
        "config.test.yaml",
        "run_record.test.json",
        "tensorboard",
    ]
    assert str(yaml.safe_load((tested / "config.test.yaml").read_text())["ckpt_path"]).endswith(
        "version_1/checkpoints/last.ckpt"
    )
    assert records.load(root)["stage"] == "test" and records.load(tested)["status"] == "completed"


def test_resolve_reads_the_record_and_falls_back_to_the_newest_last(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ckpts = run / "lightning_logs" / "version_3" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt"):
        (ckpts / name).write_bytes(b"x")
    # no record: the newest last*.ckpt, said so
    choice = resolve(str(run), "predict", None)
    assert choice.path == str(ckpts / "last.ckpt") and "no run record names one" in str(choice.note)
    (run / "run_record.json").write_text(json.dumps({"schema_version": 1, "checkpoints": {
        "best": "lightning_logs/version_3/checkpoints/best.ckpt",
        "last": "lightning_logs/version_3/checkpoints/last.ckpt"}}))  # fmt: skip
    assert resolve(str(run), "predict", None).path == str(ckpts / "best.ckpt")  # inference: best
    assert resolve(str(run), "fit", None).path == str(ckpts / "last.ckpt")  # resuming: last
    assert resolve("best", "test", str(run)).path == str(ckpts / "best.ckpt")
    assert resolve("module", "predict", str(run)).path is None
    assert resolve("models:/denoiser/3", "predict", None).path == "models:/denoiser/3"
    assert resolve(None, "fit", str(run)).path is None


def test_written_checkpoints_come_from_the_callbacks_not_the_folder(tmp_path: Path) -> None:
    from types import SimpleNamespace

    (tmp_path / "ck").mkdir()
    for name in ("old.ckpt", "a.ckpt", "last.ckpt"):
        (tmp_path / "ck" / name).write_bytes(b"x")
    callback = SimpleNamespace(
        best_k_models={str(tmp_path / "ck" / "a.ckpt"): 0.1},
        last_model_path=str(tmp_path / "ck" / "last.ckpt"),
        best_model_path=str(tmp_path / "ck" / "a.ckpt"),
        monitor="val_loss",
    )
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), checkpoint_callbacks=[callback])
    written = written_checkpoints(trainer)
    assert sorted(written["files"]) == ["ck/a.ckpt", "ck/last.ckpt"]  # old.ckpt is another run's
    assert (written["best"], written["last"], written["monitor"]) == ("ck/a.ckpt", "ck/last.ckpt", "val_loss")


def test_a_missing_checkpoint_under_torchrun_is_one_line_and_writes_nothing(gallery: Path) -> None:
    from tests.helpers.childenv import child_env

    args = ["predict", "--config", "quickstart.yaml", "--config", "predict.yaml", *SMALL, "--trainer.devices",
            "2", "--trainer.default_root_dir", "runs/never", "--ckpt_path", "nope.ckpt"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "itwinai_lightning", *args],
        env=child_env(), cwd=gallery, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("itwinai-lightning: error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]  # once per node, by local rank 0
    assert "ckpt_path nope.ckpt: no such file or directory" in lines[0]
    # no traceback of ours (torchrun still reports its failed workers with its own, after the line)
    assert "UserError" not in proc.stderr and "itwinai_lightning/" not in proc.stderr
    assert not (gallery / "runs" / "never").exists()


def test_resuming_a_run_continues_in_its_own_directory(gallery: Path) -> None:
    from tests.helpers.childenv import child_env

    root = gallery / "runs" / "quickstart"
    before = sorted(p.name for p in root.iterdir())
    args = ["fit", "--config", "quickstart.yaml", *SMALL, "--trainer.max_epochs", "3",
            "--ckpt_path", "runs/quickstart/version_0"]  # fmt: skip
    proc = _itl(args, child_env(), gallery)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fit continues in the checkpoint's run directory runs/quickstart/version_0" in proc.stdout
    assert sorted(p.name for p in root.iterdir()) == before  # no new run directory
    run = root / "version_0"
    rec = records.load(run)
    assert rec["status"] == "completed" and rec["epochs"][-1]["epoch"] == 2  # epochs 0, 1 then 2
    assert rec["checkpoints"]["last"] == "checkpoints/last.ckpt"
    assert "epoch=2-step=24.ckpt" in {Path(f).name for f in rec["checkpoints"]["files"]}
    (kept,) = run.glob("run_record.*.json")  # the first, finished part of the run is kept and that is said
    assert json.loads(kept.read_text())["epochs"][-1]["epoch"] == 1
    assert "already held a finished fit" in proc.stderr
    assert "exists and is not empty" not in proc.stderr  # continuing there is the point, said once above
