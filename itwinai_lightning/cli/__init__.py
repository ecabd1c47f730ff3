"""The command line: the command table and dispatch (:mod:`.main`), the LightningCLI behind
``fit|validate|test|predict`` (:mod:`.lightning`), one-line error shaping (:mod:`.messages`, a leaf),
and did-you-mean hints (:mod:`.suggest`).

Every other subcommand's entry point is ``itwinai_lightning/<package>/cli.py``.
"""

from itwinai_lightning.cli.main import main

__all__ = ["main"]
