"""Search-space and option validation: plain Python, and the CLI's exit 2 before Ray is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_lightning.errors import UserError
from itwinai_lightning.tune.search_space import override_args, parse_search_space
from itwinai_lightning.tune.settings import DEFAULTS, parse_settings

TINY = Path(__file__).with_name("tiny.yaml")


def test_distributions_parse_and_sample_with_ray_types() -> None:
    space = parse_search_space(
        {
            "model.init_args.lr": {"loguniform": [1e-4, 1e-1]},
            "model": {"init_args": {"width": {"randint": [4, 9]}}},
            "data.init_args.batch_size": {"choice": [16, 32]},
            "model.init_args.depth": {"grid": [2, 3]},
            "data.init_args.noise_std": {"quniform": [0.1, 0.5, 0.1]},
            "data.init_args.seed": {"uniform": [0, 3]},
        }
    )
    assert list(space) == [
        "model.init_args.lr",
        "model.init_args.width",
        "data.init_args.batch_size",
        "model.init_args.depth",
        "data.init_args.noise_std",
        "data.init_args.seed",
    ]
    assert space["model.init_args.width"].representative() == 4
    assert space["data.init_args.batch_size"].values_to_check() == [16, 32]
    assert override_args({"model.init_args.lr": 0.5, "model.init_args.optimizer": "sgd"}) == [
        "--model.init_args.lr=0.5",
        "--model.init_args.optimizer=sgd",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"lr": {"lognormal": [1, 2]}}, "unknown distribution 'lognormal'"),
        ({"lr": {"uniform": [0.5, 0.1]}}, "low < high"),
        ({"lr": {"loguniform": [0, 0.1]}}, "0 < low"),
        ({"lr": {"quniform": [0.1, 0.5]}}, "[low, high, q]"),
        ({"lr": {"randint": [1.5, 4]}}, "integer bounds"),
        ({"lr": {"uniform": ["a", 1]}}, "must be numbers"),
        ({"lr": 0.1}, "expected one distribution"),
        ({"lr": {"choice": []}}, "non-empty list"),
        ({}, "search_space is empty"),
    ],
)
def test_bad_distributions_name_the_key(spec: dict[str, object], message: str) -> None:
    with pytest.raises(UserError) as err:
        parse_search_space(spec)
    assert message in str(err.value)
    if spec:
        assert "tune.search_space.lr" in str(err.value)


def test_options_are_checked() -> None:
    base = {**DEFAULTS, "search_space": {"model.init_args.lr": {"choice": [0.1]}}}
    settings = parse_settings({**base, "scheduler": {"type": "ASHA", "grace_period": 2}})
    assert (settings.scheduler, settings.scheduler_options) == ("asha", {"grace_period": 2})
    for bad, message in [
        ({"scheduler": "bohb"}, "unknown scheduler 'bohb'"),
        ({"search_alg": "nevergrad"}, "unknown search_alg"),
        ({"mode": "minimum"}, "tune.mode"),
        ({"num_samples": 0}, "tune.num_samples"),
        ({"max_failures": -1}, "tune.max_failures"),
        ({"samples": 3}, "unknown option 'tune.samples'"),
        ({"ray": {"adress": "auto"}}, "unknown option 'tune.ray.adress'"),
        ({"search_alg": "optuna", "search_space": {"x": {"grid": [1, 2]}}}, "grid works only"),
        ({"scheduler": {"type": "pbt", "hyperparam_mutations": {"x": {"uniform": [2, 1]}}}}, "low < high"),
    ]:
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            parse_settings({**base, **bad})


SCRIPT = r"""
import contextlib, io, json, sys
from itwinai_lightning.cli.main import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(["tune", *argv])
            code = 0
        except SystemExit as exc:
            code = exc.code
    out.append({"code": code, "stderr": err.getvalue()})
ray_imported = any(m == "ray" or m.startswith("ray.") for m in sys.modules)
print(json.dumps({"results": out, "ray_imported": ray_imported}))
"""


def test_cli_rejects_bad_search_spaces_with_exit_2_before_ray(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    cases = {
        "unknown key": {"model.init_args.learning_rate": {"loguniform": [1e-4, 1e-1]}},
        "bad distribution": {"model.init_args.lr": {"gaussian": [0.0, 1.0]}},
        "low > high": {"model.init_args.lr": {"loguniform": [0.1, 0.001]}},
        "wrong value type": {"data.init_args.batch_size": {"choice": [32, "big"]}},
        "unknown section key": {"trainer.max_epoch": {"choice": [1, 2]}},
    }
    argvs = []
    for name, space in cases.items():
        search = tmp_path / f"{name.replace(' ', '_')}.yaml"
        search.write_text(json.dumps({"tune": {"search_space": space, "output_dir": str(tmp_path / "out")}}))
        argvs.append(["--config", str(TINY), "--config", str(search)])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(argvs)],
        env=python_env,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ray_imported"] is False
    expected = [
        "tune.search_space.model.init_args.learning_rate",
        "unknown distribution 'gaussian'",
        "low < high",
        "tune.search_space.data.init_args.batch_size (value 'big')",
        "tune.search_space.trainer.max_epoch",
    ]
    for result, needle in zip(report["results"], expected, strict=True):
        assert result["code"] == 2, result
        errors = [ln for ln in result["stderr"].splitlines() if "error" in ln.lower()]
        assert len(errors) == 1 and errors[0].startswith("itwinai-lightning: error: "), result["stderr"]
        assert needle in errors[0]
        assert "Traceback" not in result["stderr"]
    assert not (tmp_path / "out").exists()  # rejected input writes nothing, not even the config copies


def test_help_does_not_import_ray(python_env: dict[str, str]) -> None:
    code = (
        "import sys, itwinai_lightning\n"
        "from itwinai_lightning.tune import cli\n"
        "assert cli.main(['--help']) == 0\n"
        "print('ray' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=python_env, capture_output=True, text=True, timeout=120, check=True
    )
    assert "search_space" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "False"
