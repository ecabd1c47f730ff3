"""``fit --trainer.strategy ray_ddp``: two Ray actors train what one process does with the global batch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from itwinai_lightning.cli.run import run_lightning_cli
from tests.tune.conftest import TINY

pytestmark = [pytest.mark.ray]

COMMON = ["--data.init_args.shuffle=false", "--trainer.max_epochs=2", "--model.init_args.optimizer=sgd"]
# (SGD: Adam divides by the gradient scale and turns last-bit reduction-order differences into visible ones)


@pytest.fixture
def local_ray(ray_tmp: Path) -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(ray_tmp))
    yield
    ray.shutdown()


def test_ray_ddp_fit_matches_single_process_global_batch(tmp_path: Path, local_ray: None) -> None:
    single = run_lightning_cli(
        ["fit", "--config", str(TINY), *COMMON, f"--trainer.default_root_dir={tmp_path / 'single'}"]
    )
    on_ray = run_lightning_cli(
        [
            "fit",
            "--config",
            str(TINY),
            *COMMON,
            "--trainer.strategy=ray_ddp",
            "--trainer.devices=2",
            "--data.init_args.batch_size=16",
            "--trainer.enable_checkpointing=true",
            f"--trainer.default_root_dir={tmp_path / 'ray'}",
        ]
    )
    from itwinai_lightning.strategies.ray import RayDDPStrategy

    assert isinstance(on_ray.trainer.strategy, RayDDPStrategy)
    assert on_ray.trainer.state.finished
    # metrics and final weights came back from rank 0 to the driver
    expected = float(single.trainer.callback_metrics["val_loss"])
    assert float(on_ray.trainer.callback_metrics["val_loss"]) == pytest.approx(expected, rel=1e-4)
    for (name, a), (_, b) in zip(
        single.model.state_dict().items(), on_ray.model.state_dict().items(), strict=True
    ):
        assert a.allclose(b, atol=1e-5), name
    # the best checkpoint rank 0 wrote is named on the driver's checkpoint callback
    best = Path(on_ray.trainer.checkpoint_callback.best_model_path)
    assert best.is_file() and best.is_relative_to(tmp_path / "ray")
