"""Synthetic noisy spectrograms (frequency x time) with their clean targets, made from a seed."""

from __future__ import annotations

import math
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset


class SyntheticSpectrograms(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(noisy, clean)`` pairs of shape ``(1, freq_bins, time_steps)``.

    Each clean spectrogram is a sum of a few chirps (lines whose frequency drifts over time) and
    short broadband transients, as a detector would see; the noisy input adds Gaussian noise of
    ``noise_std``. Sample ``i`` depends only on ``(seed, i)``.

    ``sleep_s`` adds a delay to every ``__getitem__`` (used to build a data-loading-bound workload).
    """

    def __init__(
        self,
        num_samples: int,
        freq_bins: int = 32,
        time_steps: int = 32,
        noise_std: float = 0.3,
        seed: int = 0,
        sleep_s: float = 0.0,
    ) -> None:
        self.num_samples = num_samples
        self.freq_bins = freq_bins
        self.time_steps = time_steps
        self.noise_std = noise_std
        self.seed = seed
        self.sleep_s = sleep_s
        gen = torch.Generator().manual_seed(seed)
        self.clean = self._make_clean(num_samples, gen)
        self.noisy = self.clean + noise_std * torch.randn(self.clean.shape, generator=gen)

    def _make_clean(self, n: int, gen: torch.Generator) -> torch.Tensor:
        f = torch.linspace(0, 1, self.freq_bins).view(1, 1, -1, 1)
        t = torch.linspace(0, 1, self.time_steps).view(1, 1, 1, -1)
        out = torch.zeros(n, 1, self.freq_bins, self.time_steps)
        for _ in range(3):  # chirps
            f0 = torch.rand(n, 1, 1, 1, generator=gen) * 0.8 + 0.1
            slope = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.6
            amp = torch.rand(n, 1, 1, 1, generator=gen) * 0.8 + 0.2
            centre = f0 + slope * t
            out += amp * torch.exp(-((f - centre) ** 2) / (2 * 0.03**2))
        t0 = torch.rand(n, 1, 1, 1, generator=gen)  # one transient each
        out += 0.5 * torch.exp(-((t - t0) ** 2) / (2 * 0.02**2)) * torch.sin(math.pi * f) ** 2
        return out

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sleep_s > 0:
            time.sleep(self.sleep_s)
        return self.noisy[index], self.clean[index]


class SpectrogramDataModule(pl.LightningDataModule):
    """Train/val/test/predict splits of :class:`SyntheticSpectrograms`.

    ``batch_size`` is per process (per device). Validation uses ``seed + 1`` so it never overlaps training.
    """

    def __init__(
        self,
        num_samples: int = 2048,
        val_samples: int = 256,
        freq_bins: int = 32,
        time_steps: int = 32,
        noise_std: float = 0.3,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        sleep_s: float = 0.0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.train_set: SyntheticSpectrograms | None = None
        self.val_set: SyntheticSpectrograms | None = None

    def _dataset(self, n: int, seed: int) -> SyntheticSpectrograms:
        hp = self.hparams
        return SyntheticSpectrograms(
            n, hp["freq_bins"], hp["time_steps"], hp["noise_std"], seed, hp["sleep_s"]
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._dataset(self.hparams["num_samples"], self.hparams["seed"])
            self.val_set = self._dataset(self.hparams["val_samples"], self.hparams["seed"] + 1)

    def _loader(self, dataset: Dataset[tuple[torch.Tensor, torch.Tensor]], shuffle: bool) -> DataLoader:
        workers = self.hparams["num_workers"]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.hparams["pin_memory"],
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return self._loader(self.train_set, self.hparams["shuffle"])

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
