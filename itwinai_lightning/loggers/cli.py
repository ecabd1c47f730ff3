"""``python -m itwinai_lightning logs replay RUN_DIR [--to mlflow://host:port]``: re-send spooled records.

Typical use: a job on compute nodes without network logged to MLflow/W&B; its records were spooled
under ``RUN_DIR/tracking_spool/``. From a login node, ``logs replay`` delivers them (to the original
server, or to the one given with ``--to``) and registers a pending model version. Exit code 0 when
everything was delivered, 1 when records remain spooled, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from itwinai_lightning.errors import CommandParser, UserError
from itwinai_lightning.loggers.backends import RunContext, build_backend
from itwinai_lightning.loggers.backends.mlflow import normalise_uri
from itwinai_lightning.loggers.registry import PENDING_FILENAME, register
from itwinai_lightning.loggers.spool import Spool, spool_dir


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="itwinai-lightning logs", description="Tracking spools of a run.")
    sub = parser.add_subparsers(dest="action", required=True)
    replay = sub.add_parser("replay", help="deliver the records spooled in RUN_DIR/tracking_spool")
    replay.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or a root of runs (its latest)")
    replay.add_argument(
        "--to", help="send MLflow records to this server instead (mlflow://host:port or http://...)"
    )
    replay.add_argument("--backend", action="append", help="only these backend names (repeatable)")
    return parser


def replay_spool(spool: Spool, to: str | None = None) -> dict[str, Any]:
    """Deliver one backend's spool; returns {backend, delivered, remaining, error, target}."""
    meta = spool.read_meta()
    if not meta.get("spec"):
        raise UserError(
            f"{spool.meta_path} is missing or has no 'spec': cannot tell which backend to rebuild"
        )
    spec = dict(meta["spec"])
    if to and spec.get("type") == "mlflow":
        spec["tracking_uri"] = normalise_uri(to)
    elif spec.get("type") == "mlflow" and not spec.get("tracking_uri"):
        spec["tracking_uri"] = (meta.get("state") or {}).get("tracking_uri")
    backend = build_backend(spec)
    backend.resume(meta.get("state") or {})
    ctx = RunContext.from_dict(meta.get("context") or {"run_dir": str(spool.directory.parent)})
    result: dict[str, Any] = {"backend": spool.name, "delivered": 0, "error": None}
    try:
        backend.ensure_open(ctx)
        result["delivered"] = spool.drain(backend.write)
    except Exception as err:
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        try:
            if backend.is_open:
                backend.close("success")
        except Exception as err:
            result["error"] = result["error"] or f"{type(err).__name__}: {err}"
    state = backend.state()
    spool.write_meta({**meta, "state": state})
    spool.remove_if_empty()
    result["remaining"] = len(spool)
    result["target"] = state.get("tracking_uri") or spec.get("type")
    return result


def _hand_over_links(directory: Path) -> None:
    """Records that never reached the tracking process (the trainer died first) go to each backend."""
    from itwinai_lightning.loggers.tracking_process import LINK_NAME, hand_over_spool

    for meta_path in sorted(directory.glob(f"{LINK_NAME}*.meta.json")):
        link = Spool(directory, meta_path.name[: -len(".meta.json")])
        meta = link.read_meta()
        if len(link) and (meta.get("spec") or {}).get("type") == LINK_NAME:
            backends = [build_backend(spec) for spec in meta["spec"].get("backends") or []]
            ctx = RunContext.from_dict(meta.get("context") or {"run_dir": str(directory.parent)})
            hand_over_spool(link, backends, ctx)
            link.remove_if_empty()


def replay(run_dir: str | Path, to: str | None = None, only: list[str] | None = None) -> list[dict[str, Any]]:
    if not Path(run_dir).is_dir():
        raise UserError(f"RUN_DIR {run_dir} is not a directory; pass a run directory (runs/x/version_0)")
    from itwinai_lightning.records.store import run_of

    run_dir = run_of(Path(run_dir))
    directory = spool_dir(run_dir)
    _hand_over_links(directory)
    results = []
    for meta_path in sorted(directory.glob("*.meta.json")):
        name = meta_path.name[: -len(".meta.json")]
        spool = Spool(directory, name)
        if not len(spool) or (only and name.split(".rank")[0] not in only):
            continue
        results.append(replay_spool(spool, to))
    pending = directory / PENDING_FILENAME
    if pending.exists() and (not only or "registry" in only):
        request = json.loads(pending.read_text())
        if to:
            request["tracking_uri"], request["run_id"] = normalise_uri(to), None
        row: dict[str, Any] = {"backend": "registry", "delivered": 0, "remaining": 1, "error": None}
        try:
            version = register(request)
            pending.unlink()
            row.update(delivered=1, remaining=0, target=f"{request['model_name']} v{version.version}")
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"
        results.append(row)
    return results


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    results = replay(args.run_dir, args.to, args.backend)
    if not results:
        print(f"nothing to replay in {spool_dir(args.run_dir)}")
        return 0
    for row in results:
        line = f"{row['backend']}: {row['delivered']} delivered to {row.get('target')}, "
        line += f"{row['remaining']} remaining"
        print(line + (f" ({row['error']})" if row["error"] else ""))
    return 1 if any(row["remaining"] for row in results) else 0
