"""Stacks -> categories -> a hotspot summary with concrete remedies.

Every sample is classified by its *innermost* recognised frame (the one nearest the leaf): a sample in
``all_reduce`` called from ``backward`` is communication, a ``self.log`` inside ``training_step`` is
logging. A sample whose leaf is a wait (``threading.wait``, ``queue.get``, ``select``...) is idle/wait,
unless it waits on communication or, in the main process, on DataLoader workers (then it is those).
Samples in imports (start-up) are excluded, as are samples without Python frames.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from itwinai_lightning.profiling.stacks import Stack, code_frames, process_chain, short_name, split_frame

CATEGORIES: tuple[str, ...] = (
    "data_loading",
    "host_to_device",
    "forward",
    "backward",
    "optimizer",
    "communication",
    "logging_checkpointing",
    "framework",
    "idle",
    "other",
)
LABELS = {
    "data_loading": "data loading",
    "host_to_device": "host->device transfer",
    "forward": "forward",
    "backward": "backward",
    "optimizer": "optimizer step",
    "communication": "communication",
    "logging_checkpointing": "logging / checkpointing",
    "framework": "framework overhead",
    "idle": "idle / wait",
    "other": "other",
}
#: Bottleneck groups: compute is forward + backward + optimizer.
GROUPS = {
    "compute": ("forward", "backward", "optimizer"),
    "data_loading": ("data_loading",),
    "host_to_device": ("host_to_device",),
    "communication": ("communication",),
    "logging_checkpointing": ("logging_checkpointing",),
    "framework": ("framework",),
    "idle": ("idle",),
}

_COLLECTIVE = r"(all_?reduce|all_?gather|allgather|reduce_scatter|broadcast|barrier|all_?to_?all|alltoall)"
# (category, regex on function name or None, regex on file path or None): all given parts must match.
_RULES: list[tuple[str, str | None, str | None]] = [
    # communication: torch.distributed, DDP reducer, Lightning's sync, DeepSpeed, Horovod, native c10d
    ("communication", None, r"torch/distributed/(distributed_c10d|_functional_collectives|c10d)"),
    ("communication", None, r"deepspeed/comm/|deepspeed/runtime/comm/|horovod/torch/mpi_ops|horovod/common/"),
    (
        "communication",
        r"_?(sync_buffers|sync_module_buffers|distributed_broadcast_coalesced|"
        r"delay_all_reduce|match_all_reduce|_DDPSink|sync_params_and_buffers)",
        r"torch/nn/parallel/",
    ),
    (
        "communication",
        r"_?(sync_ddp|sync_ddp_if_available|all_gather_ddp_if_available|gather_all_tensors)",
        r"lightning/",
    ),
    ("communication", r"^_?" + _COLLECTIVE, r"lightning/|deepspeed/|horovod/|torch/distributed/"),
    ("communication", r"synchronize|_allreduce_grad_async|allreduce_async", r"horovod/"),
    ("communication", r"^_?" + _COLLECTIVE, r"\.so"),
    ("communication", r"c10d::|gloo::|nccl|Reducer::|ProcessGroup|horovod::|ccl::", None),
    # host -> device copies
    (
        "host_to_device",
        r"transfer_batch_to_device|batch_to_device|move_data_to_device|"
        r"_apply_batch_transfer_handler|pin_memory|_copy_to_device",
        None,
    ),
    ("host_to_device", r"cudaMemcpy|copy_kernel_cuda|Memcpy", None),
    # data loading
    (
        "data_loading",
        None,
        r"torch/utils/data/|lightning/pytorch/loops/fetchers|combined_loader|"
        r"datasets/|torchvision/|PIL/|webdataset/|h5py/",
    ),
    ("data_loading", r"^(__getitem__|__getitems__|__iter__|__next__|collate\w*|_worker_loop)$", None),
    # logging and checkpointing
    (
        "logging_checkpointing",
        None,
        r"lightning/(pytorch|fabric)/loggers/|logger_connector|model_checkpoint|"
        r"callbacks/progress/|torch/serialization|tensorboard/|tensorboardX/|mlflow/|wandb/|yprov4ml/|"
        r"itwinai_lightning/loggers/|itwinai_lightning/records|tqdm/|^logging/",
    ),
    (
        "logging_checkpointing",
        r"^(log|log_dict|log_metrics|log_hyperparams|save_checkpoint|_save_checkpoint|"
        r"dump_checkpoint)$",
        None,
    ),
    # optimizer step (DeepSpeed ZeRO and Horovod wrappers are optimizer unless communicating)
    (
        "optimizer",
        None,
        r"torch/optim/|lightning/pytorch/core/optimizer|deepspeed/runtime/zero/|"
        r"deepspeed/ops/adam|deepspeed/runtime/fp16/|horovod/torch/optimizer|apex/optimizers",
    ),
    ("optimizer", r"^(optimizer_step|zero_grad|_optimizer_step|step)$", r"lightning/|deepspeed/"),
    # backward
    ("backward", None, r"torch/autograd/|torch/_tensor\.py"),
    ("backward", r"^(backward|manual_backward|_engine_run_backward|run_backward)$", None),
    ("backward", r"torch::autograd::Engine|autograd::engine", None),
    # forward
    (
        "forward",
        r"^(training_step|validation_step|test_step|predict_step|forward|_call_impl|"
        r"_wrapped_call_impl)$",
        None,
    ),
    ("forward", None, r"torch/nn/modules/|torch/nn/functional|torch/functional"),
    # everything else from the frameworks
    (
        "framework",
        None,
        r"lightning/|lightning_utilities/|torch/|itwinai_lightning/|deepspeed/|horovod/|"
        r"jsonargparse/|typing_extensions",
    ),
]
_COMPILED = [
    (cat, re.compile(fn) if fn else None, re.compile(path) if path else None) for cat, fn, path in _RULES
]
_WAIT = re.compile(
    r"^(wait|_wait|wait_for|select|poll|_poll|epoll|sleep|acquire|join|_wait_for_tstate_lock|recv|"
    r"recv_bytes|_recv|_recv_bytes|accept|get|readinto|read)$"
)
_WAIT_FILE = re.compile(r"threading|queue|selectors|multiprocessing/|subprocess|socket|connection|^time")
_STARTUP = re.compile(
    r"<frozen importlib\._bootstrap|^_find_and_load|^_call_with_frames_removed|^exec_module"
)
# the profilers' own work (py-spy output reader, trace export and analysis) is not the run's time
_OWN = re.compile(
    r"itwinai_lightning/profiling/|itwinai_lightning/callbacks/(pyspy|torch_profiler)|torch/profiler/|"
    r"torch/autograd/profiler"
)
_THREAD_ROOT = re.compile(r"^(Thread\.)?_bootstrap \(threading\.py")


def _frame_category(frame: str) -> str | None:
    func, file, _ = split_frame(frame)
    base = func.rsplit(".", 1)[-1]  # py-spy >= 0.4 writes "Class.method"
    for cat, fn_re, path_re in _COMPILED:
        if fn_re is not None and not (fn_re.search(func) or fn_re.search(base)):
            continue
        if path_re is not None and not path_re.search(file):
            continue
        return cat
    return None


def classify(stack: Stack) -> str | None:
    """The category of one sample, or ``None`` when it is excluded (start-up, imports, no Python frame)."""
    frames = code_frames(stack)
    if not frames:
        return None
    files = [split_frame(f)[1] for f in frames]
    if any(_STARTUP.search(f) for f in frames) or any(_OWN.search(p) or "importlib" in p for p in files):
        return None
    cats = [_frame_category(f) for f in frames]
    leaf_func, leaf_file, _ = split_frame(frames[-1])
    if _WAIT.match(leaf_func.rsplit(".", 1)[-1]) and (_WAIT_FILE.search(leaf_file) or not leaf_file):
        if "communication" in cats:
            return "communication"
        if "data_loading" in cats and is_main_thread(stack):
            return "data_loading"  # the training loop waits for a batch (workers, fd passing)
        return "idle"
    for cat in reversed(cats):
        if cat is not None:
            return cat
    return "other"


def is_main_thread(stack: Stack) -> bool:
    """True for the profiled process's main thread; False for its threads and child processes."""
    if len(process_chain(stack)) > 1:
        return False
    frames = code_frames(stack)
    return not (frames and _THREAD_ROOT.match(frames[0]))


