"""Classification rules on crafted py-spy stacks, renderers, and the breakdown of crafted traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from itwinai_lightning.profiling import breakdown, hotspots, stacks

P = 'process 100:"python train.py"'
LOOP = (
    "<module> (train.py:10)",
    "Trainer.fit (lightning/pytorch/trainer/trainer.py:584)",
    "_FitLoop.run (lightning/pytorch/loops/fit_loop.py:224)",
    "_TrainingEpochLoop.advance (lightning/pytorch/loops/training_epoch_loop.py:300)",
)
STEP = (
    *LOOP,
    "_AutomaticOptimization.run (lightning/pytorch/loops/optimization/automatic.py:130)",
    "LightningOptimizer.step (lightning/pytorch/core/optimizer.py:154)",
    "Adam.step (torch/optim/adam.py:210)",
    "_make_closure.<locals>.closure (lightning/pytorch/loops/optimization/automatic.py:90)",
)
CASES: dict[str, tuple[str, ...]] = {
    "data_loading": (
        *LOOP,
        "_DataFetcher.__next__ (lightning/pytorch/loops/fetchers.py:134)",
        "_SingleProcessDataLoaderIter._next_data (torch/utils/data/dataloader.py:790)",
        "MyDataset.__getitem__ (mydata.py:40)",
    ),
    "host_to_device": (
        *LOOP,
        "Strategy.batch_to_device (lightning/pytorch/strategies/strategy.py:270)",
        "move_data_to_device (lightning/fabric/utilities/apply_func.py:100)",
    ),
    "forward": (
        *STEP,
        "Model.training_step (model.py:30)",
        "Conv2d._conv_forward (torch/nn/modules/conv.py:549)",
    ),
    "backward": (
        *STEP,
        "Tensor.backward (torch/_tensor.py:625)",
        "_engine_run_backward (torch/autograd/graph.py:841)",
    ),
    "optimizer": (*STEP[:-1], "_single_tensor_adam (torch/optim/adam.py:400)"),
    "communication": (
        *STEP,
        "Tensor.backward (torch/_tensor.py:625)",
        "_DDPSink.backward (torch/nn/parallel/distributed.py:270)",
        "all_reduce (torch/distributed/distributed_c10d.py:2800)",
    ),
    "logging_checkpointing": (
        *LOOP,
        "_call_callback_hooks (lightning/pytorch/trainer/call.py:228)",
        "ModelCheckpoint.on_validation_end (lightning/pytorch/callbacks/model_checkpoint.py:330)",
        "save (torch/serialization.py:960)",
    ),
    "framework": (*LOOP, "_call_lightning_module_hook (lightning/pytorch/trainer/call.py:170)"),
    "idle": (*LOOP, "Thread.join (threading.py:1112)", "Thread._wait_for_tstate_lock (threading.py:1132)"),
    "other": ("<module> (train.py:10)", "my_helper (train.py:4)"),
}
MORE: list[tuple[str, tuple[str, ...]]] = [
    # DeepSpeed: ZeRO optimizer step is optimizer work, its reductions are communication
    ("optimizer", (*LOOP, "DeepSpeedZeroOptimizer.step (deepspeed/runtime/zero/stage_1_and_2.py:1800)")),
    (
        "communication",
        (
            *LOOP,
            "DeepSpeedEngine.backward (deepspeed/runtime/engine.py:2000)",
            "DeepSpeedZeroOptimizer.reduce_ipg_grads (deepspeed/runtime/zero/stage_1_and_2.py:1200)",
            "DeepSpeedZeroOptimizer.average_tensor (deepspeed/runtime/zero/stage_1_and_2.py:1000)",
            "all_reduce (deepspeed/comm/comm.py:500)",
        ),
    ),
    ("communication", (*LOOP, "DeepSpeedEngine.allreduce_gradients (deepspeed/runtime/engine.py:1900)")),
    # Horovod: optimizer.step synchronises (communication), broadcast at start, raw mpi_ops
    (
        "communication",
        (
            *STEP[:-2],
            "_DistributedOptimizer.step (horovod/torch/optimizer.py:250)",
            "_DistributedOptimizer.synchronize (horovod/torch/optimizer.py:200)",
        ),
    ),
    ("communication", (*LOOP, "broadcast_parameters (horovod/torch/functions.py:50)")),
    ("communication", (*LOOP, "synchronize (horovod/torch/mpi_ops.py:900)")),
    ("optimizer", (*STEP[:-2], "_DistributedOptimizer.zero_grad (horovod/torch/optimizer.py:280)")),
    # native (py-spy --native) DDP reducer / gloo frames inside backward
    (
        "communication",
        (*STEP, "_engine_run_backward (torch/autograd/graph.py:841)", "c10d::Reducer::finalize_backward"),
    ),
    # a self.log(sync_dist=True) is communication, a plain self.log is logging
    (
        "logging_checkpointing",
        (
            *STEP,
            "Model.training_step (model.py:30)",
            "LightningModule.log (lightning/pytorch/core/module.py:500)",
        ),
    ),
    (
        "communication",
        (
            *STEP,
            "LightningModule.log (lightning/pytorch/core/module.py:500)",
            "_sync_ddp (lightning/fabric/utilities/distributed.py:230)",
        ),
    ),
    # the main loop waiting on DataLoader workers is data loading, a worker waiting for work is idle
    (
        "data_loading",
        (
            *LOOP,
            "_MultiProcessingDataLoaderIter._try_get_data (torch/utils/data/dataloader.py:1100)",
            "Queue.get (multiprocessing/queues.py:113)",
            "_ConnectionBase.poll (multiprocessing/connection.py:257)",
        ),
    ),
    ("idle", (*LOOP, "Queue.get (queue.py:171)", "Condition.wait (threading.py:327)")),
]


@pytest.mark.parametrize(("expected", "frames"), [*CASES.items(), *MORE])
def test_every_category_is_recognised(expected: str, frames: tuple[str, ...]) -> None:
    assert hotspots.classify((P, *frames)) == expected


def test_startup_and_profiler_frames_are_excluded() -> None:
    assert (
        hotspots.classify((P, "<module> (train.py:1)", "_find_and_load (<frozen importlib._bootstrap>:1176)"))
        is None
    )
    assert hotspots.classify((P,)) is None
    own = (*LOOP, "PySpyProfiler._stop (itwinai_lightning/callbacks/pyspy.py:170)")
    assert hotspots.classify((P, *own)) is None


def test_summary_fractions_workers_and_remedies(tmp_path: Path) -> None:
    worker = 'process 101:"python train.py"'
    text = "\n".join(
        [
            f"{P};{';'.join(CASES['data_loading'])} 60",
            f"{P};{';'.join(CASES['forward'])} 30",
            f"{P};{';'.join(CASES['communication'])} 10",
            f"{P};<module> (train.py:1);_find_and_load (<frozen importlib._bootstrap>:1) 7",
            # a DataLoader worker: busy samples are background, waiting ones cost nothing
            f"{P};{worker};_worker_loop (torch/utils/data/_utils/worker.py:300);D.__getitem__ (d.py:3) 5",
            f"{P};{worker};_worker_loop (torch/utils/data/_utils/worker.py:300);Queue.get (queue.py:1) 50",
            # another rank under Lightning's launcher (a child of rank 0): dropped
            f'{P};process 200:"python train.py";{";".join(CASES["forward"])} 99',
        ]
    )
    samples = stacks.filter_own(stacks.parse_collapsed(text), other_rank_pids=[200])
    rank0 = hotspots.summarize_rank(samples)
    assert rank0["samples"] == 100 and rank0["excluded_samples"] == 7
    assert rank0["categories"]["data_loading"] == pytest.approx(0.6)
    assert rank0["categories"]["communication"] == pytest.approx(0.1)
    assert rank0["background"]["counts"]["data_loading"] == 5 and rank0["background"]["counts"]["idle"] == 0
    top = rank0["top_functions"]["data_loading"][0]
    assert top["function"] == "MyDataset.__getitem__ (mydata.py)" and top["fraction_of_category"] == 1.0
    rank1 = hotspots.summarize_rank(stacks.parse_collapsed(f"{P};{';'.join(CASES['forward'])} 100"))
    merged = hotspots.merge({0: rank0, 1: rank1})
    assert merged["samples"] == 200 and merged["ranks"] == 2
    assert merged["categories"]["forward"] == pytest.approx(130 / 200)
    assert merged["per_rank"]["1"]["forward"] == 1.0
    assert merged["bottleneck"] == "compute"
    advice = {r["category"]: r["advice"] for r in merged["remedies"]}
    assert "num_workers" in advice["data_loading"] and "pin_memory" in advice["data_loading"]
    assert "compute" in advice and "communication" not in advice  # 5 % < 15 %
    md = hotspots.to_markdown(merged)
    assert "| data loading | 30.0% | 60.0% | 0.0% |" in md and "num_workers" in md


def test_renderers_round_trip(tmp_path: Path) -> None:
    text = f"{P};{';'.join(CASES['forward'])} 3\n{P};{';'.join(CASES['backward'])} 2\n"
    samples = stacks.parse_collapsed(text)
    stacks.write_collapsed(samples, tmp_path / "c.txt")
    assert stacks.read_collapsed(tmp_path / "c.txt") == samples
    doc = stacks.to_speedscope(samples, "rank 0")
    prof = doc["profiles"][0]
    assert prof["name"] == "process 100" and prof["endValue"] == 5 and sorted(prof["weights"]) == [2, 3]
    names = [doc["shared"]["frames"][i]["name"] for i in prof["samples"][0]]
    assert names[0] == "<module>" and all(not n.startswith("process") for n in names)
    svg = stacks.to_svg(samples, "rank 0")
    assert svg.startswith("<svg") and "(5 samples)" in svg and "Conv2d._conv_forward" in svg


def _x(name: str, ts: float, dur: float, tid: int = 1, cat: str = "cpu_op") -> dict:
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def test_breakdown_cpu_trace_innermost_ops_and_overlap() -> None:
    trace = {
        "traceEvents": [
            _x("ProfilerStep#1", 0, 100, cat="user_annotation"),
            _x("aten::conv2d", 0, 40),  # 40 compute, with a copy inside
            _x("aten::copy_", 10, 10),  # 10 memcpy (innermost)
            _x("autograd::engine::evaluate_function: X", 50, 30),  # compute 50..80 ...
            _x("c10d::allreduce_", 60, 5),  # ... with a launch inside (communication)
            _x("gloo:all_reduce", 62, 28, tid=2, cat="user_annotation"),  # gloo thread 62..90
            _x("Optimizer.step#SGD.step", 90, 5, cat="user_annotation"),  # a wrapper: not counted
        ]
    }
    out = breakdown.analyze(trace)
    assert out["mode"] == "cpu" and out["steps"] == 1
    # comm = 60..90 = 30; memcpy = 10; compute = (0..40 - 10..20) + (50..60) = 40; other = 20
    assert out["fractions"] == pytest.approx(
        {"compute": 0.4, "communication": 0.3, "memcpy": 0.1, "other": 0.2}
    )
    # compute runs 50..60 and 65..80 on thread 1; comm 60..90: overlapped 65..80 = 15 of 30
    assert out["overlap"] == pytest.approx(0.5)


def test_breakdown_cuda_trace_uses_kernels(tmp_path: Path) -> None:
    trace = {
        "traceEvents": [
            _x("ProfilerStep#3", 0, 80, cat="user_annotation"),
            _x("aten::mm", 0, 80),  # CPU ops are ignored when device kernels exist
            _x("volta_sgemm", 10, 40, tid=7, cat="kernel"),
            _x("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 30, 40, tid=8, cat="kernel"),
            _x("Memcpy HtoD (Pageable -> Device)", 0, 10, tid=7, cat="gpu_memcpy"),
        ]
    }
    (tmp_path / "t.json").write_text(json.dumps(trace))
    out = breakdown.analyze_file(tmp_path / "t.json")
    assert out["mode"] == "cuda"
    # window 0..80; comm 30..70 = 40; memcpy 10; compute 10..30 = 20; other 10
    assert out["fractions"] == pytest.approx(
        {"compute": 0.25, "communication": 0.5, "memcpy": 0.125, "other": 0.125}
    )
    assert out["overlap"] == pytest.approx(0.5)  # sgemm runs over 30..50 of the 40 comm
    merged = breakdown.merge({0: out, 1: {**out, "overlap": 0.0}})
    assert merged["overlap"] == pytest.approx(0.25) and merged["overlap_across_ranks"]["max"] == 0.5
    with pytest.raises(ValueError, match=r"t2\.json"):
        breakdown.analyze_file(tmp_path / "t2.json")


def test_profile_report_without_a_profile_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from itwinai_lightning.cli.main import main  # the command table: subcommands raise, it says one line

    with pytest.raises(SystemExit) as exc:
        main(["profile", "report", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path) in err and "PySpyProfiler" in err
