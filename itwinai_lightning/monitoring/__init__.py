"""Device sampling and energy math behind :class:`~itwinai_lightning.callbacks.GPUMonitor`.

``backends`` (the small device interface: NVML, psutil, room for amdsmi), ``sampler`` (the background
thread and its windows), ``energy`` (counter / trapezoid energy), ``aggregate`` (cross-rank figures).
Nothing here initialises NVML at import time.
"""
