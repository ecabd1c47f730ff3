"""Split a subcommand's own section (``tune:``, ``benchmark:``, ``slurm:``) out of LightningCLI arguments,
and parse it into its typed dataclass (:func:`parse_section`, jsonargparse: the one way sections are parsed).

``tune``/``benchmark``/``slurm`` take the same ``--config`` files and dotted overrides as ``fit``, plus a
section of their own, given in any of the YAML files or as ``--<section>.<key> VALUE`` flags. This module
removes that section and hands back (a) the section's values and (b) the arguments for LightningCLI, with
config files rewritten (to a temporary copy) only when they contained the section.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from itwinai_lightning.errors import UserError, collecting

T = TypeVar("T")

CONFIG_FLAGS = ("--config", "-c")


def config_positions(argv: Sequence[str]) -> list[tuple[int, str, bool]]:
    """Every config file in a command line, the one place that finds them: ``(index, path, inline)`` for
    ``--config FILE``, ``-c FILE`` (index of FILE) and ``--config=FILE`` (index of the flag, inline)."""
    found = []
    for i, arg in enumerate(argv):
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            found.append((i + 1, str(argv[i + 1]), False))
        elif arg.startswith("--config="):
            found.append((i, arg.split("=", 1)[1], True))
    return found


def config_paths(argv: Sequence[str]) -> list[str]:
    """The config files of a command line, in order."""
    return [path for _, path, _ in config_positions(argv)]


#: what :func:`get_dotted` returns for a key the mapping does not hold
MISSING: Any = object()


def get_dotted(data: Any, dotted: str, default: Any = None) -> Any:
    """``data["a"]["b"]["c"]`` for ``"a.b.c"`` (mappings and jsonargparse namespaces alike), else
    ``default``: the one walk over a dotted key."""
    node = data
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, IndexError):
            return default
    return node


def value_of(argv: Sequence[str], dotted: str, *aliases: str) -> Any:
    """The value of ``dotted`` (e.g. ``trainer.default_root_dir``) that a command line's ``--config`` files
    and ``--dotted`` flags (or ``--alias`` flags, e.g. ``data.batch_size`` for
    ``data.init_args.batch_size``) give, later wins; ``None`` when none gives it. The one scan of argv
    for callers that need one key before (or without) building the LightningCLI."""
    files = {at: path for at, path, _ in config_positions(argv)}
    flags = {f"--{name}" for name in (dotted, *aliases)}
    found: Any = None
    for i, arg in enumerate(argv):
        key, eq, inline = arg.partition("=")
        if i in files:
            from_file = get_dotted(load_yaml_file(files[i]), dotted)
            found = from_file if from_file is not None else found
        elif key in flags and eq:
            found = inline
        elif arg in flags and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file (and line) and say what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {str(path)!r} must hold a mapping (key: value), not {type(data).__name__}"
        )
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge; ``override`` wins; lists are replaced, not concatenated."""
    out = deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = deepcopy(value)
    return out


