"""One-line user messages made from library errors: jsonargparse's nested validation errors and the
Trainer arguments Lightning rejects. A leaf: nothing of this package is imported here at module level,
so the CLI and ItwinaiCLI both use it without importing each other."""

from __future__ import annotations

_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")


def condense(message: str) -> str:
    """jsonargparse nests errors over many lines; keep the ones that name the key and the problem."""
    lines = [ln.strip().lstrip("- ").strip() for ln in message.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) <= 1:
        return lines[0] if lines else message
    head = lines[0].rstrip(":")
    useful = [ln for ln in lines[1:] if not ln.startswith(_NOISE)]
    if not useful:
        return head
    detail = useful[0]
    if detail.endswith(":") and len(useful) > 1:
        detail = f"{detail} {useful[1]}"
    return f"{head}: {detail}"


def trainer_error(err: Exception) -> str:
    """One line for a Trainer argument Lightning rejected (+ this package's strategy names if relevant)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "invalid strategy name" in text:
        from itwinai_lightning.strategies import SHORT_NAMES

        text = text.split(" Find a complete list")[0]
        text += f" This package adds: {', '.join(SHORT_NAMES)}."
    return f"trainer: {text}"
