"""yProv4ML made process-safe: one session around its global state (no Lightning import here).

yProv4ML keeps one run in module-level state. :class:`ProvSession` makes that safe: at most one session
per process (a second one raises a clear error instead of corrupting the first), ``end_run`` always
runs (normal close, exception, or interpreter exit via ``atexit``), and the global slot is released even
if ``end_run`` raises.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import platform
import threading
from pathlib import Path
from typing import Any

from itwinai_lightning import compat

_LOCK = threading.Lock()
_ACTIVE: ProvSession | None = None


def metric_context(key: str) -> str:
    """yProv4ML context for a metric name: ``val*`` -> validation, ``test*`` -> testing, else training."""
    lowered = key.lower()
    if lowered.startswith(("val", "valid")) or "/val" in lowered:
        return "validation"
    if lowered.startswith("test") or "/test" in lowered:
        return "testing"
    return "training"


def environment_params() -> dict[str, Any]:
    """Where the run ran: versions, host, launcher and world size."""
    import lightning
    import torch

    from itwinai_lightning.launch.where import detect

    info = detect()
    return {
        "env.python": platform.python_version(),
        "env.torch": torch.__version__,
        "env.lightning": lightning.__version__,
        "env.hostname": platform.node(),
        "env.launcher": info.launcher,
        "env.world_size": info.world_size,
        "env.job_id": info.job_id or "",
    }


class ProvSession:
    """One yProv4ML run in this process. ``start`` / ``close`` are idempotent; only one may be active."""

    def __init__(
        self, save_dir: str | os.PathLike[str], experiment: str, rank: int, namespace: str | None = None
    ):
        self.save_dir = Path(save_dir)
        self.experiment = experiment
        self.rank = int(rank)
        self.namespace = namespace
        self.prov_json: Path | None = None
        self.active = False

    def start(self) -> None:
        global _ACTIVE
        from itwinai_lightning.errors import require

        prov4ml = require("yprov4ml", "prov")
        with _LOCK:
            if _ACTIVE is not None and _ACTIVE is not self:
                raise RuntimeError(
                    f"a yProv4ML run is already active in this process ({_ACTIVE.save_dir}); yProv4ML allows "
                    "one run per process: finalize the other logger first"
                )
            if self.active:
                return
            self.save_dir.mkdir(parents=True, exist_ok=True)
            prov4ml.start_run(
                experiment_name=self.experiment,
                prov_user_namespace=self.namespace,
                provenance_save_dir=str(self.save_dir),
                collect_all_processes=True,
                rank=self.rank,
                metrics_file_type="csv",
            )
            _ACTIVE = self
            self.active = True
        _load_prov_serializers()

    def close(self, create_graph: bool = False) -> Path | None:
        """End the run and write PROV-JSON; always releases the process-wide slot."""
        global _ACTIVE
        with _LOCK:
            if not self.active:
                return self.prov_json
            try:
                import yprov4ml
                import yprov4ml.functs
                from yprov4ml.constants import PROV4ML_DATA

                _keep_requirements_out_of_the_working_directory(yprov4ml.functs, PROV4ML_DATA.EXPERIMENT_DIR)
                yprov4ml.end_run(create_graph=create_graph)
                name = f"prov_{PROV4ML_DATA.PROV_JSON_NAME}.json"
                self.prov_json = Path(PROV4ML_DATA.EXPERIMENT_DIR) / name
            finally:
                self.active = False
                if _ACTIVE is self:
                    _ACTIVE = None
        return self.prov_json


def _load_prov_serializers() -> None:
    """Import the ``prov`` serializers now, at the start of the run.

    ``end_run`` writes PROV-JSON through ``prov``'s serializer registry, which imports every serializer
    (PROV-N, RDF with rdflib, XML) on first use: about 0.15 s of CPU that would otherwise fall into the
    final flush at the end of ``fit``, which the trainer waits for.
    """
    from prov.serializers import Registry

    if Registry.serializers is None:
        Registry.load_serializers()


def _keep_requirements_out_of_the_working_directory(functs: Any, experiment_dir: str) -> None:
    """Point ``end_run``'s requirements step at the run's provenance directory.

    yProv4ML 3.2.3 walks the whole working directory for a ``requirements.txt`` (seconds on a large
    project); from 3.2.8 it also *writes* one into the working directory, the user's project. Here the
    lookup checks only the top level, and the written file goes to ``experiment_dir``, beside the PROV-JSON.
    """
    setattr(functs, compat.PROV_REQUIREMENTS_LOOKUP, _top_level_requirements)
    current = getattr(functs, compat.PROV_REQUIREMENTS_WRITER, None)
    if current is None:  # 3.2.3 writes nothing
        return
    generate = getattr(current, "original", current)  # this run's directory, not an earlier run's

    def into_experiment_dir(_working_dir: str) -> str | None:
        os.makedirs(experiment_dir, exist_ok=True)
        return generate(experiment_dir)  # type: ignore[no-any-return]

    into_experiment_dir.original = generate  # type: ignore[attr-defined]
    setattr(functs, compat.PROV_REQUIREMENTS_WRITER, into_experiment_dir)


def _top_level_requirements(path: str) -> str | None:
    candidate = os.path.join(path, "requirements.txt")
    return candidate if os.path.isfile(candidate) else None


def active_session() -> ProvSession | None:
    return _ACTIVE


@atexit.register
def _close_active_at_exit() -> None:
    session = _ACTIVE
    if session is not None:
        with contextlib.suppress(Exception):  # interpreter is going away: nothing more to do
            session.close()
