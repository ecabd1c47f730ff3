"""PNG plots of the benchmark table (matplotlib, Agg backend, no pyplot global state).

A figure the runs hold no data for (no energy counter, profiling off, too few worker counts to fit) is
left out: :func:`render_all` returns the reason instead, and the page says it in one line. A two-panel
figure with data for one panel only is drawn with that panel alone.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from itwinai_lightning.benchmark.report import scaling
from itwinai_lightning.benchmark.report.table import FRACTIONS, Row, Run, accuracy_target, series_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Series = tuple[str, str, str]
PLOTS: dict[str, str] = {
    "epoch_time": "Epoch time",
    "speedup": "Speedup",
    "efficiency": "Parallel efficiency",
    "throughput": "Throughput",
    "utilisation": "Device utilisation",
    "mfu": "Model FLOPs utilisation",
    "energy": "Energy",
    "breakdown": "Computation vs communication",
    "accuracy": "Time and energy to accuracy",
    "scaling_model": "Fitted scaling model",
}
MARKERS = "osD^vP*X"
#: why the energy figures can be empty
NO_ENERGY = (
    "no energy recorded in these runs (GPUMonitor records a GPU's power or energy counter and the CPUs' "
    "RAPL counters where they are readable)"
)


class NoData(Exception):
    """The runs hold nothing for this figure; the message says what would provide it."""


def _figure(ncols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    # fixed margins: constrained/tight layout would cost more than drawing the plot itself
    fig = Figure(figsize=(7.0 * ncols if ncols > 1 else 7.5, 4.6), dpi=100)
    fig.subplots_adjust(left=0.1 if ncols == 1 else 0.06, right=0.97, bottom=0.12, top=0.92, wspace=0.2)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _workers_axis(ax: Axes, workers: Sequence[int]) -> None:
    ticks = sorted(set(workers))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("workers (processes)")
    ax.grid(True, alpha=0.3)


def _alone(fig: Figure, keep: Axes, drop: Axes) -> None:
    """A two-panel figure as one panel: ``drop`` removed, ``keep`` across the width."""
    fig.delaxes(drop)
    fig.set_size_inches(7.5, fig.get_figheight())
    fig.subplots_adjust(left=0.1, right=0.97)
    keep.set_subplotspec(fig.add_gridspec(1, 1)[0])


def _series(rows: Sequence[Row]) -> list[Series]:
    return sorted({r.series for r in rows})


def _lines(
    ax: Axes, rows: Sequence[Row], value: Callable[[Row], float | None], scale: float = 1.0
) -> list[int]:
    """One line per series; returns the worker counts drawn."""
    all_series = _series(rows)
    drawn: list[int] = []
    for i, series in enumerate(all_series):
        pts = [(r.workers, v * scale) for r in rows if r.series == series and (v := value(r)) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], label=series_label(series, all_series))
        drawn += list(xs)
    return drawn


def _line_plot(
    rows: Sequence[Row], value: Callable[[Row], float | None], title: str, ylabel: str, empty: str
) -> tuple[Figure, Axes, list[int]]:
    fig, (ax,) = _figure()
    drawn = _lines(ax, rows, value)
    ax.set_title(title)
    if not drawn:
        raise NoData(empty)
    _workers_axis(ax, drawn)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=9)
    return fig, ax, drawn


def plot_epoch_time(rows: Sequence[Row], **_: Any) -> Figure:
    fig, ax, drawn = _line_plot(
        rows,
        lambda r: r.epoch_time_s,
        "Epoch time (median over repetitions)",
        "epoch time [s]",
        "no run completed",
    )
    for r in rows:  # min-max over repetitions
        if r.epoch_time_min_s is not None and r.epoch_time_max_s is not None and r.repetitions > 1:
            ax.vlines(r.workers, r.epoch_time_min_s, r.epoch_time_max_s, colors="grey", alpha=0.6)
    if drawn:
        ax.set_ylim(bottom=0)
    return fig


def _spread(ax: Axes, rows: Sequence[Row], scale: Callable[[Row], float] = lambda r: 1.0) -> None:
    """Error bars: the speedup's min-max over the repetitions (times ``scale``), where there are several."""
    for r in rows:
        if r.repetitions > 1 and r.speedup_min is not None and r.speedup_max is not None:
            k = scale(r)
            ax.vlines(r.workers, r.speedup_min * k, r.speedup_max * k, colors="grey", alpha=0.7, linewidth=2)