def summarize_rank(samples: Mapping[Stack, int], top: int = 5) -> dict[str, Any]:
    """Counts, fractions and top leaf functions per category for one rank's samples.

    Fractions are of the main thread's samples (the rank's wall time). Busy samples of its other
    threads and DataLoader worker processes run in parallel; they are reported under ``background``.
    """
    counts: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES}
    bg_counts: Counter[str] = Counter()
    bg_leaves: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES}
    excluded = 0
    for stack, count in samples.items():
        cat = classify(stack)
        if cat is None:
            excluded += count
            continue
        main = is_main_thread(stack)
        if not main and cat == "idle":
            continue  # a worker or helper thread waiting for work costs the rank nothing
        (counts if main else bg_counts)[cat] += count
        (leaves if main else bg_leaves)[cat][short_name(code_frames(stack)[-1])] += count
    out = _finish(counts, leaves, excluded, top)
    out["background"] = _finish(bg_counts, bg_leaves, 0, top)
    return out


def _finish(counts: Mapping[str, int], leaves: Mapping[str, Counter[str]], excluded: int, top: int) -> dict:
    total = sum(counts.values())
    return {
        "samples": total,
        "excluded_samples": excluded,
        "counts": {c: int(counts.get(c, 0)) for c in CATEGORIES},
        "categories": {c: (counts.get(c, 0) / total if total else 0.0) for c in CATEGORIES},
        "top_functions": {
            c: [
                {"function": fn, "samples": n, "fraction_of_category": n / counts[c]}
                for fn, n in leaves[c].most_common(top)
            ]
            for c in CATEGORIES
            if counts.get(c, 0)
        },
    }


