"""One warning line for the user, on global rank 0, through Lightning's logger (shown even when Python
warnings are filtered, e.g. ``PYTHONWARNINGS=ignore``)."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities.rank_zero import rank_zero_only


@rank_zero_only
def notice(message: str) -> None:
    logging.getLogger("lightning.pytorch").warning(message)
