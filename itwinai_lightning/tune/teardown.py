"""Tune must not end a trial's process while the trial is still finishing.

A function trainable runs in a thread of the trial's process; ``tune.report`` blocks it until Tune
has read the result. When a scheduler stops the trial (ASHA, PBT, the end of the sweep), Tune's
``cleanup`` releases that thread (``tune.report`` raises ``SystemExit`` there) but does not wait for it
(``timeout=0``), and then ends the process. Reusing the process for the next trial waits only
``TUNE_FUNCTION_THREAD_TIMEOUT_S`` (2 s by default). Our trial is still finishing at that point: the
rest of its epoch, the logger's final flush (the trial's MLflow child run, its last metrics), the other
DDP ranks' ends. Killing it there loses that trial's tracking data.

:func:`waits_for_teardown` wraps the trainable class so that ``cleanup``, after Tune's own, waits (up to
:data:`TEARDOWN_TIMEOUT_S`) until the trial function has returned; the trial functions mark their whole
run with :func:`trial_running` and raise the reuse timeout to the same value
(:func:`allow_reuse_after_teardown`, unless the user set it). Functions are turned into their trainable
class with Tune's own ``wrap_function``. At the very end of a sweep Ray gives stopping trials 5 s
before it kills them; a trial's finish takes about 1-2 s here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

#: seconds ``cleanup`` (and actor reuse) wait for a trial to finish before letting Tune go on
TEARDOWN_TIMEOUT_S = 120.0

_IDLE = threading.Event()
_IDLE.set()


@contextlib.contextmanager
def trial_running() -> Iterator[None]:
    """Mark this process's trial as running until the block is left (however it is left)."""
    _IDLE.clear()
    try:
        yield
    finally:
        _IDLE.set()


def wait_for_trial(timeout_s: float = TEARDOWN_TIMEOUT_S) -> bool:
    """Block until no trial runs in this process; ``False`` if it still runs after ``timeout_s``."""
    return _IDLE.wait(timeout_s)


def allow_reuse_after_teardown() -> None:
    """Let Tune's ``reset_config`` (actor reuse) wait for the trial's finish too, not just 2 s."""
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(int(TEARDOWN_TIMEOUT_S)))


def waits_for_teardown(trainable: Any) -> type:
    """A subclass of the Tune trainable class whose ``cleanup`` waits for the trial to finish.

    A function (what ``tune.with_parameters`` returns for one) is first made the class Tune itself would
    make of it (``wrap_function``, as ``tune.register_trainable`` does)."""
    if not isinstance(trainable, type):
        from ray.tune.trainable.function_trainable import wrap_function

        trainable = wrap_function(trainable)

    class _Trainable(trainable):  # type: ignore[valid-type,misc]
        def cleanup(self) -> None:
            super().cleanup()  # releases the trial thread blocked in tune.report
            wait_for_trial()

    _Trainable.__name__ = trainable.__name__
    _Trainable.__qualname__ = trainable.__qualname__
    return _Trainable
