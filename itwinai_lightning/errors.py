"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NoReturn

EXIT_USAGE = 2
#: the UserErrors created inside :func:`collecting` (a library may wrap them in its own error)
_COLLECTED: ContextVar[list[UserError] | None] = ContextVar("itwinai_user_errors", default=None)


class UserError(Exception):
    """An error caused by the user's input (config, CLI flags, environment), not by a bug.

    The CLI prints ``itwinai-lightning: error: <message>`` and exits with code 2. The message must name
    the offending key or file and say what to do.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        collected = _COLLECTED.get()
        if collected is not None:
            collected.append(self)


@contextmanager
def collecting() -> Iterator[list[UserError]]:
    """Every UserError created inside the block, also those a library catches and re-raises as its own
    (jsonargparse turns a constructor's error into "Does not validate against any of the Union subtypes")."""
    created: list[UserError] = []
    token = _COLLECTED.set(created)
    try:
        yield created
    finally:
        _COLLECTED.reset(token)


class MissingExtraError(UserError, ImportError):
    """An optional backend is not installed."""

    def __init__(self, module: str, extra: str, hint: str | None = None) -> None:
        how = hint or f'pip install "itwinai-lightning[{extra}]"'
        super().__init__(
            f"'{module}' is not installed; it is needed for this feature. Install it with: {how}"
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str, hint: str | None = None):  # type: ignore[no-untyped-def]
    """Import an optional dependency or raise :class:`MissingExtraError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and not module.startswith(err.name.split(".")[0]):
            raise  # the module exists but one of *its* dependencies is broken: show the real error
        raise MissingExtraError(module, extra, hint) from err


class CommandParser(argparse.ArgumentParser):
    """argparse for a subcommand: a mistake (unknown or missing argument, bad choice) is one
    :class:`UserError` line naming the command and its ``--help``, never argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise UserError(
            f"{self.prog.removeprefix('itwinai-lightning ')}: {message}; see '{self.prog} --help'"
        )


def parse_command_args(
    parser: argparse.ArgumentParser, argv: Sequence[str], command: str
) -> argparse.Namespace:
    """Parse a subcommand's flags; an unknown one is a :class:`UserError` (one line, exit 2), not
    argparse's usage block."""
    known, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise UserError(
            f"{command}: unknown argument(s) {' '.join(unknown)}; see 'itwinai-lightning {command} --help'"
        )
    return known