def _sum(summaries: Iterable[Mapping[str, Any]], top: int) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES}
    excluded = 0
    for summary in summaries:
        counts.update({k: int(v) for k, v in summary["counts"].items()})
        excluded += int(summary.get("excluded_samples", 0))
        for cat, entries in summary.get("top_functions", {}).items():
            for entry in entries:
                leaves[cat][entry["function"]] += int(entry["samples"])
    return _finish(counts, leaves, excluded, top)


def merge(per_rank: Mapping[int, Mapping[str, Any]], top: int = 5) -> dict[str, Any]:
    """Sum per-rank counts into one summary (``per_rank`` keeps each rank's fractions)."""
    merged = _sum(per_rank.values(), top)
    merged["background"] = _sum([s["background"] for s in per_rank.values() if "background" in s], top)
    merged["per_rank"] = {str(r): dict(s["categories"]) for r, s in sorted(per_rank.items())}
    merged["ranks"] = len(per_rank)
    groups = {g: sum(merged["categories"][c] for c in cs) for g, cs in GROUPS.items()}
    merged["groups"] = groups
    merged["bottleneck"] = max(groups, key=lambda g: groups[g]) if merged["samples"] else None
    merged["remedies"] = remedies(merged["categories"], groups)
    return merged


#: (category or group, threshold fraction, advice). Thresholds are fractions of classified samples.
REMEDIES: Sequence[tuple[str, float, str]] = (
    (
        "data_loading",
        0.20,
        "Data loading is {pct} of samples: raise DataLoader num_workers (e.g. to the CPU "
        "cores per rank), set pin_memory=True and persistent_workers=True, raise prefetch_factor, and move "
        "decoding/augmentation offline or cache decoded samples.",
    ),
    (
        "host_to_device",
        0.10,
        "Host->device copies are {pct}: use pin_memory=True with non_blocking copies, "
        "keep tensors on the device between steps, and copy fewer, larger batches.",
    ),
    (
        "communication",
        0.15,
        "Communication is {pct}: raise the per-rank batch size or use gradient "
        "accumulation (trainer.accumulate_grad_batches), enlarge DDP buckets (bucket_cap_mb, "
        "gradient_as_bucket_view, static_graph), check backend settings (NCCL_SOCKET_IFNAME/NCCL_IB_*, gloo "
        "only on CPU), DeepSpeed reduce_bucket_size/overlap_comm, Horovod HOROVOD_FUSION_THRESHOLD/"
        "backward_passes_per_step; fewer nodes may scale better.",
    ),
    (
        "optimizer",
        0.15,
        "The optimizer step is {pct}: use a fused or foreach optimizer (e.g. Adam(fused=True)"
        " on GPU, foreach=True), or ZeRO/sharded optimizers for large models.",
    ),
    (
        "logging_checkpointing",
        0.10,
        "Logging/checkpointing is {pct}: raise trainer.log_every_n_steps, avoid "
        "sync_dist=True on per-step logs, checkpoint less often (every_n_epochs/every_n_train_steps), and "
        "disable the progress bar on batch systems.",
    ),
    (
        "framework",
        0.20,
        "Framework overhead is {pct}: steps are too small to amortise Python overhead; use a "
        "larger batch, fewer per-step callbacks, or torch.compile.",
    ),
    (
        "idle",
        0.15,
        "Processes wait {pct} of the time: look for stragglers or load imbalance between ranks "
        "(uneven data shards, rank-0-only work), and for explicit barriers.",
    ),
    (
        "compute",
        0.60,
        "Compute (forward+backward+optimizer) is {pct}: the run is compute bound, the healthy "
        "case. Go faster with mixed precision (trainer.precision bf16-mixed/16-mixed), torch.compile, "
        "channels_last for convolutions, or more devices.",
    ),
)


