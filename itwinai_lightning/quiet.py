"""Known noise that this package's commands cause or cannot avoid, filtered once per process.

Only messages that say nothing to a user of these commands are filtered; every other warning still
shows. Each entry names where it comes from and why it is noise here:

* Lightning's "The `srun` command is available on your system but is not used": printed on any machine
  with SLURM installed, also on a login node or inside our own launchers, which already chose.
* Lightning's "💡 Tip: ... litlogger" and "... litmodels" advertisements (after a fit, on predict).
* Lightning's "dirpath has changed" when validate/test/predict load a checkpoint written elsewhere: the
  checkpoint is read, never written, outside ``fit``.
* torch's "`isinstance(treespec, LeafSpec)` is deprecated", triggered inside Lightning, not user code.
* LightningCLI's "args parameter is intended to run from within Python": the CLI is given ``args`` on
  purpose (tune trials, benchmark points) while ``sys.argv`` holds the launcher's command line.
* torch's (>= 2.14) "`torch.jit.script` is deprecated": fvcore, which yProv4ML imports, scripts a loss
  function when it is imported; nothing the user wrote or can change.
* torch's "torch.distributed.nn.functional.all_gather is deprecated", raised inside Lightning's
  ``all_gather`` on every rank.
* Kineto's ``USDT: ... profiler_start`` / ``profiler_stop`` lines on every torch-profiler window (once
  Lightning is imported, Kineto logs at its USDT level): ``KINETO_LOG_LEVEL`` defaults to 6 (above USDT)
  unless the user set it.
"""

from __future__ import annotations

import logging
import os
import warnings

#: (regular expression of the warning's message, the module that warns)
WARNINGS = (
    r"The `srun` command is available on your system but is not used",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"LightningCLI's args parameter is intended to run from within Python",
    r"`torch.jit.script` is deprecated",
    r"torch.distributed.nn.functional.all_gather is deprecated",
)
#: warnings that are noise outside ``fit`` only (the callbacks that wrote a checkpoint matter for resuming)
NOT_FITTING = (
    r"callbacks used to create the checkpoint need to be provided",
    r"dirpath has changed",
)
#: substrings of log records dropped from Lightning's rank-zero logger
LOG_LINES = ("litlogger", "litmodels")
#: Kineto's log level above its USDT level (5): its per-window start/stop lines are not shown
KINETO_QUIET_LEVEL = "6"
_INSTALLED = False


#: Lightning's "`weights_only` was not set, defaulting to `False`" on every checkpoint load (a trial's
#: resume, predict): the checkpoint is the user's own, nothing to decide
CHECKPOINT_LOG_LINES = ("`weights_only` was not set",)
CHECKPOINT_LOGGER = "lightning.pytorch.trainer.connectors.checkpoint_connector"


class _DropLines(logging.Filter):
    def __init__(self, lines: tuple[str, ...] = LOG_LINES) -> None:
        super().__init__()
        self.lines = lines

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.lines)


def install() -> None:
    """Filter the known noise in this process (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET_LEVEL)
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLines())
    logging.getLogger(CHECKPOINT_LOGGER).addFilter(_DropLines(CHECKPOINT_LOG_LINES))


#: noise when a fit continues in its run directory, which the CLI has already said in one line
CONTINUING = (r"Checkpoint directory .* exists and is not empty",)


def continuing() -> None:
    """A resumed fit writes into its own, non-empty ``checkpoints/``: that is the point, not a warning."""
    for pattern in CONTINUING:
        warnings.filterwarnings("ignore", message=f".*{pattern}")


def not_fitting() -> None:
    """``validate``/``test``/``predict`` from a checkpoint: also filter what only concerns resuming a fit."""
    for pattern in NOT_FITTING:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
