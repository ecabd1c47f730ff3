"""The Containerfile's image, built and run with podman: what is installed works inside, and a run writes
its outputs to a bind-mounted directory as the user who runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import image as images
from tests.helpers.engines import require

pytestmark = [pytest.mark.container, pytest.mark.slow]


def test_env_inside_says_every_installed_extra_is_ok(image: images.Image) -> None:
    proc = images.run(image.tag, ["itwinai-lightning", "env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = dict(re.findall(r"extra (\w+)\s+(ok|missing)\b", proc.stdout))
    assert {name: status[name] for name in images.EXTRAS} == dict.fromkeys(images.EXTRAS, "ok")
    assert status["ray"] == status["deepspeed"] == "missing"  # what the image was not built with
    whoami = images.run(image.tag, ["sh", "-c", "id -un; id -u"]).stdout.split()
    assert whoami[0] == "scientist" and whoami[1] != "0"  # the image's default user is not root


def test_the_quickstart_trains_onto_a_bind_mounted_directory_as_the_user(
    image: images.Image, tmp_path: Path
) -> None:
    """The gallery copied out of the image and the quickstart (scaled down) trained inside it, as a user
    who is neither root nor the image's user: checkpoint and record on the host, owned by that user."""
    require(os.geteuid() == 0, "root", "the test hands a directory to another user (chown)")
    uid = 4242
    os.chown(tmp_path, uid, uid)
    user = f"{uid}:{uid}"
    copy = images.run(image.tag, ["itwinai-lightning", "examples", "--to", "gallery"], binds=[tmp_path],
                      user=user, workdir=tmp_path)  # fmt: skip
    assert copy.returncode == 0, copy.stderr[-3000:]
    fit = images.run(
        image.tag,
        ["itwinai-lightning", "fit", "--config", "gallery/quickstart.yaml", "--trainer.enable_progress_bar",
         "false", "--trainer.max_epochs", "1", "--data.num_samples", "128", "--data.val_samples", "32"],
        binds=[tmp_path], user=user, workdir=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = tmp_path / "runs" / "quickstart" / "version_0"
    record = json.loads((run_dir / "run_record.json").read_text())
    assert record["status"] == "completed" and record["run_dir"] == str(run_dir)
    [last] = run_dir.rglob("last.ckpt")
    code = "import sys, torch; print(torch.load(sys.argv[1], weights_only=False)['global_step'])"
    steps = subprocess.run(
        [sys.executable, "-c", code, str(last)], capture_output=True, text=True, check=True
    ).stdout.strip()
    batch = yaml.safe_load((tmp_path / "gallery" / "quickstart.yaml").read_text())["data"]["init_args"]
    assert steps == str(128 // batch["batch_size"])  # one epoch of the scaled-down data
    owners = {p.stat().st_uid for p in [run_dir, last, run_dir / "run_record.json"]}
    assert owners == {uid}
