"""``fit --resume DIR``: the same training continues from DIR's newest checkpoint; another is one line."""

from __future__ import annotations

from pathlib import Path

from tests.foundation.conftest import Run, fit_args, run_cli


def _fit(tmp_path: Path, env: dict[str, str], *extra: str) -> Run:
    checkpointing = ["--trainer.strategy=auto", "--trainer.enable_checkpointing=true"]
    args = fit_args(tmp_path / "out", *checkpointing, *extra, devices=1)
    args[args.index("--trainer.default_root_dir") + 1] = str(tmp_path / "runs")
    return run_cli([], args, env, tmp_path / "out", timeout=180)


def test_resume_continues_the_same_training_and_refuses_another(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    first = _fit(tmp_path, python_env)  # 2 epochs, 16 steps
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "version_0"
    newest = max((run / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)

    more = _fit(tmp_path, python_env, "--trainer.max_epochs=3", f"--resume={run}")
    assert more.returncode == 0, more.stderr[-3000:]
    assert f"--resume {run}: the same training; continuing from {newest}" in more.stdout
    assert more.launch(0)["steps"] == 24  # 16 + one more epoch of 8
    assert sorted(p.name for p in (tmp_path / "runs").glob("version_*")) == ["version_0"]  # the same run

    other = _fit(
        tmp_path, python_env, "--trainer.max_epochs=4", "--model.init_args.lr=0.2", f"--resume={run}"
    )
    lines = [ln for ln in other.stderr.splitlines() if ln.startswith("itwinai-lightning")]
    assert other.returncode == 2 and len(lines) == 1, other.stderr[-3000:]
    assert f"--resume {run}: its run trained with another model" in lines[0]
    assert f"--config {run / 'config.yaml'}" in lines[0] and "Traceback" not in other.stderr
    assert sorted(p.name for p in (tmp_path / "runs").glob("version_*")) == ["version_0"]  # nothing started

    missing = _fit(tmp_path, python_env, f"--resume={tmp_path / 'runs' / 'version_9'}")
    assert missing.returncode == 2 and "no such run directory" in missing.stderr

    empty = tmp_path / "runs" / "version_5"
    empty.mkdir()
    fresh = _fit(tmp_path, python_env, f"--resume={empty}")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "no complete checkpoint there; training starts from scratch in it" in fresh.stdout
    assert fresh.launch(0)["steps"] == 16 and (empty / "checkpoints").is_dir()
