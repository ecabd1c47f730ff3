"""The optional extras as this installation declares them, and whether each one is usable here.

The requirements are read from the installed distribution's own metadata (``Requires-Dist`` with
``extra == ...`` markers), so the check is always the one that shipped with the installed wheel, markers
such as ``python_version`` included. Nothing is imported: a check reads metadata only, so it takes
milliseconds and is safe under any launcher.

An extra is

* ``ok`` -- every requirement it declares for this Python is installed at a version it accepts;
* ``missing`` -- none of them is installed;
* ``broken`` -- some are installed, others are missing or at a version the extra does not accept.

Each problem comes with the exact ``pip install`` line that fixes it, for this interpreter.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement

DISTRIBUTION = "itwinai-lightning"

#: extras that are only a bundle of the others
BUNDLES = ("all", "dev")

#: what each extra enables, for the report
PURPOSE: dict[str, str] = {
    "mlflow": "MLflow tracking and model registry",
    "wandb": "Weights & Biases tracking",
    "prov": "yProv4ML provenance",
    "ray": "tune, ray_ddp",
    "deepspeed": "hpc_deepspeed",
    "horovod": "horovod strategy (build tools; Horovod itself: itwinai-lightning build-horovod)",
    "mpi": "mpi4py, optional under mpirun",
    "report": "benchmark report plots",
    "amd": "AMD GPU monitoring through amdsmi (without it: the amdgpu sysfs files)",
}

#: Horovod is not installable from PyPI against torch 2.x, so no extra can carry it; its own line
HOROVOD_BUILD = "itwinai-lightning build-horovod"


@dataclass
class ExtraStatus:
    """One extra: its state, what is wrong and the line that fixes it (empty when ``ok``)."""

    name: str
    state: str
    problems: list[str] = field(default_factory=list)
    fix: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"state": self.state, "problems": self.problems, "fix": self.fix}


def declared() -> dict[str, list[Requirement]]:
    """Extra name -> the requirements it declares for this interpreter (markers evaluated).

    Empty when the package's metadata is not installed (running from a source tree on ``PYTHONPATH``).
    """
    try:
        lines = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return {}
    names = metadata.metadata(DISTRIBUTION).get_all("Provides-Extra") or []
    extras: dict[str, list[Requirement]] = {name: [] for name in names}
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None:
            continue  # a core dependency
        for name in extras:
            if requirement.marker.evaluate({"extra": name}):
                extras[name].append(requirement)
    return extras


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def pip_line(requirements: list[str]) -> str:
    """The command that installs ``requirements`` into this interpreter."""
    quoted = " ".join(shlex.quote(r) for r in requirements)
    return f"{shlex.quote(sys.executable)} -m pip install {quoted}"


def plain(requirement: Requirement) -> str:
    """The requirement without its marker (already evaluated for this Python)."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def check(name: str, requirements: list[Requirement]) -> ExtraStatus:
    """The state of one extra from its requirements."""
    problems: list[str] = []
    to_install: list[str] = []
    present = 0
    for requirement in requirements:
        if requirement.name.replace("_", "-").lower() == DISTRIBUTION:
            continue  # a bundle naming other extras of this package
        version = installed_version(requirement.name)
        if version is None:
            problems.append(f"{requirement.name} is not installed")
            to_install.append(plain(requirement))
            continue
        present += 1
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            problems.append(
                f"{requirement.name} {version} is installed, this extra needs {requirement.specifier} "
                f"on Python {sys.version_info.major}.{sys.version_info.minor}"
            )
            to_install.append(plain(requirement))
    if name == "horovod" and installed_version("horovod") is None:
        problems.append(f"horovod is not installed: it is built against your torch with '{HOROVOD_BUILD}'")
    if not problems:
        return ExtraStatus(name, "ok")
    state = "broken" if present else "missing"
    fixes = [pip_line(to_install)] if to_install else []
    if name == "horovod" and installed_version("horovod") is None:
        fixes.append(HOROVOD_BUILD)
        if not to_install:  # the build tools are there; Horovod itself is what is missing
            state = "missing"
    return ExtraStatus(name, state, problems, " && ".join(fixes))


def report() -> dict[str, ExtraStatus]:
    """Every extra of this installation except the bundles, in declaration order."""
    return {
        name: check(name, requirements) for name, requirements in declared().items() if name not in BUNDLES
    }


#: packages built for one torch release and one build variant (cpu, cu126, rocm6.4 ...)
TORCH_COMPANIONS = ("torchvision", "torchaudio")


def torch_companion_problems() -> list[tuple[str, str]]:
    """(problem, fix) for each installed torch companion that does not match the installed torch.

    A companion must require this torch's release and come from the same build variant (the local
    version label, ``+cpu`` ...): a PyPI torchvision beside a ``+cpu`` torch fails at ``import lightning``
    (torchmetrics imports torchvision when it is installed).
    """
    torch_version = installed_version("torch")
    if torch_version is None:
        return []
    torch_release, _, torch_variant = torch_version.partition("+")
    found: list[tuple[str, str]] = []
    for name in TORCH_COMPANIONS:
        version = installed_version(name)
        if version is None:
            continue
        variant = version.partition("+")[2]
        wanted = [r for r in _requirements_of(name) if r.name == "torch"]
        release_ok = all(r.specifier.contains(torch_release, prereleases=True) for r in wanted)
        if release_ok and variant == torch_variant:
            continue
        index = f" --index-url https://download.pytorch.org/whl/{torch_variant}" if torch_variant else ""
        found.append(
            (
                f"{name} {version} does not match torch {torch_version} "
                + ("(different release)" if not release_ok else "(different build variant)"),
                f"install the {name} built for it: {pip_line([paired_release(name, torch_release)])}{index}",
            )
        )
    return found


def paired_release(companion: str, torch_release: str) -> str:
    """The requirement for the companion release made with ``torch_release`` (torch 2.N pairs with
    torchvision 0.(N+15) and torchaudio 2.N, since torch 2.0)."""
    major, minor = (int(part) for part in torch_release.split(".")[:2])
    if companion == "torchvision" and major == 2:
        return f"torchvision==0.{minor + 15}.*"
    if companion == "torchaudio" and major == 2:
        return f"torchaudio=={major}.{minor}.*"
    return companion


def _requirements_of(distribution: str) -> list[Requirement]:
    try:
        lines = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return []
    parsed = []
    for line in lines:
        try:
            parsed.append(Requirement(line))
        except InvalidRequirement:
            continue
    return parsed
