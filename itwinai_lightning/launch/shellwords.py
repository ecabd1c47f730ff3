"""A user's value for the job script's shell on the compute node: ``~`` is that node's ``$HOME`` and
``$VAR``/``${VAR}`` expand there; everything else is taken literally."""

from __future__ import annotations

import shlex


def node_text(value: object) -> str:
    """``value`` for the inside of double quotes: ``~`` as ``$HOME``; ``\\``, ``"`` and backticks escaped."""
    text = str(value)
    if text == "~" or text.startswith("~/"):
        text = "$HOME" + text[1:]
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")


def node_word(value: object) -> str:
    """``value`` as one shell word: double-quoted where it uses a variable (or ``~``), else single-quoted."""
    text = node_text(value)
    return f'"{text}"' if "$" in text else shlex.quote(str(value))


__all__ = ["node_text", "node_word"]
