"""Driver run by the strategy tests under torchrun / srun / horovodrun (one process per rank).

Fits ``--steps`` optimizer steps (one epoch) with plain SGD and ``shuffle=False``, saves the weights, then
resumes from the ``last.ckpt`` that ModelCheckpoint wrote and fits one more epoch. Every rank writes
``<out>/rank<r>.json``; rank 0 writes ``<out>/weights_fit1.pt`` and ``<out>/weights_resume_start.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

import itwinai_lightning.strategies  # noqa: F401  (registers the short names)
from itwinai_lightning.demo import SpectrogramDataModule, SpectrogramDenoiser
from itwinai_lightning.strategies.weights import gathered_state_dict


class ProbeModel(SpectrogramDenoiser):
    """The demo model plus metrics whose cross-rank reduction is known: the mean/max/sum of the ranks."""

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        rank = torch.tensor(float(self.global_rank))
        self.log("rank_mean", rank, sync_dist=True)
        self.log("rank_max", rank, sync_dist=True, reduce_fx="max")
        self.log("rank_sum", rank, sync_dist=True, reduce_fx="sum")

    def on_validation_epoch_end(self) -> None:
        gathered = self.all_gather(torch.tensor([float(self.global_rank)]))
        self.gathered = gathered.flatten().tolist()
        self.broadcasted = self.trainer.strategy.broadcast(f"from-rank-{self.global_rank}", src=0)


class ResumeProbe(Callback):
    """Records where a (resumed) fit starts: the global step and the weights."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = trainer.global_step
        self.start_weights = gathered_state_dict(trainer)


class FinalWeights(Callback):
    """The weights at the end of training, while the strategy still holds the model (FSDP: gathered)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights = gathered_state_dict(trainer)


def _strategy(args: argparse.Namespace) -> Any:
    if args.strategy == "hpc_fsdp":
        from itwinai_lightning.strategies.fsdp import HPCFSDPStrategy

        return HPCFSDPStrategy(state_dict_type=args.state_dict_type, auto_wrap=args.auto_wrap or None)
    if args.strategy == "hpc_deepspeed":
        from itwinai_lightning.strategies.deepspeed import HPCDeepSpeedStrategy

        return HPCDeepSpeedStrategy(stage=args.stage)
    return args.strategy  # a registered short name


def _trainer(args: argparse.Namespace, epochs: int, callbacks: list[Callback]) -> pl.Trainer:
    return pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=_strategy(args),
        max_epochs=epochs,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="per rank")
    parser.add_argument("--world", type=int, default=2, help="world size the data is sized for")
    parser.add_argument("--optimizer", default="sgd", help="sgd (plain) or adam")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--state-dict-type", default="full", help="hpc_fsdp: full or sharded")
    parser.add_argument("--auto-wrap", nargs="*", default=[], help="hpc_fsdp: module classes to wrap")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    def data() -> SpectrogramDataModule:
        samples = args.steps * args.batch_size * args.world
        return SpectrogramDataModule(
            num_samples=samples,
            val_samples=32,
            freq_bins=16,
            time_steps=16,
            batch_size=args.batch_size,
            shuffle=False,
        )

    pl.seed_everything(0, workers=True)
    model = ProbeModel(width=8, depth=3, lr=args.lr, optimizer=args.optimizer)
    ckpt = ModelCheckpoint(dirpath=args.out / "ckpt", save_last=True, save_top_k=0)
    final = FinalWeights()
    trainer = _trainer(args, 1, [ckpt, final])
    trainer.fit(model, datamodule=data())
    rank = trainer.global_rank
    fit1_weights = final.weights
    result: dict[str, Any] = {
        "rank": rank,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "root_device": str(trainer.strategy.root_device),
        "fit1_global_step": trainer.global_step,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "gathered": model.gathered,
        "broadcasted": model.broadcasted,
        "last_ckpt": ckpt.last_model_path,
        "fit1_weight_sum": float(sum(v.double().sum() for v in fit1_weights.values())),
        "horovod_env": {k: v for k, v in os.environ.items() if k.startswith("HOROVOD_")},
    }
    if hasattr(trainer.strategy, "config") and isinstance(trainer.strategy.config, dict):
        result["zero_stage"] = trainer.strategy.config.get("zero_optimization", {}).get("stage")
        engine = trainer.strategy.model
        result["engine_zero_stage"] = engine.zero_optimization_stage() if engine is not None else None

    probe = ResumeProbe()
    resumed_model = ProbeModel(width=8, depth=3, lr=args.lr, optimizer=args.optimizer)
    resume = _trainer(args, 2, [probe])
    resume.fit(resumed_model, datamodule=data(), ckpt_path=ckpt.last_model_path)
    result["resume_start_step"] = probe.start_step
    result["resume_final_step"] = resume.global_step
    result["resume_start_matches_fit1"] = all(
        torch.equal(probe.start_weights[k], fit1_weights[k]) for k in fit1_weights
    )
    if rank == 0:
        torch.save(fit1_weights, args.out / "weights_fit1.pt")
    (args.out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
