"""The shipped synthetic workload: denoising synthetic spectrograms with a small conv net.

No downloads: the data are generated deterministically from a seed. Dataset size, image size and model
width/depth are constructor arguments (config knobs) so benchmarks can scale the work.
"""

from itwinai_lightning.demo.data import SpectrogramDataModule, SyntheticSpectrograms
from itwinai_lightning.demo.model import SpectrogramDenoiser

__all__ = ["SpectrogramDataModule", "SpectrogramDenoiser", "SyntheticSpectrograms"]