def remedies(categories: Mapping[str, float], groups: Mapping[str, float]) -> list[dict[str, Any]]:
    """Advice for every category/group over its threshold, largest share first."""
    out = []
    for key, threshold, text in REMEDIES:
        value = float(categories.get(key, groups.get(key, 0.0)))
        if value > threshold:
            out.append({"category": key, "fraction": value, "threshold": threshold,
                        "advice": text.format(pct=f"{100 * value:.1f}%")})  # fmt: skip
    return sorted(out, key=lambda r: -r["fraction"])


def to_markdown(summary: Mapping[str, Any], title: str = "py-spy hotspot summary") -> str:
    """The merged summary (from :func:`merge`) as a markdown report."""
    lines = [f"# {title}", ""]
    if not summary.get("samples"):
        return "\n".join([*lines, "No samples were classified (was py-spy able to attach?).", ""])
    lines += [
        f"{summary['samples']} samples from {summary['ranks']} rank(s) "
        f"({summary['excluded_samples']} start-up/import samples excluded). "
        f"Bottleneck: **{summary['bottleneck']}**.",
        "",
    ]
    ranks = list(summary.get("per_rank", {}))
    lines.append("| category | all ranks | " + " | ".join(f"rank {r}" for r in ranks) + " |")
    lines.append("|---|---:|" + "---:|" * len(ranks))
    for cat in CATEGORIES:
        per = " | ".join(f"{100 * summary['per_rank'][r][cat]:.1f}%" for r in ranks)
        lines.append(f"| {LABELS[cat]} | {100 * summary['categories'][cat]:.1f}% | {per} |")
    lines += ["", "## Remedies", ""]
    lines += [f"- {r['advice']}" for r in summary["remedies"]] or ["- Nothing stands out."]
    background = summary.get("background") or {}
    if background.get("samples"):
        busy = ", ".join(
            f"{LABELS[c]} {n}" for c, n in sorted(background["counts"].items(), key=lambda kv: -kv[1]) if n
        )
        lines += [
            "",
            f"In parallel (DataLoader workers, helper threads; not in the shares above): "
            f"{background['samples']} busy samples ({busy}).",
        ]
    lines += ["", "## Top functions per category", ""]
    for cat in CATEGORIES:
        entries = summary["top_functions"].get(cat)
        if not entries:
            continue
        lines.append(f"**{LABELS[cat]}** ({100 * summary['categories'][cat]:.1f}%)")
        lines.append("")
        lines += [f"- `{e['function']}`: {100 * e['fraction_of_category']:.1f}%" for e in entries]
        lines.append("")
    return "\n".join(lines)
