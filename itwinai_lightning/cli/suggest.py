""" "Did you mean ...?" for the CLI's one-line errors: unknown keys, class paths, callbacks and strategies.

Candidates come from what the run would accept: the Trainer's and the model's/data module's constructor
arguments, the members of the module a class path names, this package's short names and Lightning's
callbacks and strategies. A suggestion is made only when one candidate is close (``difflib``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: the top-level keys of a LightningCLI fit/validate/test/predict config
SECTIONS = ("trainer", "model", "data", "seed_everything", "optimizer", "lr_scheduler", "ckpt_path", "config")


def closest(word: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.75)
    return found[0] if found else None


def _arguments(cls: Any) -> list[str]:
    try:
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        return []


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _class_path_of(section: str, configs: Sequence[Mapping[str, Any]], args: Sequence[str]) -> str | None:
    """The class path the configs and flags give ``section`` (later wins)."""
    found = None
    for data in configs:
        node = data.get(section) if isinstance(data, Mapping) else None
        if isinstance(node, Mapping) and isinstance(node.get("class_path"), str):
            found = node["class_path"]
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if key in (f"--{section}", f"--{section}.class_path"):
            found = value if eq else (args[i + 1] if i + 1 < len(args) else found)
    return found


def key_candidates(dotted: str, configs: Sequence[Mapping[str, Any]], args: Sequence[str]) -> list[str]:
    """Dotted keys a config could have instead of ``dotted`` (same depth, same section)."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return list(SECTIONS)
    section = parts[0]
    if section == "trainer":
        from lightning.pytorch import Trainer

        return [f"trainer.{a}" for a in _arguments(Trainer)]
    if section in ("model", "data"):
        cls = _import(_class_path_of(section, configs, args) or "")
        if cls is None:
            return []
        prefix = f"{section}.init_args." if len(parts) > 2 and parts[1] == "init_args" else f"{section}."
        return [f"{prefix}{a}" for a in _arguments(cls)]
    return [f"{s}.{parts[1]}" for s in SECTIONS] if section not in SECTIONS else []


def class_names() -> list[str]:
    """Names usable as a callback/strategy/logger class: this package's and Lightning's."""
    from lightning.pytorch import callbacks

    from itwinai_lightning import callbacks as ours
    from itwinai_lightning.strategies import SHORT_NAMES

    names = [n for n in dir(callbacks) if n[:1].isupper()] + [n for n in dir(ours) if n[:1].isupper()]
    return [*names, *SHORT_NAMES]


def hint(message: str, configs: Sequence[Mapping[str, Any]] = (), args: Sequence[str] = ()) -> str:
    """`` (did you mean 'X'?)`` for an error message, or ``""``."""
    guess: str | None = None
    if match := re.search(r"class_path '([\w.]+)': module '([\w.]+)' has no attribute '(\w+)'", message):
        module = importlib.import_module(match.group(2))
        found = closest(match.group(3), [n for n in dir(module) if n[:1].isupper()])
        guess = f"{match.group(2)}.{found}" if found else None
    elif match := re.search(r"No module named '([\w.]+)'", message):
        return _not_on_path(match.group(1))
    elif match := re.search(r"Expected a path but ([\w.]+) either not accessible or invalid", message):
        path = match.group(1)
        if "." in path:  # a class path given on the command line: the closest member of its module
            module_name, _, name = path.rpartition(".")
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                return _not_on_path(module_name.split(".")[0])
            found = closest(name, [n for n in dir(module) if n[:1].isupper()])
            guess = f"{module_name}.{found}" if found else None
        else:
            guess = closest(path, class_names())
    elif match := re.search(r"invalid strategy name: `strategy='([\w-]+)'`", message):
        from lightning.pytorch.strategies import StrategyRegistry

        from itwinai_lightning.strategies import SHORT_NAMES

        guess = closest(match.group(1), [*StrategyRegistry.available_strategies(), *SHORT_NAMES])
    elif match := re.search(r"Parser key \"(model|data)\": Option '(\w+)' is not accepted", message):
        cls = _import(_class_path_of(match.group(1), configs, args) or "")
        guess = closest(match.group(2), _arguments(cls)) if cls is not None else None
    elif match := re.search(r"(?:does not accept option|unrecognized arguments:) '?-*([\w.]+)", message):
        guess = closest(match.group(1), key_candidates(match.group(1), configs, args))
    return f" (did you mean '{guess}'?)" if guess else ""


def _not_on_path(module: str) -> str:
    """``; run with PYTHONPATH=. ...`` when the missing module is a file in the working directory."""
    from pathlib import Path

    top = module.split(".")[0]
    if Path(f"{top}.py").is_file() or Path(top, "__init__.py").is_file():
        return f"; {top} is in the working directory but not importable: run with PYTHONPATH=."
    return ""
