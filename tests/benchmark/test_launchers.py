"""Command lines per launcher and the sbatch script (dry run), and failure lines from real torchrun output."""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_lightning.benchmark.failure import error_line
from itwinai_lightning.benchmark.runner import GridRunner, redact_argv
from itwinai_lightning.benchmark.settings import parse

BASE = {
    "strategies": ["hpc_ddp"],
    "workers": [4],
    "batch_size": 64,
    "accelerator": "cpu",
    "dry_run": True,
    "repetitions": 1,
}


def _dry(tmp_path: Path, **options: object) -> str:
    settings = parse({**BASE, "output_dir": str(tmp_path), **options}, ["--config", "base.yaml"])
    stream = io.StringIO()
    results = GridRunner(settings, ["--config", "base.yaml"], stream=stream).run()
    assert [r.status for r in results] == ["dry-run"]
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    return stream.getvalue()


@pytest.mark.parametrize(
    ("launcher", "prefix"),
    [
        ("mpirun", ["mpirun", "-np", "4"]),
        ("srun", ["srun", "-N", "1", "--ntasks-per-node=4"]),
        ("horovodrun", ["horovodrun", "-np", "4", "-H", "localhost:4", "--gloo"]),
    ],
)
def test_launcher_commands(tmp_path: Path, launcher: str, prefix: list[str]) -> None:
    line = next(ln for ln in _dry(tmp_path, launcher=launcher).splitlines() if "itwinai_lightning" in ln)
    argv = shlex.split(line.split(" ... ", 1)[1] if " ... " in line else line)
    assert argv[: len(prefix)] == prefix
    tail = argv[argv.index("fit") :]
    assert tail[:3] == ["fit", "--config", "base.yaml"]
    joined = " ".join(tail)
    assert "--trainer.strategy hpc_ddp" in joined and "--trainer.devices 4" in joined
    assert "--data.init_args.batch_size 16" in joined  # strong scaling: 64 / 4
    assert f"--run_dir {tmp_path}/hpc_ddp-w4-r0" in joined  # the point's directory, exactly


def test_sbatch_script_spans_nodes(tmp_path: Path) -> None:
    slurm = {"ntasks_per_node": 2, "partition": "booster", "time": "00:30:00", "setup": ["module load X"]}
    script = _dry(tmp_path, launcher="srun", submit=True, slurm=slurm)
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=2" in script
    assert "#SBATCH --partition=booster" in script and "#SBATCH --time=00:30:00" in script
    assert "module load X" in script
    srun = next(ln for ln in script.splitlines() if ln.startswith("srun "))
    assert "--trainer.num_nodes 2" in srun and "--trainer.devices 2" in srun
    assert "itwinai_lightning.benchmark.finish" in script  # the job marks its own record done/failed


def test_sbatch_script_takes_the_slurm_sections_keys_and_presets(tmp_path: Path) -> None:
    """benchmark.slurm says what slurm: says (same key names and types), presets included: one renderer."""
    slurm = {"preset": "juwels", "account": "proj1", "ntasks_per_node": 4, "sbatch": {"qos": "normal"}}
    script = _dry(tmp_path, launcher="srun", submit=True, slurm=slurm)
    from itwinai_lightning.slurm.options import load_preset

    _, preset = load_preset("juwels")
    assert f"#SBATCH --partition={preset['partition']}" in script and "#SBATCH --account=proj1" in script
    assert "#SBATCH --qos=normal" in script and "#SBATCH --nodes=1" in script
    assert all("module load" in script and m in script for m in preset["modules"])
    assert "#SBATCH --requeue" not in script  # a grid point is measured once, not requeued


@pytest.mark.parametrize(
    ("slurm", "expected"),
    [
        (
            {"tasks_per_node": 2},
            "benchmark.slurm.tasks_per_node is now ntasks_per_node, as in the slurm: section",
        ),
        ({"nodes": 2}, "benchmark.slurm.nodes: each grid point sets it; drop it"),
        ({"ntasks_per_node": 0}, "benchmark.slurm.ntasks_per_node must be a whole number >= 1, got 0"),
        ({"preset": "nowhere"}, "benchmark.slurm.preset: no preset named 'nowhere'"),
    ],
)
def test_bad_benchmark_slurm_keys_name_the_key(
    tmp_path: Path, slurm: dict[str, object], expected: str
) -> None:
    from itwinai_lightning.errors import UserError

    with pytest.raises(UserError) as err:
        parse({**BASE, "output_dir": str(tmp_path), "submit": True, "slurm": slurm}, [])
    assert str(err.value).startswith(expected), str(err.value)


def test_error_line_and_redaction() -> None:
    stderr = "Traceback (most recent call last):\n  File x\nValueError: bad strategy 'x'\n"
    assert error_line(stderr) == "ValueError: bad strategy 'x'"
    assert error_line("noise\nitwinai-lightning: error: 'deepspeed' is not installed\n") == (
        "'deepspeed' is not installed"
    )
    assert redact_argv(["--logger.init_args.api_key", "s3cr3t", "--x.token=abc", "--a", "b"]) == [
        "--logger.init_args.api_key", "***REDACTED***", "--x.token=***REDACTED***", "--a", "b",
    ]  # fmt: skip


FAILING_RANK = """
import os, signal, sys
import torch.distributed as dist
if sys.argv[1] == "early" and os.environ["RANK"] == "0":
    raise ValueError("Found more than one stateful callback")  # before any process group: no prefix
dist.init_process_group("gloo")
if dist.get_rank() == 1:
    if sys.argv[1] == "raise":
        raise RuntimeError("boom on rank 1")
    os.kill(os.getpid(), signal.SIGSEGV)
dist.barrier()
"""


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("raise", "rank 1: RuntimeError: boom on rank 1"),
        ("segv", "rank 1 exited with exitcode -11 (SIGSEGV)"),
        ("early", "rank 0: ValueError: Found more than one stateful callback"),
    ],
)
def test_error_line_finds_the_root_cause_under_real_torchrun(tmp_path: Path, how: str, expected: str) -> None:
    """torchrun's ChildFailedError wrapper is not the error: the root-cause rank's own one is."""
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), how],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "ChildFailedError" in done.stderr
    assert error_line(done.stderr).startswith(expected)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"repetitions": "two"}, "benchmark.repetitions: expected int, got two"),
        ({"workers": [1, "x"]}, "benchmark.workers: expected int, got x"),
        ({"workers": []}, "benchmark.workers must be a non-empty list of ints"),
        ({"launcher": "qsub"}, "benchmark.launcher must be one of: torchrun, ray, horovodrun"),
        ({"threshold_pct": 0}, "benchmark.threshold_pct must be in (0, 100], got 0"),
        ({"worker": [2]}, "unknown option 'benchmark.worker'"),
    ],
)
def test_the_section_is_parsed_by_jsonargparse_into_one_line(
    tmp_path: Path, values: dict[str, object], expected: str
) -> None:
    """Types from the Settings dataclass (the same one gives --help), cross-key checks in it: one line."""
    from itwinai_lightning.errors import UserError

    with pytest.raises(UserError) as err:
        parse({**BASE, "output_dir": str(tmp_path), **values}, [])
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)


def test_one_worker_count_or_strategy_may_be_given_without_a_list(tmp_path: Path) -> None:
    settings = parse({**BASE, "output_dir": str(tmp_path), "workers": 2, "strategies": "hpc_ddp"}, [])
    assert settings.workers == [2] and settings.strategies == ["hpc_ddp"]
    assert settings.per_worker_batch(2) == 32
