"""The reuse test of a completed grid point: what counts as the same inputs, and how a difference reads."""

from __future__ import annotations

from pathlib import Path

from itwinai_lightning.benchmark.inputs import difference, point_inputs


def test_same_inputs_wherever_the_point_writes(tmp_path: Path) -> None:
    cfg = tmp_path / "base.yaml"
    cfg.write_text("trainer: {max_epochs: 1}\n")
    a = point_inputs(["fit", "--config", str(cfg), "--run_dir", "/x/a"], "local", [])
    b = point_inputs(["fit", "--config", str(cfg), "--run_dir", "/y/b"], "local", [])
    assert difference(a, b) is None
    assert a["versions"]["torch"] and a["versions"]["itwinai-lightning"]


def test_each_kind_of_difference_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "base.yaml"
    cfg.write_text("trainer: {max_epochs: 1}\n")
    argv = ["fit", "--config", str(cfg), "--trainer.max_epochs", "1"]
    base = point_inputs(argv, "local", [])
    assert base["argv"] == ["fit", "--config", "<config 0>", "--trainer.max_epochs", "1"]  # paths move
    more = point_inputs(["fit", "--config", str(cfg), "--trainer.max_epochs", "3"], "local", [])
    assert difference(base, more) == "--trainer.max_epochs: '1' -> '3'"
    assert difference(base, point_inputs(argv, "torchrun", [])) == "launcher: 'local' -> 'torchrun'"
    old_torch = {**base, "versions": {**base["versions"], "torch": "2.0.0"}}
    assert difference(old_torch, base) == f"torch 2.0.0 -> {base['versions']['torch']}"
    cfg.write_text("trainer: {max_epochs: 5}\n")  # same argv, the file's content changed
    assert difference(base, point_inputs(argv, "local", [])) == f"config file {cfg} changed"
    assert difference(None, base) == "its record holds no inputs (made by an older itwinai-lightning)"
