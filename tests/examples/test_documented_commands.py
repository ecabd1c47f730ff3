"""Every command in README.md and docs/ pastes: each is extracted from the docs' shell blocks and checked the
way the CLI would run it (config files, keys, class paths, options) from a checkout, and the inference
page's journey (fit, then predict from the run directory under torchrun) runs for real, scaled down."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from itwinai_lightning import inference
from itwinai_lightning.gallery import cli as gallery

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: the CLI's invocations, after an optional launcher prefix
ENTRY = (["python", "-m", "itwinai_lightning"], ["itwinai-lightning"], ["-m", "itwinai_lightning"])
#: tokens that mark a placeholder the reader fills in (not a command to paste as it is)
PLACEHOLDERS = ("...", "<", "$", "[--")
#: commands that read what an earlier run left (a spool, a profile, a grid): their own tests run them
READS_A_RUN = (["logs", "replay"], ["profile", "report"], ["benchmark", "report"])
SMALL = ["--trainer.max_epochs", "1", "--data.num_samples", "64", "--data.val_samples", "32",
         "--data.batch_size", "16", "--trainer.enable_progress_bar", "false"]  # fmt: skip


def shell_blocks(text: str) -> Iterator[str]:
    """The bodies of the fenced ``bash``/``sh`` code blocks, continuation lines joined."""
    info: str | None = None  # the open block's info string; None outside a block
    body: list[str] = []
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\S*)", line)
        if fence is None:
            body.append(line)
            continue
        if info is None:
            info, body = fence.group(1), []
            continue
        if info in ("bash", "sh", "shell"):
            yield "\n".join(body).replace("\\\n", " ")
        info = None


def documented_commands(path: Path) -> list[tuple[list[str], list[str]]]:
    """``(launcher prefix, CLI arguments)`` of every CLI invocation in ``path``'s shell blocks."""
    found = []
    for block in shell_blocks(path.read_text()):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            while "&&" in tokens:  # "bash scripts/setup.sh && python -m itwinai_lightning fit ..."
                tokens = tokens[tokens.index("&&") + 1 :]
            for entry in ENTRY:
                at = next((i for i in range(len(tokens)) if tokens[i : i + len(entry)] == entry), None)
                if at is not None:
                    prefix = tokens[:at] + (["python"] if entry[0] == "-m" else [])
                    found.append((prefix, tokens[at + len(entry) :]))
                    break
    return found


ALL = [(doc.name, prefix, args) for doc in DOCS for prefix, args in documented_commands(doc)]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like a checkout (``configs/`` is the shipped gallery) where the quickstart
    was trained once, scaled down, as the README's first command does."""
    from tests.helpers.childenv import child_env

    root = tmp_path_factory.mktemp("checkout")
    (root / "configs").symlink_to(gallery.gallery_dir(), target_is_directory=True)
    fit = [sys.executable, "-m", "itwinai_lightning", "fit", "--config", "configs/quickstart.yaml", *SMALL]
    proc = subprocess.run(fit, cwd=root, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_the_docs_show_the_commands_a_user_pastes() -> None:
    names = {(doc, args[0]) for doc, _, args in ALL if args}
    assert ("README.md", "fit") in names and ("getting-started.md", "fit") in names
    assert {("inference.md", "predict"), ("slurm.md", "slurm"), ("tune.md", "tune")} <= names
    assert len(ALL) >= 20, ALL


def _check(args: list[str]) -> None:
    """What the CLI checks before it runs ``args``, without training: parse and validate."""
    from itwinai_lightning.cli.main import LIGHTNING_COMMANDS, main
    from itwinai_lightning.cli.run import resolve_config

    command, rest = args[0], args[1:]
    if command in LIGHTNING_COMMANDS:
        resolve_config(rest, command)
        return
    if command == "tune":
        from itwinai_lightning.tune.cli import prepare

        prepare(rest)
        return
    if command == "slurm":  # render only: submitting is the SLURM tests' job
        rest = [a for a in rest if a not in ("--slurm.submit", "true")]
    if command == "benchmark":
        rest = [*rest, "--benchmark.dry_run", "true"]
    if command == "build-horovod":  # building takes minutes: the CI builds it; here its script is found
        rest = ["--print-script"]
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as stop:
        main([command, *rest])
    assert stop.value.code in (0, None)


@pytest.mark.parametrize(("doc", "prefix", "args"), ALL, ids=[f"{d}:{' '.join(a)[:60]}" for d, _, a in ALL])
def test_a_documented_command_pastes(
    doc: str, prefix: list[str], args: list[str], checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    placeholder = [
        a for a in [*prefix, *args] if any(p in a for p in PLACEHOLDERS) or re.fullmatch(r"[A-Z_]{3,}", a)
    ]
    if placeholder or not args:
        pytest.skip(f"{doc}: a template with placeholders ({' '.join(placeholder)})")
    if args[:2] in READS_A_RUN:
        pytest.skip(f"{doc}: {' '.join(args[:2])} reads an earlier run's outputs (tested with one)")
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _check(args)


def test_the_inference_journey_runs_as_the_docs_say(checkout: Path, python_env: dict[str, str]) -> None:
    """docs/inference.md: fit the quickstart, then predict from its run directory on 2 ranks (torchrun)."""
    steps = documented_commands(REPO / "docs" / "inference.md")
    fit = next(args for prefix, args in steps if args[:1] == ["fit"])
    prefix, predict = next((prefix, args) for prefix, args in steps if args[:1] == ["predict"])
    assert prefix[:1] == ["torchrun"] and "--ckpt_path" in predict
    env = {**python_env, "OMP_NUM_THREADS": "1"}
    for launcher, args in (([sys.executable, "-m", "itwinai_lightning"], fit),
                           ([sys.executable, "-m", "torch.distributed.run", *prefix[1:-1], "-m",
                             "itwinai_lightning"], predict)):  # fmt: skip
        proc = subprocess.run([*launcher, *args, *SMALL], cwd=checkout, env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stderr[-3000:]}"
    assert inference.read(str(checkout / "runs" / "predict" / "latest" / "predictions")).shape[0] == 32
    assert os.path.isdir(checkout / "runs" / "quickstart")
