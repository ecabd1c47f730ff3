"""itwinai-lightning: HPC-aware strategies, callbacks, loggers and subcommands around PyTorch Lightning.

Importing this package is cheap on purpose: it never imports Ray, MLflow, W&B, DeepSpeed or Horovod.
Those optional backends are imported by the classes that use them, when they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
