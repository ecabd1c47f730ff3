"""The ``tune.search_space`` section: YAML distributions over dotted config keys, validated without Ray.

Each entry maps a dotted LightningCLI key to a one-key mapping naming the distribution::

    search_space:
      model.init_args.lr: {loguniform: [1.0e-4, 1.0e-1]}
      model.init_args.width: {randint: [8, 33]}          # high exclusive, like ray.tune.randint
      data.init_args.batch_size: {choice: [32, 64]}
      model.init_args.depth: {grid: [2, 4]}              # every value, times num_samples
      model.init_args.dropout: {quniform: [0.0, 0.5, 0.1]}
      model.init_args.momentum: {uniform: [0.8, 0.99]}

Everything here is plain Python: :func:`parse_search_space` raises :class:`UserError` naming the key for an
unknown distribution, a wrong number of bounds, ``low > high`` or a non-positive log bound; Ray is imported
only by :meth:`Distribution.to_ray`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from itwinai_lightning.errors import UserError

#: distribution name -> one-line description of its arguments (used in error messages and docs).
KINDS: dict[str, str] = {
    "uniform": "[low, high]",
    "quniform": "[low, high, q]",
    "loguniform": "[low, high] with 0 < low",
    "randint": "[low, high] (high exclusive)",
    "choice": "[value, value, ...]",
    "grid": "[value, value, ...]",
}


@dataclass(frozen=True)
class Distribution:
    """One searchable dimension: ``kind`` in :data:`KINDS` and its ``args``."""

    key: str
    kind: str
    args: tuple[Any, ...]

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    def representative(self) -> Any:
        """A value of the right type, used to validate the key against the LightningCLI parser."""
        if self.kind in ("choice", "grid"):
            return self.args[0]
        if self.kind == "randint":
            return int(self.args[0])
        return float(self.args[0])

    def values_to_check(self) -> list[Any]:
        """Every value whose type LightningCLI must accept (all of a choice/grid, the bounds otherwise)."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        return [self.representative()]

    def to_ray(self) -> Any:
        """The ``ray.tune`` sampler for this dimension (imports Ray)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        low, high = float(self.args[0]), float(self.args[1])
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if self.kind == "quniform":
            return tune.quniform(low, high, self.args[2])
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        return tune.randint(int(low), int(high))

    def to_mutation(self) -> Any:
        """What PBT's ``hyperparam_mutations`` takes: a list for choice/grid, a sampler otherwise."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        return self.to_ray()


def _number(key: str, kind: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"tune.search_space.{key}: {kind} bounds must be numbers, got {value!r}")
    return float(value)


def parse_distribution(key: str, spec: Any) -> Distribution:
    """Validate one ``{kind: args}`` entry."""
    where = f"tune.search_space.{key}"
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise UserError(
            f"{where}: expected one distribution such as {{loguniform: [1e-4, 1e-1]}}, got {spec!r}; "
            f"distributions: {', '.join(KINDS)}"
        )
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        raise UserError(f"{where}: unknown distribution {kind!r}; use one of: {', '.join(KINDS)}")
    if not isinstance(args, list | tuple) or not args:
        raise UserError(f"{where}: {kind} takes a non-empty list {KINDS[kind]}, got {args!r}")
    if kind in ("choice", "grid"):
        return Distribution(key, kind, tuple(args))
    expected = 3 if kind == "quniform" else 2
    if len(args) != expected:
        raise UserError(f"{where}: {kind} takes {KINDS[kind]}, got {list(args)!r}")
    numbers = [_number(key, kind, a) for a in args]
    low, high = numbers[0], numbers[1]
    if low > high or (low == high and kind != "uniform"):
        raise UserError(f"{where}: {kind} needs low < high, got low={args[0]!r} > high={args[1]!r}")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform needs 0 < low, got low={args[0]!r}")
    if kind == "randint" and not all(float(a).is_integer() for a in args):
        raise UserError(f"{where}: randint takes integer bounds, got {list(args)!r}")
    if kind == "quniform" and numbers[2] <= 0:
        raise UserError(f"{where}: quniform needs a positive step q, got {args[2]!r}")
    return Distribution(key, kind, tuple(args))


def parse_search_space(raw: Any) -> dict[str, Distribution]:
    """``tune.search_space`` mapping -> validated distributions (key order kept)."""
    if raw is None or raw == {}:
        raise UserError(
            "tune.search_space is empty; add at least one key, e.g. "
            "tune: {search_space: {model.init_args.lr: {loguniform: [1.0e-4, 1.0e-1]}}}"
        )
    if not isinstance(raw, Mapping):
        raise UserError(f"tune.search_space must be a mapping of dotted keys to distributions, got {raw!r}")
    flat = _flatten(raw)
    return {key: parse_distribution(key, spec) for key, spec in flat.items()}


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Accept both ``model.init_args.lr: {...}`` and nested ``model: {init_args: {lr: {...}}}``."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        nested = isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values())
        if nested and not any(k in KINDS for k in value):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def to_param_space(space: Mapping[str, Distribution]) -> dict[str, Any]:
    """Ray ``param_space``: flat, keyed by the dotted config key (imports Ray)."""
    return {key: dist.to_ray() for key, dist in space.items()}


def override_args(values: Mapping[str, Any]) -> list[str]:
    """Sampled values -> LightningCLI dotted overrides (``--model.init_args.lr=0.01``)."""
    import json

    args = []
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(_plain(value))
        args.append(f"--{key}={text}")
    return args


def _plain(value: Any) -> Any:
    """numpy scalars (what Ray samples) -> Python numbers, so JSON/YAML see plain values."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, list | tuple | dict):
        return item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def plain_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _plain(value) for key, value in values.items()}
