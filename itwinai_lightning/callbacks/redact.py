"""RedactCheckpointSecrets: no token, key or password in the hyperparameters a checkpoint stores."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from itwinai_lightning.secrets import redact

#: the checkpoint entries that hold constructor arguments (``save_hyperparameters``)
HPARAM_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


class RedactCheckpointSecrets(Callback):
    """Replaces secret-looking hyperparameters (``api_key``, ``*_token``, ``password``, URL credentials,
    ``ITWINAI_SECRET_KEYS``) with ``***REDACTED***`` in every checkpoint written, so no checkpoint that
    is copied or uploaded (MLflow artifacts, the model registry) carries them. Logs nothing.

    The weights are untouched. Give a redacted argument again when loading::

        MyModel.load_from_checkpoint(path, api_key=os.environ["MY_API_KEY"])

    The CLI adds this callback to every run; add it yourself to a plain ``Trainer``.
    """

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for key in HPARAM_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint[key] = redact(dict(checkpoint[key]))