def plot_speedup(rows: Sequence[Row], **_: Any) -> Figure:
    fig, ax, drawn = _line_plot(
        rows,
        lambda r: r.speedup,
        "Speedup relative to the smallest run (bars: min-max over repetitions)",
        "speedup [x]",
        "no run completed",
    )
    _spread(ax, rows)
    if drawn:
        lo, hi = min(drawn), max(drawn)
        ax.plot([lo, hi], [1.0, hi / lo], "k--", linewidth=1, label="ideal (linear)")
        ax.set_yscale("log", base=2)  # log-log: the ideal line is straight
        ticks = [t / lo for t in sorted(set(drawn))]
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.legend(loc="best", fontsize=9)
    return fig


def plot_efficiency(rows: Sequence[Row], threshold_pct: float = 70.0, **_: Any) -> Figure:
    fig, ax, drawn = _line_plot(
        rows,
        lambda r: r.efficiency_pct,
        "Parallel efficiency = speedup / (N / N0)",
        "efficiency [%]",
        "no run completed",
    )
    _spread(ax, rows, lambda r: (r.efficiency_pct or 0.0) / r.speedup if r.speedup else 0.0)
    if drawn:
        ax.axhline(100.0, color="k", linestyle="--", linewidth=1, label="ideal (100 %)")
        ax.axhline(threshold_pct, color="tab:red", linestyle=":", label=f"threshold ({threshold_pct:g} %)")
        ax.set_ylim(0, max(110.0, *(r.efficiency_pct or 0 for r in rows)) * 1.05)
        ax.legend(loc="best", fontsize=9)
    return fig


def plot_throughput(rows: Sequence[Row], **_: Any) -> Figure:
    fig, ax, drawn = _line_plot(
        rows,
        lambda r: r.samples_per_s,
        "Training throughput (all workers)",
        "throughput [samples/s]",
        "no throughput recorded (TimingMonitor not in these runs)",
    )
    if drawn:
        ax.set_ylim(bottom=0)
    return fig


def plot_utilisation(rows: Sequence[Row], **_: Any) -> Figure:
    if any(r.gpu_util_pct is not None for r in rows):
        fig, ax, _d = _line_plot(
            rows, lambda r: r.gpu_util_pct, "GPU utilisation (mean over ranks)", "GPU utilisation [%]", ""
        )
    else:
        fig, ax, _d = _line_plot(
            rows,
            lambda r: r.cpu_util_pct,
            "CPU utilisation (no GPU utilisation recorded: CPU-only runs)",
            "CPU utilisation [%]",
            "no GPU or CPU utilisation recorded (GPUMonitor not in these runs)",
        )
    if _d:
        ax.set_ylim(bottom=0)
    return fig


def plot_energy(rows: Sequence[Row], **_: Any) -> Figure:
    fig, (left, right) = _figure(2)
    drawn = _lines(left, rows, lambda r: r.energy_per_epoch_wh)
    drawn_s = _lines(right, rows, lambda r: r.energy_per_sample_wh, scale=1000.0)
    if not drawn and not drawn_s:
        raise NoData(NO_ENERGY)
    left.set_title("Energy per epoch (GPUs + CPUs measured)")
    right.set_title("Energy per training sample")
    for ax, pts, label in ((left, drawn, "energy [Wh / epoch]"), (right, drawn_s, "energy [mWh / sample]")):
        if pts:
            _workers_axis(ax, pts)
            ax.set_ylabel(label)
            ax.set_ylim(bottom=0)
            ax.legend(loc="best", fontsize=9)
    if not drawn or not drawn_s:
        _alone(fig, left if drawn else right, right if drawn else left)
    return fig


