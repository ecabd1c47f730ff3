"""Peak dense FLOP/s per device and precision, for model FLOPs utilisation (MFU).

For a CUDA device Lightning's public ``get_available_flops`` answers first (the NVIDIA GPUs it knows, TF32
decided by the matmul precision); :data:`PEAKS` holds this package's additions (GH200, AMD MI250X and
MI300X under ROCm, H100/H200 names Lightning does not parse) and answers the rest. Our figures are vendor
datasheet figures, dense (no structured sparsity), tensor/matrix cores where the precision uses
them. ``32`` means FP32 without TF32; with ``torch.set_float32_matmul_precision("high")`` the TF32 peak
applies. Override with ``TimingMonitor(peak_flops_per_s=...)`` for any other device or clock.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TERA = 1e12

#: (substring of the device name, lower case) -> precision family -> peak FLOP/s of one device.
#: Checked in order: more specific names first.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("a100", {"bf16": 312 * TERA, "16": 312 * TERA, "tf32": 156 * TERA, "32": 19.5 * TERA}),
    ("h100 pcie", {"bf16": 756 * TERA, "16": 756 * TERA, "tf32": 378 * TERA, "32": 51 * TERA}),
    ("h100 nvl", {"bf16": 835 * TERA, "16": 835 * TERA, "tf32": 417.5 * TERA, "32": 60 * TERA}),
    ("h100", {"bf16": 989 * TERA, "16": 989 * TERA, "tf32": 494.7 * TERA, "32": 67 * TERA}),
    ("gh200", {"bf16": 989 * TERA, "16": 989 * TERA, "tf32": 494.7 * TERA, "32": 67 * TERA}),
    ("h200", {"bf16": 989 * TERA, "16": 989 * TERA, "tf32": 494.7 * TERA, "32": 67 * TERA}),
    ("mi250x", {"bf16": 383 * TERA, "16": 383 * TERA, "tf32": 95.7 * TERA, "32": 95.7 * TERA}),
    ("mi300x", {"bf16": 1307.4 * TERA, "16": 1307.4 * TERA, "tf32": 653.7 * TERA, "32": 163.4 * TERA}),
)


def precision_family(precision: str, tf32: bool = False) -> str:
    """Lightning precision (``bf16-mixed``, ``16-mixed``, ``32-true``, ...) -> bf16 | 16 | tf32 | 32."""
    text = str(precision).lower()
    if text.startswith("bf16"):
        return "bf16"
    if text.startswith("16"):
        return "16"
    return "tf32" if tf32 else "32"


def peak_flops_per_s(device_name: str, precision: str, tf32: bool = False) -> float | None:
    """One device's peak FLOP/s for ``precision``; None for a device not in :data:`PEAKS` (e.g. a CPU)."""
    name = device_name.lower()
    for pattern, peaks in PEAKS:
        if pattern in name:
            return peaks.get(precision_family(precision, tf32))
    return None


def device_peak_flops_per_s(device: torch.device, precision: str) -> float | None:
    """The peak FLOP/s of one CUDA (or ROCm) ``device`` at ``precision``: Lightning's figure where it knows
    the GPU, else :func:`peak_flops_per_s` by the device's name; None where neither knows it."""
    import torch
    from lightning.fabric.utilities.throughput import get_available_flops

    family = precision_family(precision)
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(family, torch.float32)
    with warnings.catch_warnings():  # "FLOPs not found for ...": our table answers next
        warnings.simplefilter("ignore")
        known = get_available_flops(device, dtype)
    if known:
        return float(known)
    tf32 = torch.get_float32_matmul_precision() != "highest"
    return peak_flops_per_s(torch.cuda.get_device_name(device), precision, tf32)
