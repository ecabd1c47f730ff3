"""``--ckpt_path``: resolved to exactly one checkpoint before anything is built, or one line (exit 2).

================================  ===================================================================
value                             what it loads
================================  ===================================================================
a ``.ckpt`` file (or directory)   that checkpoint (a sharded FSDP/DeepSpeed checkpoint is a directory)
a run directory                   the checkpoint that run recorded in ``run_record.json``: its best when
                                  it monitored a metric (validate/test/predict), its last (fit: resume);
                                  without a record, the newest ``last*.ckpt`` below it
a root (``runs/quickstart``)      the same, for its newest run that recorded a checkpoint
                                  (``version_N``, see :mod:`itwinai_lightning.runs.run_dir`)
``last`` / ``best``               the same, in the config's ``trainer.default_root_dir``
``models:/NAME/VERSION``          a registered model (MLflow), fetched before the model is built
``module``                        no checkpoint: the module's own weights (e.g. it loads pretrained
                                  weights itself); validate/test/predict without ``--ckpt_path`` are
                                  refused, since they would run an untrained network without a word
``hpc`` / ``registry``            Lightning's own meaning, passed through
================================  ===================================================================

The choice is said in one line (``itwinai-lightning: ckpt_path ...: <file>``), so a reused or newer
checkpoint is never a silent outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from itwinai_lightning.errors import UserError
from itwinai_lightning.inference.model_source import is_registry_uri

#: the value that asks for no checkpoint at all (the module's own weights)
MODULE_WEIGHTS = "module"
#: Lightning's own keywords, passed through unchanged
LIGHTNING_KEYWORDS = ("hpc", "registry")
CHOICES = "a .ckpt file, a run directory (e.g. runs/quickstart), last, best, models:/NAME/VERSION or module"


@dataclass(frozen=True)
class Choice:
    """What Lightning gets as ``ckpt_path`` (``None``: no checkpoint) and the line that says why."""

    path: str | None
    note: str | None = None


def resolve(value: str | None, stage: str, root_dir: str | None) -> Choice:
    """Resolve ``--ckpt_path`` for ``stage`` (fit|validate|test|predict); ``root_dir`` is the config's
    ``trainer.default_root_dir``. Raises :class:`UserError` when nothing loadable is named."""
    if value is None:
        if stage == "fit":
            return Choice(None)
        raise UserError(
            f"{stage}: no --ckpt_path, so the model would run with its initial, untrained weights; pass "
            "the run directory of a fit (e.g. --ckpt_path runs/quickstart: its best checkpoint), a .ckpt "
            "file, last, best or models:/NAME/VERSION, or --ckpt_path module to run the module's own weights "
            "(a module that loads pretrained weights itself)"
        )
    text = str(value)
    if text == MODULE_WEIGHTS:
        return Choice(None, f"ckpt_path {MODULE_WEIGHTS}: no checkpoint loaded, the module's own weights")
    if text in LIGHTNING_KEYWORDS or is_registry_uri(text):
        return Choice(text)
    prefer = "last" if stage == "fit" else "best"
    if text in ("last", "best"):
        root = Path(root_dir or ".")
        return _in_dir(root, text, f"ckpt_path {text} (in {root})")
    path = Path(text).expanduser()
    if path.is_file() or (path.is_dir() and path.suffix == ".ckpt"):
        return Choice(str(path))
    if path.is_dir():
        return _in_dir(path, prefer, f"ckpt_path {text}")
    raise UserError(f"ckpt_path {text}: no such file or directory; pass {CHOICES}")


def recorded(run_dir: Path) -> dict[str, Path]:
    """``{"best": ..., "last": ...}``: the checkpoints the run in ``run_dir`` recorded, where they exist."""
    from itwinai_lightning.records import store

    try:
        record = store.load(store.record_path(run_dir))
    except (OSError, ValueError):
        return {}
    entry = record.get("checkpoints") or {}
    out: dict[str, Path] = {}
    for key in ("best", "last"):
        name = entry.get(key)
        if name:
            path = Path(str(name)) if Path(str(name)).is_absolute() else run_dir / str(name)
            if path.exists():
                out[key] = path
    return out


def _in_dir(path: Path, prefer: str, said: str) -> Choice:
    """A run directory's checkpoint, or for a root of runs its newest run's that recorded one."""
    from itwinai_lightning.records import store
    from itwinai_lightning.runs.run_dir import version_dirs

    runs = version_dirs(path) if not store.record_path(path).exists() else []
    for run in reversed(runs):
        found = recorded(run)
        if found:
            kind = prefer if prefer in found else next(iter(found))
            why = "" if kind == prefer else f"; it recorded no {prefer}"
            note = f"{said}: {found[kind]} (the {kind} checkpoint of its newest run, {run.name}{why})"
            return Choice(str(found[kind]), note)
    return _in_run_dir(path, prefer, said)


def _in_run_dir(run_dir: Path, prefer: str, said: str) -> Choice:
    found = recorded(run_dir)
    if prefer in found:
        return Choice(str(found[prefer]), f"{said}: {found[prefer]} (the run's {prefer} checkpoint)")
    if found:
        kind, path = next(iter(found.items()))
        return Choice(str(path), f"{said}: {path} (the run's {kind} checkpoint; it recorded no {prefer})")
    newest = _newest(run_dir)
    if newest is None:
        raise UserError(
            f"{said}: no checkpoint under {run_dir}; train first (fit --trainer.default_root_dir {run_dir}) "
            f"or pass {CHOICES}"
        )
    return Choice(str(newest), f"{said}: {newest} (the newest checkpoint there; no run record names one)")


def _newest(root: Path) -> Path | None:
    from itwinai_lightning.runs.newest import latest_checkpoint

    lasts = [p for p in root.rglob("last*.ckpt") if not any(q.suffix == ".ckpt" for q in p.parents)]
    if lasts:
        return max(lasts, key=lambda p: (p.stat().st_mtime, str(p)))
    return latest_checkpoint(root)
