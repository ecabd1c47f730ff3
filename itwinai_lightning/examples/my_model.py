"""A template for your own model: copy this file next to my_model.yaml, replace the two classes' insides.

    python -m itwinai_lightning examples --to my_project && cd my_project
    PYTHONPATH=. python -m itwinai_lightning fit --config my_model.yaml

Nothing here knows about HPC: strategies, launchers, monitoring and tracking come from the config.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split


class MyModel(pl.LightningModule):
    """Replace the network and the loss. Log ``val_loss`` so checkpoints, tune and time-to-accuracy see it."""

    def __init__(self, in_features: int = 16, hidden: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


class MyData(pl.LightningDataModule):
    """Replace ``setup`` with your data set. Under DDP Lightning gives each rank its share of the batches."""

    def __init__(self, num_samples: int = 2048, in_features: int = 16, batch_size: int = 64) -> None:
        super().__init__()
        self.num_samples, self.in_features, self.batch_size = num_samples, in_features, batch_size

    def setup(self, stage: str) -> None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(self.num_samples, self.in_features, generator=gen)
        y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(self.num_samples, 1, generator=gen)
        self.train_set, self.val_set = random_split(TensorDataset(x, y), [0.9, 0.1], generator=gen)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val_set, batch_size=self.batch_size)
