"""The ``slurm:`` section: site presets (YAML data in the package or a user file) merged with the user's keys.

Precedence, lowest first: the preset file, the ``slurm:`` sections of the ``--config`` files, then
``--slurm.key value`` flags. Keys of a preset and of the section are the same, so anything a preset sets
can be overridden per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from itwinai_lightning.errors import UserError
from itwinai_lightning.launch import container as containers
from itwinai_lightning.launch.table import SLURM_LAUNCHERS as LAUNCHERS
from itwinai_lightning.sections import check_known_keys, deep_merge, load_yaml_file, parse_section

#: Short aliases for the shipped presets.
ALIASES = {"juwels": "juwels_booster", "lumi": "lumi_g", "booster": "juwels_booster"}
COMMANDS = ("fit", "tune", "predict")


def available_presets() -> list[str]:
    """Names of the presets shipped in ``itwinai_lightning/slurm/presets/*.yaml``."""
    folder = resources.files("itwinai_lightning.slurm").joinpath("presets")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """Return ``(name, data)`` for a shipped preset name (or alias) or a path to a user's YAML preset."""
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path
    if looks_like_path:
        if not Path(name_or_path).is_file():
            raise UserError(f"slurm.preset: preset file {name_or_path!r} does not exist")
        return Path(name_or_path).stem, load_yaml_file(name_or_path)
    name = ALIASES.get(name_or_path, name_or_path)
    if name not in available_presets():
        known = ", ".join(available_presets() + sorted(ALIASES))
        raise UserError(
            f"slurm.preset: no preset named {name_or_path!r}; available: {known} "
            "(or give the path of your own preset YAML file)"
        )
    text = resources.files("itwinai_lightning.slurm").joinpath("presets", f"{name}.yaml").read_text()
    return name, yaml.safe_load(text) or {}


@dataclass
class SlurmOptions:
    """Every key the ``slurm:`` section (and a preset file) accepts (docs/slurm.md).

    Args:
        preset: a shipped site (generic, juwels_booster alias juwels, lumi_g alias lumi, vega) or a path.
        description: the preset's one-line description.
        nodes: --nodes; also written to trainer.num_nodes.
        ntasks_per_node: tasks per node (default: devices per node for srun, 1 for torchrun and ray).
        cpus_per_task: --cpus-per-task and OMP_NUM_THREADS (default: cpus_per_node // tasks).
        cpus_per_node: cores a node has (from the preset).
        gpus_per_node: GPUs a node has (from the preset); 0 asks for no GPUs.
        time: the time limit, HH:MM:SS.
        partition: the partition.
        account: the project billed; required by presets with account_required.
        account_required: the site bills a project: a job without an account is refused at submit.
        job_name: --job-name (default itwinai-<command>).
        job_dir: where job.sbatch and config.yaml go (default <run dir>/slurm).
        command: fit, tune (a Ray cluster inside the allocation) or predict (needs --ckpt_path).
        launcher: srun (one task per device), torchrun (one per node) or ray (default: srun; ray for tune).
        python: the interpreter the job runs.
        modules: module load lines.
        module_purge: module purge first.
        venv: a virtual environment to activate.
        conda: a conda environment to activate.
        container: {image, runtime, gpu_flag, binds, args}: run every Python command in the container.
        env: export lines, values may use ${SLURM_JOB_ID}.
        setup: extra shell lines, verbatim.
        srun_args: extra srun arguments.
        mpi: --mpi=<mpi> for Horovod strategies.
        sbatch: extra #SBATCH directives, e.g. {qos: normal, exclusive: null}.
        signal: the signal SLURM sends before the time limit.
        signal_seconds: how many seconds before the limit.
        requeue: checkpoint, requeue and resume on the signal (default: on for srun fit jobs and tune jobs).
        max_restarts: how often a fit job whose launch failed (a lost node, a hung or lost rank) is
            requeued without the failed nodes (srun, with requeue), or how often torchrun restarts a
            failed worker group inside the allocation (torchrun: --max-restarts); 0: never. See
            docs/failures.md.
        check_every_n_steps: how often the ranks vote on stopping.
        time_limit_margin_s: also stop this close to the time limit (from squeue).
        checkpoint_every_min: a TimedCheckpoint every this many minutes of training, written in the
            background (fit jobs; 0 turns it off; a config's own TimedCheckpoint is kept).
        master_port: the rendezvous port of torchrun/DDP.
        ray_port: the Ray head's port (tune jobs).
        submit: run sbatch and print the job id.
        test_only: run sbatch --test-only.
    """

    preset: str = "generic"
    description: str = ""
    nodes: int = 1
    ntasks_per_node: int | None = None  # default: devices per node (srun) or 1 (torchrun, ray)
    cpus_per_task: int | None = None  # default: cpus_per_node // tasks per node, else 1
    cpus_per_node: int | None = None
    gpus_per_node: int = 0
    time: str = "01:00:00"
    partition: str | None = None
    account: str | None = None
    account_required: bool = False  # the site bills a project: a job without an account is refused
    job_name: str | None = None
    job_dir: str | None = None  # default: <run dir>/slurm
    command: str = "fit"
    launcher: str | None = None  # srun | torchrun | ray; default: ray for tune, else srun
    python: str = "python"
    modules: list[str] = field(default_factory=list)
    module_purge: bool = False
    venv: str | None = None
    conda: str | None = None
    container: dict[str, Any] = field(default_factory=dict)  # image, runtime, gpu_flag, binds, args
    env: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    srun_args: list[str] = field(default_factory=list)
    mpi: str | None = None
    sbatch: dict[str, Any] = field(default_factory=dict)
    signal: str = "USR1"
    signal_seconds: int = 300
    requeue: bool | None = None  # default: on for the srun launcher
    max_restarts: int = 3
    check_every_n_steps: int = 1
    time_limit_margin_s: float | None = None
    checkpoint_every_min: float = 30.0
    master_port: int = 29500
    ray_port: int = 6379
    submit: bool = False
    test_only: bool = False

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> SlurmOptions:
        """The ``slurm:`` section over its preset, parsed and validated by jsonargparse (one line naming
        the key for each mistake)."""
        known = [f.name for f in fields(cls)]
        check_known_keys(section, known, "slurm")
        preset_name = str(section.get("preset") or "generic")
        name, preset = load_preset(preset_name)
        check_known_keys(preset, known, f"slurm (preset {name})")
        merged = deep_merge(preset, section)
        merged["preset"] = name
        return parse_section(cls, merged, "slurm")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks across keys, and the defaults that depend on other keys (launcher, requeue)."""
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise UserError(f"slurm.nodes must be a whole number >= 1, got {self.nodes!r}")
        if self.command not in COMMANDS:
            raise UserError(f"slurm.command must be one of {', '.join(COMMANDS)}, got {self.command!r}")
        if self.launcher is None:
            self.launcher = "ray" if self.command == "tune" else "srun"
        if self.launcher not in LAUNCHERS:
            raise UserError(f"slurm.launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.command == "tune" and self.launcher != "ray":
            raise UserError(
                "slurm.command 'tune' runs a Ray cluster inside the allocation: use slurm.launcher ray"
            )
        if self.command == "predict" and self.launcher == "ray":
            raise UserError("slurm.command 'predict' runs under srun or torchrun, not ray")
        can_requeue = (self.launcher, self.command) in (("srun", "fit"), ("ray", "tune"))
        if self.requeue is None:
            self.requeue = can_requeue
        elif self.requeue and self.command == "predict":
            raise UserError("slurm.requeue resumes a fit from its checkpoint; set it false for predict")
        elif self.requeue and not can_requeue:
            raise UserError(
                f"slurm.requeue needs slurm.launcher srun (the signal must reach the training ranks), "
                f"not {self.launcher!r}; set slurm.requeue false or slurm.launcher srun"
            )
        if self.venv and self.conda:
            raise UserError("slurm.venv and slurm.conda are both set: choose one Python environment")
        if self.checkpoint_every_min < 0:
            raise UserError(
                f"slurm.checkpoint_every_min must be >= 0 minutes (0: no timed checkpoints), "
                f"got {self.checkpoint_every_min!r}"
            )
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise UserError(f"slurm.max_restarts must be a whole number >= 0, got {self.max_restarts!r}")
        for key in ("ntasks_per_node", "cpus_per_task", "signal_seconds"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"slurm.{key} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 0:
            raise UserError(f"slurm.gpus_per_node must be a whole number >= 0, got {self.gpus_per_node!r}")
        if self.container and not isinstance(self.container, dict):
            raise UserError("slurm.container must be a mapping (image, runtime, gpu_flag, binds, args)")
        containers.check(self.container)
        if self.container.get("image") and not self.container.get("runtime"):
            self.container["runtime"] = containers.DEFAULT_RUNTIME
