"""Callbacks that drop into any Trainer. Imported by the CLI so short class names resolve in YAML.

Only light imports here (no NVML init, no py-spy process, no torch.profiler start at import time).
"""

from itwinai_lightning.callbacks.device_monitor import GPUMonitor
from itwinai_lightning.callbacks.pyspy import PySpyProfiler
from itwinai_lightning.callbacks.redact import RedactCheckpointSecrets
from itwinai_lightning.callbacks.timed_checkpoint import TimedCheckpoint
from itwinai_lightning.callbacks.timing import TimingMonitor
from itwinai_lightning.callbacks.torch_profiler import TorchProfilerBreakdown
from itwinai_lightning.callbacks.watchdog import HangWatchdog

__all__ = [
    "GPUMonitor",
    "HangWatchdog",
    "PySpyProfiler",
    "RedactCheckpointSecrets",
    "TimedCheckpoint",
    "TimingMonitor",
    "TorchProfilerBreakdown",
]
