"""Construction, YAML options and error paths of hpc_deepspeed and horovod (no distributed launch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_lightning.errors import MissingExtraError, UserError
from tests.helpers.childenv import child_env
from tests.helpers.engines import require_module

REPO_CWD = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=120)


def test_modules_import_no_backend_and_missing_backend_errors() -> None:
    """Importing the modules pulls neither DeepSpeed nor Horovod; building one without it names the fix."""
    code = (
        "import sys\n"
        "import itwinai_lightning.strategies.deepspeed as d, itwinai_lightning.strategies.horovod as h\n"
        "print('loaded', 'deepspeed' in sys.modules, 'horovod' in sys.modules)\n"
        "for name in ('deepspeed', 'horovod', 'horovod.torch'):\n"
        "    sys.modules[name] = None\n"
        "from itwinai_lightning.errors import MissingExtraError\n"
        "for build in (d.HPCDeepSpeedStrategy, h.HorovodStrategy):\n"
        "    try:\n"
        "        build()\n"
        "    except MissingExtraError as err:\n"
        "        print('error', err)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "loaded False False"
    assert lines[1] == "error 'deepspeed' is not installed; it is needed for this feature. " + (
        'Install it with: pip install "itwinai-lightning[deepspeed]"'
    )
    assert lines[2].startswith("error 'horovod.torch' is not installed")
    assert "itwinai-lightning build-horovod" in lines[2]


@pytest.mark.deepspeed
def test_deepspeed_options_and_bad_input(tmp_path: Path) -> None:
    require_module("deepspeed", 'pip install "itwinai-lightning[deepspeed]"')
    from itwinai_lightning.strategies.deepspeed import HPCDeepSpeedStrategy

    offload = HPCDeepSpeedStrategy(stage=2, offload_optimizer=True)
    zero = offload.config["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu"
    assert offload.config["zero_force_ds_cpu_optimizer"] is False  # torch optimizers work offloaded
    raw = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 4}
    assert HPCDeepSpeedStrategy(config=raw).config == raw  # a raw DeepSpeed config passes through
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(raw))
    assert HPCDeepSpeedStrategy(config=str(path)).config == raw
    bad = [
        ({"stage": 5}, "strategy.init_args.stage"),
        ({"stage": 2, "offload_parameters": True}, "needs stage: 3"),
        ({"stage": 0, "offload_optimizer": True}, "offload_optimizer needs stage"),
        ({"config": str(tmp_path / "missing.json")}, "missing.json' does not exist"),
    ]
    for kwargs, message in bad:
        with pytest.raises(UserError, match=message):
            HPCDeepSpeedStrategy(**kwargs)
    path.write_text("{not json")
    with pytest.raises(UserError, match="is not valid JSON"):
        HPCDeepSpeedStrategy(config=str(path))


@pytest.mark.horovod
def test_horovod_options_and_bad_input() -> None:
    require_module("horovod", "itwinai-lightning build-horovod")
    from itwinai_lightning.strategies.horovod import HorovodStrategy

    strategy = HorovodStrategy(compression="fp16", op="sum", backward_passes_per_step=2)
    assert (strategy.compression, strategy.op, strategy.backward_passes_per_step) == ("fp16", "sum", 2)
    for kwargs, message in [
        ({"compression": "int8"}, "strategy.init_args.compression"),
        ({"op": "median"}, "strategy.init_args.op"),
        ({"backward_passes_per_step": 0}, "backward_passes_per_step must be >= 1"),
        ({"op": "sum", "gradient_predivide_factor": 2.0}, "needs op: average"),
    ]:
        with pytest.raises(UserError, match=message):
            HorovodStrategy(**kwargs)
    assert not issubclass(MissingExtraError, RuntimeError)


def test_short_names_registered() -> None:
    from lightning.pytorch.strategies import StrategyRegistry

    import itwinai_lightning.strategies as strategies

    for name, target in [
        ("hpc_deepspeed", "itwinai_lightning.strategies.deepspeed:HPCDeepSpeedStrategy"),
        ("horovod", "itwinai_lightning.strategies.horovod:HorovodStrategy"),
        ("hpc_fsdp", "itwinai_lightning.strategies.fsdp:HPCFSDPStrategy"),
    ]:
        assert name in StrategyRegistry and strategies.SHORT_NAMES[name][0] == target


def test_yaml_options_reach_the_strategies(tmp_path: Path) -> None:
    """ZeRO stage, a raw DeepSpeed config mapping and Horovod options parse from YAML (LightningCLI)."""
    import yaml

    ds = {"class_path": "itwinai_lightning.strategies.deepspeed.HPCDeepSpeedStrategy"}
    ds["init_args"] = {"stage": 0, "config": {"zero_optimization": {"stage": 0}, "gradient_clipping": 1.0}}
    hv = {"class_path": "itwinai_lightning.strategies.horovod.HorovodStrategy"}
    hv["init_args"] = {"compression": "fp16", "backward_passes_per_step": 2}
    for strategy in (ds, hv):
        path = tmp_path / "strategy.yaml"
        path.write_text(yaml.safe_dump({"trainer": {"strategy": strategy}}))
        cmd = ["-m", "itwinai_lightning", "fit", "--config", "configs/quickstart.yaml", "--config", str(path)]
        run = {"env": child_env(), "capture_output": True, "text": True, "timeout": 120, "cwd": REPO_CWD}
        proc = subprocess.run([sys.executable, *cmd, "--print_config"], **run)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stdout.splitlines()  # the YAML, after any start-up chatter
        start = next(i for i, line in enumerate(lines) if line.startswith(("seed_everything:", "trainer:")))
        parsed = yaml.safe_load("\n".join(lines[start:]))["trainer"]["strategy"]
        assert parsed["class_path"] == strategy["class_path"]
        for key, value in strategy["init_args"].items():
            assert parsed["init_args"][key] == value
