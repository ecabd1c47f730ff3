"""Typos in keys, class paths, callbacks and strategy names: one line, exit 2, and a did-you-mean."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from itwinai_lightning.cli.main import main

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "quickstart.yaml")


def _error(*args: str) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
        main(["fit", "--config", QUICK, *args])
    assert stop.value.code == 2
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("itwinai-lightning:")]
    assert len(lines) == 1 and lines[0].startswith("itwinai-lightning: error: "), err.getvalue()
    return lines[0]


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["--trainer.max_epocsh", "2"], "trainer.max_epochs"),
        (["--trainr.max_epochs", "2"], "trainer.max_epochs"),
        (
            ["--model.class_path", "itwinai_lightning.demo.SpectrogramDenoisr"],
            "itwinai_lightning.demo.SpectrogramDenoiser",
        ),
        (["--model.init_args.widht", "3"], "width"),
        (["--data.init_args.batch_siz", "3"], "batch_size"),
        (["--trainer.callbacks+=TimingMonitr"], "TimingMonitor"),
        (["--trainer.strategy", "hpc_dpp"], "hpc_ddp"),
        # a class path on the command line gets the same suggestion as in YAML
        (
            ["--model", "itwinai_lightning.demo.SpectrogramDenoisr"],
            "itwinai_lightning.demo.SpectrogramDenoiser",
        ),
        # an abbreviated option is refused, not silently taken as a prefix of max_epochs
        (["--trainer.max_epoch", "1"], "trainer.max_epochs"),
    ],
)
def test_a_typo_gets_one_line_with_a_suggestion(args: list[str], suggestion: str) -> None:
    assert _error(*args).endswith(f"(did you mean '{suggestion}'?)")


def test_a_typo_in_a_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_epocsh: 2\n")
    line = _error("--config", str(typo))
    assert f"(in {typo})" in line and line.endswith("(did you mean 'trainer.max_epochs'?)")


def test_no_suggestion_when_nothing_is_close() -> None:
    assert "did you mean" not in _error("--trainer.zzzzzz", "2")


def test_itwinai_cli_is_a_module_level_class_users_subclass(tmp_path: Path) -> None:
    from itwinai_lightning.cli.lightning import ItwinaiCLI

    class MyCLI(ItwinaiCLI):
        def add_arguments_to_parser(self, parser):  # type: ignore[no-untyped-def]
            parser.add_argument("--experiment_tag", type=str, default="none")

    cli = MyCLI(
        args=["--config", QUICK, "--experiment_tag", "abc", "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )
    assert cli.config["experiment_tag"] == "abc" and cli.trainer.max_epochs == 12
    # its errors are the package's one-line UserErrors, without patching anything at run time
    from itwinai_lightning.errors import UserError

    with pytest.raises(UserError, match="widht"):
        MyCLI(args=["--config", QUICK, "--model.init_args.widht", "3"], run=False)


def test_a_constructor_user_error_that_jsonargparse_wraps_is_the_one_line() -> None:
    from itwinai_lightning.cli.lightning import user_error_in
    from itwinai_lightning.errors import UserError, collecting

    with collecting() as created:
        original = UserError("srun started 2 tasks without --ntasks-per-node")
    wrapped = ValueError(f"Does not validate against any of the Union subtypes\n  - {original}")
    assert created == [original]  # no chain: jsonargparse raises a new error outside the except block
    assert user_error_in(wrapped, created) is original
    assert user_error_in(ValueError("something else"), created) is None


def test_a_model_file_in_the_working_directory_says_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mlp.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    line = _error("--model", "mlp.MLP")
    assert "mlp is in the working directory but not importable: run with PYTHONPATH=." in line


def test_test_on_a_module_without_test_step_is_one_line(tmp_path: Path) -> None:
    err = io.StringIO()
    args = ["test", "--config", QUICK, "--ckpt_path", "module", "--model",
            "tests.foundation.weights.NoTestStep", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    (line,) = [ln for ln in err.getvalue().splitlines() if ln.startswith("itwinai-lightning:")]
    assert line == (
        "itwinai-lightning: error: test: NoTestStep defines no test_step(); add one to the module, "
        "or run validate instead"
    )
