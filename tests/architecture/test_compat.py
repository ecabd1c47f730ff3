"""Private APIs of Lightning, torch and yProv4ML are reached only through ``itwinai_lightning/compat.py``,
and each one still exists in the installed versions (a failure names the touch point and the versions
it is tested with)."""

from __future__ import annotations

import ast
import importlib
import platform
from importlib import metadata
from pathlib import Path

import pytest

from itwinai_lightning import compat
from tests.helpers.childenv import REPO
from tests.helpers.engines import require_module

pytestmark = pytest.mark.core  # every supported Python's venv (nox) checks its own installed versions

PACKAGE = Path(compat.__file__).parent
#: the libraries whose private names count
LIBRARIES = ("lightning", "lightning_fabric", "torch", "ray", "yprov4ml", "deepspeed", "horovod")
#: private-looking names that are public API (namedtuple's methods, os._exit)
PUBLIC = {"_replace", "_asdict", "_fields", "_make", "_exit"}
#: the distribution each touch point's top-level module comes from
DISTRIBUTION = {"lightning": "lightning", "torch": "torch", "yprov4ml": "yprov4ml"}


def _resolve(module: str, dotted: str) -> object:
    """``Class.attr``, or ``Class()._attr`` for an attribute every instance has."""
    found: object = importlib.import_module(module)
    for part in dotted.split("."):
        made = part.endswith("()")
        found = getattr(found, part.removesuffix("()"))
        if made:
            found = found()  # type: ignore[operator]
    return found


@pytest.mark.parametrize("point", compat.TOUCH_POINTS, ids=lambda p: f"{p.module}:{p.name}")
def test_each_private_name_still_exists(point: compat.TouchPoint) -> None:
    top = point.module.split(".")[0]
    if top == "yprov4ml":
        require_module("yprov4ml", 'pip install "itwinai-lightning[prov]"')
    installed = metadata.version(DISTRIBUTION[top]) if top in DISTRIBUTION else platform.python_version()
    try:
        _resolve(point.module, point.name)
    except (ImportError, AttributeError) as err:
        pytest.fail(
            f"{point.module}.{point.name} is gone in {top} {installed} ({err}); compat uses it for "
            f"{point.why}; tested with {top}{point.tested}: adapt itwinai_lightning/compat.py"
        )


@pytest.mark.parametrize("owner, hook", compat.OVERRIDDEN_HOOKS, ids=lambda v: str(v))
def test_each_overridden_hook_still_exists(owner: str, hook: str) -> None:
    module, _, name = owner.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert callable(getattr(cls, hook, None)), (
        f"{owner}.{hook} is gone in lightning {metadata.version('lightning')}; a strategy of this package "
        f"overrides it (tested with lightning{compat.LIGHTNING_RANGE})"
    )


def _private_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            names = [a.name for a in node.names]
            if any(n.startswith("_") for n in [*names, *node.module.split(".")]):
                found.append(f"{path.name}:{node.lineno} from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            own = isinstance(base, ast.Name) and base.id in ("self", "cls")
            inherited = (
                isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super"
            )
            if not (own or inherited or node.attr in PUBLIC):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")
            and not str(node.args[1].value).startswith("__") and node.args[1].value not in PUBLIC
        ):  # fmt: skip
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)[:80]}")
    return found


def test_no_module_but_compat_reaches_a_private_name() -> None:
    uses = [u for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "compat.py" for u in _private_uses(p)]
    assert uses == [], "private names reached outside itwinai_lightning/compat.py:\n" + "\n".join(uses)


def test_every_overridden_hook_is_listed() -> None:
    """A ``super()._hook`` call in the package is an override of a protected hook: it must be listed."""
    listed = {hook for _, hook in compat.OVERRIDDEN_HOOKS}
    called = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "super"
            ):  # fmt: skip
                called.add(node.attr)
    assert called <= listed, f"overrides not in compat.OVERRIDDEN_HOOKS: {sorted(called - listed)}"


def test_the_tested_ranges_are_the_declared_dependency_ranges() -> None:
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    specs = {d.split(">")[0].split("<")[0].split("=")[0].strip(): d for d in declared}
    assert specs["lightning"] == f"lightning{compat.LIGHTNING_RANGE}"
    assert specs["torch"] == f"torch{compat.TORCH_RANGE}"