def plot_breakdown(rows: Sequence[Row], **_: Any) -> Figure:
    fig, (ax,) = _figure()
    prof = [r for r in rows if r.compute_s is not None or r.communication_s is not None]
    ax.set_title("Where an epoch goes (torch profiler)")
    if not prof:
        raise NoData("no profiling data (run the benchmark with --benchmark.profile true)")
    all_series = _series(rows)
    labels = [f"{series_label(r.series, all_series)}, N={r.workers}" for r in prof]
    bottom = [0.0] * len(prof)
    colours = {"compute": "tab:blue", "communication": "tab:red", "memcpy": "tab:olive", "other": "tab:gray"}
    names = {
        "compute": "computation",
        "communication": "communication",
        "memcpy": "memory copy",
        "other": "other",
    }
    for name in FRACTIONS:
        vals = [getattr(r, f"{name}_s") or 0.0 for r in prof]
        ax.bar(range(len(prof)), vals, bottom=bottom, label=names[name], color=colours[name])
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(range(len(prof)))
    many = len(prof) > 12
    ax.set_xticklabels(labels, fontsize=8, rotation=90 if many else 35, ha="center" if many else "right")
    label_in = 0.075 * max(len(lb) for lb in labels) * (1.0 if many else 0.6) + 0.3  # room for the labels
    fig.set_size_inches(max(7.5, 0.22 * len(prof) + 1.5), 4.2 + label_in)
    fig.subplots_adjust(bottom=label_in / (4.2 + label_in), left=0.8 / fig.get_figwidth(), right=0.98)
    ax.set_xlim(-0.6, len(prof) - 0.4)
    ax.set_ylabel("time per epoch [s]")
    ax.legend(loc="best", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_scaling_model(
    rows: Sequence[Row], models: dict[Series, scaling.ScalingModel] | None = None, **_: Any
) -> Figure:
    import numpy as np

    fig, (ax,) = _figure()
    ax.set_title("Fitted scaling model  T(N) = a/N + b·log2(N) + c")
    models = models or {}
    if not models:
        raise NoData(f"no series with {scaling.MIN_SIZES} or more worker counts to fit")
    all_series = _series(rows)
    top_measured = max(m.max_measured for m in models.values())
    sizes = scaling.extrapolation_sizes(top_measured)
    for i, (series, model) in enumerate(sorted(models.items())):
        colour = f"C{i % 10}"
        label = series_label(series, all_series)
        pts = [(r.workers, r.epoch_time_s) for r in rows if r.series == series and r.epoch_time_s is not None]
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, MARKERS[i % len(MARKERS)], color=colour, label=f"{label}: measured")
        fine_in = np.geomspace(1, model.max_measured, 50)
        fine_out = np.geomspace(model.max_measured, sizes[-1], 50)
        ax.plot(fine_in, model.predict(fine_in), "-", color=colour, label=f"{label}: fit (R²={model.r2:.3f})")
        ax.plot(fine_out, model.predict(fine_out), "--", color=colour)
        if model.samples:  # the bootstrap band, widening where nothing was measured
            fine = np.geomspace(1, sizes[-1], 100)
            lo, hi = model.band(fine)
            band = f"{label}: {100 * scaling.BAND_LEVEL:.0f} % band"
            ax.fill_between(fine, lo, hi, color=colour, alpha=0.15, linewidth=0, label=band)
    ax.axvspan(top_measured, sizes[-1], color="orange", alpha=0.12, label="extrapolation (not measured)")
    ax.text(
        (top_measured * sizes[-1]) ** 0.5, 0.95, "EXTRAPOLATION", transform=ax.get_xaxis_transform(),
        ha="center", va="top", color="darkorange", fontweight="bold",
    )  # fmt: skip
    _workers_axis(ax, sizes)
    ax.set_ylabel("epoch time [s]")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_mfu(rows: Sequence[Row], **_: Any) -> Figure:
    if any(r.mfu_pct is not None for r in rows):
        fig, ax, drawn = _line_plot(
            rows, lambda r: r.mfu_pct, "Model FLOPs utilisation (of the devices' peak)", "MFU [%]", ""
        )
    else:  # no known peak (CPU, or a device missing from the table): the achieved rate still says a lot
        fig, ax, drawn = _line_plot(
            rows,
            lambda r: r.flops_per_s / 1e12 if r.flops_per_s is not None else None,
            "Achieved model FLOP/s (no MFU: the devices' peak is unknown)",
            "model TFLOP/s (all workers)",
            "no FLOPs counted (TimingMonitor(count_flops=True) not in these runs)",
        )
    if drawn:
        ax.set_ylim(bottom=0)
    return fig


