"""yProv4ML global state: one run per process, PROV-JSON written even when fit fails."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
from prov.model import ProvDocument

from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
from itwinai_lightning.loggers import ProvenanceLogger
from itwinai_lightning.loggers.provenance import ProvSession, active_session
from tests.helpers.engines import require_module


class FailsAtStep(SpectrogramDenoiser):
    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.global_step == 5:
            raise RuntimeError("boom at step 5")
        return super().training_step(batch, batch_idx)


def test_failed_fit_still_writes_prov_json_and_frees_the_slot(tmp_path: Path) -> None:
    require_module("yprov4ml", "pip install yprov4ml==3.2.3 --no-deps")
    logger = ProvenanceLogger(experiment="fails", flush_timeout_s=60)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, logger=logger, log_every_n_steps=1, accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    data = SpectrogramDataModule(num_samples=64, val_samples=16, batch_size=8)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(FailsAtStep(width=8, depth=2), data)
    assert active_session() is None  # finalize("failed") ended the yProv4ML run
    files = list((tmp_path / "prov" / "rank0").glob("fails_*/prov_fails_GR0_*.json"))
    assert len(files) == 1
    doc = ProvDocument.deserialize(str(files[0]), format="json")
    labels = {str(r.identifier) for r in doc.get_records()}
    assert any("train_loss" in label for label in labels)
    metric_csv = next((files[0].parent / "metrics_GR0").glob("train_loss_training_*.csv"))
    assert len(metric_csv.read_text().strip().splitlines()) - 1 == 5  # steps 0..4 ran before the failure
    assert logger.summary is not None and logger.summary["status"] == "failed"

    # one run per process: a second session while one is active is refused clearly, then works after
    first = ProvSession(tmp_path / "a", "one", rank=0)
    first.start()
    try:
        with pytest.raises(RuntimeError, match="one run per process"):
            ProvSession(tmp_path / "b", "two", rank=0).start()
    finally:
        assert first.close() is not None
    second = ProvSession(tmp_path / "b", "two", rank=0)
    second.start()
    assert second.close() is not None and active_session() is None


@pytest.mark.core
def test_prov_json_per_rank_under_torchrun(tmp_path: Path, python_env: dict[str, str]) -> None:
    import subprocess
    import sys

    from tests.loggers.conftest import free_port

    require_module("yprov4ml", "pip install yprov4ml==3.2.3 --no-deps")
    port = str(free_port())
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
         "-m", "tests.loggers.helpers", str(tmp_path)],
        env=python_env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        files = list((tmp_path / "prov" / f"rank{rank}").glob(f"ddp_*/prov_ddp_GR{rank}_*.json"))
        assert len(files) == 1, f"rank {rank}: {files}"
        doc = ProvDocument.deserialize(str(files[0]), format="json")
        assert any("train_loss" in str(r.identifier) for r in doc.get_records())
        csvs = list((files[0].parent / f"metrics_GR{rank}").glob("train_loss_training_*.csv"))
        assert len(csvs[0].read_text().strip().splitlines()) - 1 == 4  # 64 samples / 2 ranks / batch 8
    assert (tmp_path / "metrics.csv").exists() and not (
        tmp_path / "metrics.rank1.csv"
    ).exists()  # csv: rank 0
    assert (tmp_path / "tracking_summary.rank1.json").exists()


def test_closing_a_session_imports_nothing_so_the_final_flush_stays_short(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    """``end_run`` serializes through ``prov``'s registry; its serializers are loaded at start, not at the
    end of fit (where the trainer waits for the flush). Checked in a fresh interpreter."""
    require_module("yprov4ml", "pip install yprov4ml==3.2.3 --no-deps")
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from itwinai_lightning.loggers.provenance import ProvSession\n"
        f"s = ProvSession(__import__('pathlib').Path({str(tmp_path)!r}), 'x', rank=0)\n"
        "s.start()\n"
        "import yprov4ml\n"
        "yprov4ml.log_metric('loss', 1.0, context='training', step=0)\n"
        "before = set(sys.modules)\n"
        "path = s.close()\n"
        "print(sorted(set(sys.modules) - before))\n"
        "print(path.is_file())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=python_env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    new_modules, written = done.stdout.strip().splitlines()[-2:]
    assert written == "True"
    assert "prov.serializers" not in new_modules and "rdflib" not in new_modules, new_modules
