"""ProvenanceLogger: W3C PROV (PROV-JSON) per rank with yProv4ML, through the MultiLogger machinery.

The yProv4ML session (one run per process, always finalized) lives in
:mod:`itwinai_lightning.loggers.prov_session`; its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from itwinai_lightning.loggers.multi import MultiLogger
from itwinai_lightning.loggers.prov_session import (
    ProvSession,
    active_session,
    environment_params,
    metric_context,
)

__all__ = ["ProvSession", "ProvenanceLogger", "active_session", "environment_params", "metric_context"]


class ProvenanceLogger(MultiLogger):
    """A Lightning logger that records W3C PROV (PROV-JSON) with yProv4ML, one document per rank.

    The same fan-out machinery as :class:`MultiLogger` (off the training thread, failure-isolated,
    spooled), with only the ``prov`` backend, on every rank by default.

    ==========================  ================================================  ===========
    What is recorded            yProv4ML entity / context                         Unit
    ==========================  ================================================  ===========
    hyperparameters             params (flattened, secrets redacted)              as given
    per-step metrics            metrics, context training / validation / testing  as logged
    checkpoints                 artifacts (best and last at the end)              file path
    resolved config             artifact ``<run_dir>/config.yaml`` (input)        file path
    environment                 params ``env.*``: python, torch, lightning,       text
                                host, launcher, world size, job id
    ==========================  ================================================  ===========

    Files: ``<run_dir>/prov/rank<N>/<experiment>_<k>/prov_<experiment>_GR<N>_<k>.json``.
    """

    def __init__(
        self,
        experiment: str = "itwinai",
        run_dir: str | None = None,
        ranks: str = "all",
        namespace: str | None = None,
        create_graph: bool = False,
        flush_timeout_s: float = 60.0,
        log_checkpoints: str = "best",
        secret_keys: Sequence[str] = (),
    ) -> None:
        backend: Mapping[str, Any] = {
            "type": "prov", "ranks": ranks, "namespace": namespace, "create_graph": create_graph,
        }  # fmt: skip
        super().__init__(
            backends=[backend],
            experiment=experiment,
            run_dir=run_dir,
            flush_timeout_s=flush_timeout_s,
            log_checkpoints=log_checkpoints,
            secret_keys=secret_keys,
        )
