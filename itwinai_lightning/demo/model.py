"""A small residual conv net that denoises spectrograms; width and depth scale the compute."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn


class SpectrogramDenoiser(pl.LightningModule):
    """Predicts the clean spectrogram from the noisy one (residual learning, MSE loss).

    Logs ``train_loss`` and ``val_loss`` (MSE, dimensionless) and ``val_psnr`` (dB, peak 1.0).
    No batch norm, so a 2-rank DDP run with batch B/2 equals a 1-rank run with batch B exactly.
    """

    def __init__(self, width: int = 32, depth: int = 4, lr: float = 1e-3, optimizer: str = "adam") -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.GELU()]
        for _ in range(max(0, depth - 2)):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.example_input_array = torch.zeros(1, 1, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        noisy, clean = batch
        return nn.functional.mse_loss(self(noisy), clean)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True)
        self.log("val_psnr", 10 * torch.log10(1.0 / loss.clamp_min(1e-12)), sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch), sync_dist=True)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams["optimizer"] == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])
        if self.hparams["optimizer"] == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])
        raise ValueError(
            f"model.init_args.optimizer must be 'adam' or 'sgd', got {self.hparams['optimizer']!r}"
        )
