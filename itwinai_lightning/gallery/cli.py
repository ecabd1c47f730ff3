"""``itwinai-lightning examples``: list the shipped example configs, or copy them into a directory.

The gallery is package data (``itwinai_lightning/examples``; ``configs/`` in a clone points at it), so a
``pip install`` has it too::

    itwinai-lightning examples                 # what there is, one line each
    itwinai-lightning examples --to my_project # copy every file (never overwrites; --force to do so)
"""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

from itwinai_lightning.errors import CommandParser, UserError, parse_command_args

SUFFIXES = (".yaml", ".py")


def gallery_dir() -> Path:
    """Where the example files are installed."""
    return Path(str(resources.files("itwinai_lightning") / "examples"))


def examples() -> list[Path]:
    return sorted(p for p in gallery_dir().iterdir() if p.suffix in SUFFIXES and not p.name.startswith("_"))


def summary(path: Path) -> str:
    """The first sentence of a YAML file's header comment, or of a Python file's docstring (whole, even
    when it spans lines)."""
    words: list[str] = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if path.suffix == ".py":
            text = text.strip('"').strip()
        elif not text.startswith("#"):
            break
        text = text.lstrip("#").strip()
        if not text or (words and line.lstrip("#").startswith("  ")):  # a blank line or an indented command
            if words:
                break
            continue
        words.append(text)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(words), maxsplit=1)[0]


#: how the headers refer to the gallery in a clone; a copy has the files side by side
CLONE_PREFIX = "configs/"


def _as_copied(text: str) -> str:
    """The file's text with its header commands written for the copy's folder (``--config quickstart.yaml``,
    not ``--config configs/quickstart.yaml``); only comment lines change."""
    lines = text.splitlines(keepends=True)
    return "".join(ln.replace(CLONE_PREFIX, "") if ln.lstrip().startswith("#") else ln for ln in lines)


def copy_to(target: Path, force: bool = False) -> list[Path]:
    """Copy every example into ``target``; refuse (before copying anything) to overwrite without ``force``.

    The copies' header comments name the files as they lie there (see :func:`_as_copied`)."""
    files = examples()
    clashes = [target / p.name for p in files if (target / p.name).exists()]
    if clashes and not force:
        raise UserError(
            f"examples: {clashes[0]} already exists ({len(clashes)} of {len(files)} files would be "
            "overwritten); choose another --to directory or pass --force"
        )
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in files:
        out = target / path.name
        out.write_text(_as_copied(path.read_text()))
        shutil.copystat(path, out)
        copied.append(out)
    return copied


def main(argv: list[str]) -> int:
    parser = CommandParser(
        prog="itwinai-lightning examples",
        description="List the example configs shipped with itwinai-lightning, or copy them into a directory.",
        allow_abbrev=False,
    )
    parser.add_argument("--to", default=None, metavar="DIR", help="copy every example into this directory")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist there")
    args = parse_command_args(parser, argv, "examples")
    if args.to is None:
        width = max(len(p.name) for p in examples())
        for path in examples():
            print(f"{path.name:<{width}}  {summary(path)}")
        print(f"\n{gallery_dir()}\ncopy them: itwinai-lightning examples --to DIR")
        return 0
    copied = copy_to(Path(args.to), args.force)
    print(f"examples: copied {len(copied)} files to {Path(args.to).resolve()}")
    first = "python -m itwinai_lightning fit --config quickstart.yaml --trainer.max_epochs 2"
    print(f"try: cd {args.to} && {first}")
    return 0