def set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    """``target["a"]["b"]["c"] = value`` for ``"a.b.c"``, making the mappings on the way."""
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_value(text: str) -> Any:
    """CLI values are YAML scalars/flow collections: ``3`` -> 3, ``[1, 2]`` -> [1, 2], ``true`` -> True."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_section(
    argv: Sequence[str],
    section: str,
    defaults: Mapping[str, Any] | None = None,
    workdir: str | Path | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Return ``(section_values, lightning_argv)``.

    Section values merge, in order: ``defaults``, each config file's ``section:`` (later files win), then
    ``--section.key value`` / ``--section.key=value`` flags. Config files without the section pass through
    unchanged; those with it are replaced by a copy without it under ``workdir`` (default: a temp dir).
    """
    values: dict[str, Any] = deepcopy(dict(defaults or {}))
    flags: list[tuple[str, Any]] = []
    rest: list[str] = []
    tmp_dir: Path | None = Path(workdir) if workdir is not None else None
    prefix = f"--{section}."
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, inline = arg.partition("=")
        if key in CONFIG_FLAGS or (key == "--config" and eq):
            if eq:
                path = inline
            else:
                if i + 1 >= len(args):
                    raise UserError(f"{arg} needs a file path")
                path, i = args[i + 1], i + 1
            data = load_yaml_file(path)
            if section in data:
                own = data.pop(section) or {}
                if not isinstance(own, dict):
                    raise UserError(f"config file {path!r}: '{section}:' must be a mapping of options")
                values = deep_merge(values, own)
                if tmp_dir is None:
                    tmp_dir = Path(tempfile.mkdtemp(prefix=f"itwinai-{section}-"))
                tmp_dir.mkdir(parents=True, exist_ok=True)
                copy = tmp_dir / f"{len(rest)}-{Path(path).name}"
                copy.write_text(yaml.safe_dump(data, sort_keys=False))
                path = str(copy)
            rest += ["--config", path]
        elif key.startswith(prefix):
            if eq:
                raw = inline
            else:
                if i + 1 >= len(args):
                    raise UserError(f"{arg} needs a value")
                raw, i = args[i + 1], i + 1
            flags.append((key[len(prefix) :], parse_value(raw)))
        else:
            rest.append(arg)
        i += 1
    for dotted, value in flags:
        set_dotted(values, dotted, value)
    return values, rest


def keep_rewritten_configs(argv: Sequence[str], workdir: Path, keep: Path) -> list[str]:
    """``argv`` with every config file :func:`split_section` rewrote under ``workdir`` copied to ``keep``
    (same names) and named there; the other arguments unchanged."""
    out = list(argv)
    for at, path, inline in config_positions(argv):
        if Path(path).parent != workdir:
            continue
        keep.mkdir(parents=True, exist_ok=True)
        kept = keep / Path(path).name
        kept.write_text(Path(path).read_text())
        out[at] = f"--config={kept}" if inline else str(kept)
    return out


def check_known_keys(values: Mapping[str, Any], known: Sequence[str], section: str) -> None:
    """Raise a UserError naming an unknown ``section.key`` and listing the accepted ones."""
    unknown = [k for k in values if k not in known]
    if unknown:
        raise UserError(f"unknown option '{section}.{unknown[0]}'; accepted: {', '.join(sorted(known))}")


def parse_section(cls: type[T], values: Mapping[str, Any], name: str) -> T:
    """The ``name:`` section as one ``cls`` (a dataclass), parsed and validated by jsonargparse: the types
    come from the dataclass's annotations (the same class gives ``--help``), its ``__post_init__`` checks
    what spans keys. Every mistake is one :class:`UserError` naming ``name.key``."""
    from jsonargparse import ArgumentParser

    check_known_keys(values, [f.name for f in fields(cls)], name)  # type: ignore[arg-type]
    parser = ArgumentParser(exit_on_error=False, env_prefix=False, default_env=False)
    parser.add_class_arguments(cls, name)
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes
    with collecting() as created:
        try:
            return build(parser.parse_object({name: dict(values)}))[name]  # type: ignore[no-any-return]
        except UserError:
            raise
        except Exception as err:
            if created:  # a check of the dataclass, wrapped by jsonargparse
                raise created[0] from None
            raise UserError(jsonargparse_line(str(err), name)) from None


def jsonargparse_line(message: str, name: str) -> str:
    """One line from a jsonargparse error: ``<name>.<key>: expected <type>, got <value>``."""
    key = re.search(r'Parser key "([^"]+)"', message)
    expected = re.findall(r"Expected an? (?:<class '([^']+)'>|([^.\n]+?))(?:\. Got value: ([^\n]+))?$",
                          message, re.MULTILINE)  # fmt: skip
    where = key.group(1) if key else name
    if not expected:
        return f"{where}: {message.strip().splitlines()[-1].strip()}"
    kind, other, value = next((e for e in expected if e[2]), expected[0])
    given = re.search(r"Given value: ([^\n]+)", message)
    got = value or (given.group(1) if given else "")
    return f"{where}: expected {kind or other}" + (f", got {got}" if got else "")