def plot_accuracy(rows: Sequence[Row], runs: Sequence[Run] = (), **_: Any) -> Figure:
    """The monitored metric against fit time (left) and energy (right): one line per configuration (its
    first completed repetition), the target every configuration reached as a dotted line."""
    done = [r for r in runs if r.ok and r.accuracy]
    if not done:
        raise NoData("no monitored metric recorded (TimingMonitor and a logged val_loss, or monitor=)")
    fig, (left, right) = _figure(2)
    left.set_title("Metric vs fit time")
    right.set_title("Metric vs energy")
    all_series = _series(rows)
    seen: set[tuple[Series, int]] = set()
    energy = False
    for run in sorted(done, key=lambda r: (r.strategy, r.launcher, r.scaling, r.workers, r.repetition)):
        key = ((run.strategy, run.launcher, run.scaling), run.workers)
        if key in seen:
            continue
        seen.add(key)
        label = f"{series_label(key[0], all_series)}, N={run.workers}"
        left.plot([p.elapsed_s for p in run.accuracy], [p.metric for p in run.accuracy], ".-", label=label)
        joules = [(p.energy_wh, p.metric) for p in run.accuracy if p.energy_wh is not None]
        if joules:
            energy = True
            xs, ys = zip(*joules, strict=True)
            right.plot(xs, ys, ".-", label=label)
    name = done[0].monitor or "metric"
    target = accuracy_target(done)
    for ax in (left, right):
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        if target is not None:
            ax.axhline(target[0], color="k", linestyle=":", linewidth=1, label=f"target {target[0]:.4g}")
    left.set_xlabel("fit time [s]")
    left.legend(loc="best", fontsize=8)
    if energy:
        right.set_xlabel("energy [Wh]")
        right.legend(loc="best", fontsize=8)
    else:
        left.set_title("Metric vs fit time (no energy recorded in these runs)")
        _alone(fig, left, right)
    return fig


RENDERERS: dict[str, Callable[..., Figure]] = {
    "epoch_time": plot_epoch_time,
    "speedup": plot_speedup,
    "efficiency": plot_efficiency,
    "throughput": plot_throughput,
    "utilisation": plot_utilisation,
    "energy": plot_energy,
    "breakdown": plot_breakdown,
    "mfu": plot_mfu,
    "accuracy": plot_accuracy,
    "scaling_model": plot_scaling_model,
}


def render_all(rows: Sequence[Row], **kwargs: Any) -> tuple[dict[str, bytes], dict[str, str]]:
    """name -> PNG bytes for every plot in :data:`PLOTS` the runs hold data for, and name -> why for the
    ones left out."""
    images: dict[str, bytes] = {}
    left_out: dict[str, str] = {}
    for name in PLOTS:
        try:
            images[name] = _png(RENDERERS[name](rows, **kwargs))
        except NoData as why:
            left_out[name] = str(why)
    return images, left_out
