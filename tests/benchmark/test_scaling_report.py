"""Report and scaling model against synthetic RunRecords generated from a known law (fast, no training)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from itwinai_lightning import records
from itwinai_lightning.benchmark.report import build as report
from itwinai_lightning.benchmark.report import scaling
from itwinai_lightning.benchmark.report.build import recommendation_lines
from itwinai_lightning.benchmark.report.findings import recommend
from itwinai_lightning.benchmark.report.plots import PLOTS
from itwinai_lightning.benchmark.report.table import Row
from itwinai_lightning.benchmark.settings import parse
from itwinai_lightning.errors import UserError
from tests.benchmark import synthetic

LAW_DDP = (120.0, 4.0, 3.0)  # compute a [s], communication b [s per log2 level], serial c [s]
LAW_DS = (130.0, 9.0, 5.0)


@pytest.mark.parametrize("mode", ["strong", "weak"])
def test_fit_recovers_known_law_exactly(mode: str) -> None:
    workers = [1, 2, 4, 8, 16, 32]
    times = [synthetic.epoch_time(n, LAW_DDP, mode) for n in workers]
    model = scaling.fit(workers, times, mode)
    assert (model.compute, model.communication, model.serial) == pytest.approx(LAW_DDP, rel=1e-9)
    assert model.r2 == pytest.approx(1.0)
    assert not model.underdetermined
    assert model.predict([64])[0] == pytest.approx(synthetic.epoch_time(64, LAW_DDP, mode))
    assert model.is_extrapolation(64) and not model.is_extrapolation(32)


def test_fit_recovers_law_from_noisy_records(tmp_path: Path) -> None:
    synthetic.make_grid(tmp_path, {"hpc_ddp": LAW_DDP}, [1, 2, 4, 8, 16], repetitions=3, noise=0.01, seed=7)
    built = report.build([tmp_path])
    model = built.models[("hpc_ddp", "torchrun", "strong")]
    assert model.compute == pytest.approx(LAW_DDP[0], rel=0.05)
    assert model.communication == pytest.approx(LAW_DDP[1], rel=0.25)
    assert model.r2 > 0.99
    # optimum of a/N + b log2 N is N* = a ln2 / b
    assert model.optimal_workers() == pytest.approx(LAW_DDP[0] * 0.6931 / LAW_DDP[1], rel=0.3)


def test_fit_with_two_sizes_is_flagged_and_non_negative() -> None:
    model = scaling.fit([1, 2], [10.0, 6.0])
    assert model.underdetermined and model.serial == 0.0
    assert model.compute == pytest.approx(10.0) and model.communication == pytest.approx(
        1.0
    )  # a=T(1), b=T(2)-a/2
    # super-linear measurements must not produce a negative communication time
    model = scaling.fit([1, 2, 4], [10.0, 4.0, 2.0])
    assert min(model.compute, model.communication, model.serial) >= 0.0


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_report_table_recommendation_and_html(tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    recs = synthetic.make_grid(
        grid, {"hpc_ddp": LAW_DDP, "hpc_deepspeed": LAW_DS}, [1, 2, 4, 8], repetitions=2
    )
    # one failed run with its error is listed, and does not disturb the table
    failed = grid / "horovod-w2-r0"
    records.amend(
        failed,
        fields={"status": "failed", "error": "'horovod' is not installed"},
        section="benchmark",
        section_values={"strategy": "horovod", "workers": 2, "launcher": "torchrun"},
    )
    built = report.build([grid], out=tmp_path / "out", threshold_pct=70.0)
    rows = {(r["strategy"], int(r["workers"])): r for r in _csv(built.files["summary_csv"])}
    for strategy, law in (("hpc_ddp", LAW_DDP), ("hpc_deepspeed", LAW_DS)):
        t1 = synthetic.epoch_time(1, law)
        for n in (1, 2, 4, 8):
            row = rows[(strategy, n)]
            tn = synthetic.epoch_time(n, law)
            assert float(row["epoch_time_s"]) == pytest.approx(tn)
            assert float(row["speedup"]) == pytest.approx(t1 / tn)
            assert float(row["efficiency_pct"]) == pytest.approx(100 * t1 / tn / n)
            assert int(row["repetitions"]) == 2
            # 250 W per worker for tn seconds, 4096 samples per epoch
            assert float(row["energy_per_epoch_wh"]) == pytest.approx(250 * n * tn / 3600)
            assert float(row["energy_per_sample_wh"]) == pytest.approx(250 * n * tn / 3600 / 4096)
    assert rows[("horovod", 2)]["failed"] == "1" and rows[("horovod", 2)]["epoch_time_s"] == ""
    assert len(recs) == 16
    rec = built.recommendation
    fastest = min(((s, n) for (s, n) in rows if s != "horovod"), key=lambda k: float(rows[k]["epoch_time_s"]))
    assert (rec["fastest"]["strategy"], rec["fastest"]["workers"]) == fastest
    assert (rec["least_energy"]["strategy"], rec["least_energy"]["workers"]) == ("hpc_ddp", 1)
    drops = {d["strategy"]: d["below_at_workers"] for d in rec["efficiency_drop"]}
    for strategy, law in (("hpc_ddp", LAW_DDP), ("hpc_deepspeed", LAW_DS)):
        t1 = synthetic.epoch_time(1, law)
        expected = next(n for n in (2, 4, 8) if 100 * t1 / synthetic.epoch_time(n, law) / n < 70)
        assert drops[strategy] == expected
    page = built.files["html"].read_text()
    assert page.count("data:image/png;base64,") == len(PLOTS)
    assert "src='http" not in page and "<script" not in page
    assert "extrapolation" in page.lower() and "horovod" in page and "is not installed" in page
    for name in PLOTS:
        assert built.files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads(built.files["json"].read_text())
    assert len(payload["models"]) == 2 and payload["recommendation_text"][0].startswith("Fastest:")


def test_report_merges_directories_and_cli(tmp_path: Path, python_env: dict[str, str]) -> None:
    synthetic.make_grid(tmp_path / "siteA", {"hpc_ddp": LAW_DDP}, [1, 2], launcher="srun")
    synthetic.make_grid(tmp_path / "siteB", {"hpc_ddp": LAW_DDP}, [4, 8], launcher="srun")
    cmd = [sys.executable, "-m", "itwinai_lightning", "benchmark", "report", str(tmp_path / "siteA"),
           str(tmp_path / "siteB"), "--out", str(tmp_path / "merged")]  # fmt: skip
    done = subprocess.run(cmd, env=python_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Fastest: hpc_ddp with 8 workers" in done.stdout
    rows = _csv(tmp_path / "merged" / "benchmark_summary.csv")
    assert [int(r["workers"]) for r in rows] == [1, 2, 4, 8]
    assert float(rows[-1]["speedup"]) == pytest.approx(
        synthetic.epoch_time(1, LAW_DDP) / synthetic.epoch_time(8, LAW_DDP)
    )
    bad = subprocess.run([*cmd[:5], str(tmp_path / "nothing-here")], env=python_env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "nothing-here" in bad.stderr


def test_settings_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"benchmark\.launcher"):
        parse({"launcher": "qsub", "batch_size": 16}, [])
    with pytest.raises(UserError, match="does not divide by 3 workers"):
        parse({"workers": [1, 3], "batch_size": 16}, [])
    with pytest.raises(UserError, match=r"benchmark\.wrkers"):
        parse({"wrkers": [1]}, [])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  init_args:\n    batch_size: 32\n")
    s = parse({"workers": [1, 2, 4]}, ["--config", str(cfg)])
    assert [s.per_worker_batch(n) for n in s.workers] == [32, 16, 8]
    weak = parse({"workers": [1, 2], "scaling": "weak"}, ["--config", str(cfg), "--data.batch_size", "8"])
    assert [weak.per_worker_batch(n) for n in weak.workers] == [8, 8]


def test_model_needs_three_sizes_and_carries_an_uncertainty_band(tmp_path: Path) -> None:
    two = tmp_path / "two"
    synthetic.make_grid(two, {"hpc_ddp": LAW_DDP}, [1, 2], repetitions=3, noise=0.02, seed=3)
    built = report.build([two])
    assert built.models == {}
    (note,) = built.notes
    assert "2 distinct worker count(s) measured" in note and "at least 3" in note
    assert note in built.files["html"].read_text()

    three = tmp_path / "three"
    synthetic.make_grid(three, {"hpc_ddp": LAW_DDP}, [1, 2, 4], repetitions=3, noise=0.02, seed=3)
    built = report.build([three])
    model = built.models[("hpc_ddp", "torchrun", "strong")]
    assert len(model.samples) == scaling.BOOTSTRAP and model.band_note == ""
    inside_lo, inside_hi = model.band([4])
    outside_lo, outside_hi = model.band([16])
    assert inside_lo[0] <= model.predict([4])[0] <= inside_hi[0]
    assert outside_lo[0] <= model.predict([16])[0] <= outside_hi[0]
    assert outside_hi[0] - outside_lo[0] > inside_hi[0] - inside_lo[0] > 0  # extrapolation is less certain
    # the true law lies inside the band where it was measured (2 % noise)
    assert inside_lo[0] <= synthetic.epoch_time(4, LAW_DDP) <= inside_hi[0]
    ext = model.as_dict()
    assert ext["extrapolated_workers"] == 8 and isinstance(ext["extrapolated_band_s"], list)
    assert "90 % band" in built.files["html"].read_text()
    # the same records give the same band (seeded bootstrap)
    assert report.build([three]).models[("hpc_ddp", "torchrun", "strong")].band([16])[1][0] == outside_hi[0]
    # as many points as coefficients: no residuals, and the model says so instead of a zero-width band
    exact = scaling.fit([1, 2, 4], [synthetic.epoch_time(n, LAW_DDP) for n in (1, 2, 4)])
    assert exact.samples == () and "no band" in exact.band_note


def _slow_down(run_dir: Path, factor: float) -> None:
    rec = records.load(run_dir)
    for entry in rec["epochs"]:
        entry["wall_time_s"] *= factor
    records.save(rec, run_dir)


def test_super_linear_and_noisy_points_are_flagged_with_a_cause(tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    synthetic.make_grid(grid, {"hpc_ddp": LAW_DDP}, [1, 2, 4], repetitions=3)
    # a slow baseline: every 1-worker repetition took twice as long -> 2 and 4 workers look super-linear
    for rep in range(3):
        _slow_down(grid / f"hpc_ddp-w1-r{rep}", 2.0)
    # one noisy repetition at 4 workers: 60 % slower
    _slow_down(grid / "hpc_ddp-w4-r2", 1.6)
    built = report.build([grid])
    rows = {r.workers: r for r in built.rows}
    assert rows[1].flags == ""
    assert rows[2].efficiency_pct is not None and rows[2].efficiency_pct > 100
    assert "above 100 %" in rows[2].flags and "slow baseline (1 worker(s)" in rows[2].flags
    assert "spread" in rows[4].flags and "over 3 repetitions" in rows[4].flags
    page = built.files["html"].read_text()
    assert "Check these figures" in page and "above 100 %" in page
    csv_rows = {int(r["workers"]): r for r in _csv(built.files["summary_csv"])}
    assert csv_rows[2]["flags"] == rows[2].flags


def test_epoch_time_leaves_out_warm_up_and_validation(tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    synthetic.make_grid(grid, {"hpc_ddp": LAW_DDP}, [1, 2, 4], repetitions=1)
    for n in (1, 2, 4):  # a slow first epoch (start-up) and 2 s of validation in every epoch
        run_dir = grid / f"hpc_ddp-w{n}-r0"
        rec = records.load(run_dir)
        for entry in rec["epochs"]:
            entry["train_time_s"] = entry["wall_time_s"]
            entry["val_time_s"] = 2.0
            entry["wall_time_s"] += 2.0
        rec["epochs"][0]["train_time_s"] += 30.0
        records.save(rec, run_dir)
    rows = {r.workers: r for r in report.build([grid]).rows}
    for n in (1, 2, 4):
        assert rows[n].epoch_time_s == pytest.approx(synthetic.epoch_time(n, LAW_DDP))
        assert rows[n].val_time_s == pytest.approx(2.0)
        assert "warm-up" not in rows[n].flags


def test_a_verdict_the_repetitions_straddle_is_called_uncertain(tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    law = (8.0, 0.0, 3.0)  # efficiency at 2 workers: (8 + 3) / (2 * (4 + 3)) = 79 %
    synthetic.make_grid(grid, {"hpc_ddp": law}, [1, 2], repetitions=3)
    _slow_down(grid / "hpc_ddp-w2-r2", 1.3)  # one slow repetition: 60 %, below the 70 % threshold
    built = report.build([grid])
    (drop,) = built.recommendation["efficiency_drop"]
    assert drop["below_at_workers"] is None  # the median stays above the threshold ...
    (uncertain,) = drop["uncertain_at"]  # ... but not every repetition does
    assert uncertain["workers"] == 2 and uncertain["low_pct"] < 70 <= uncertain["high_pct"]
    lines = report.recommendation_lines(built.recommendation, built.rows)
    assert any("verdict is uncertain" in line and "2 workers span 60-79 %" in line for line in lines), lines


def test_points_run_repetition_by_repetition(tmp_path: Path) -> None:
    from itwinai_lightning.benchmark.runner import GridRunner

    settings = parse({"workers": [1, 2], "batch_size": 16, "repetitions": 2, "strategies": ["hpc_ddp"]}, [])
    order = [(p.workers, p.repetition) for p in GridRunner(settings, []).points()]
    assert order == [(1, 0), (2, 0), (1, 1), (2, 1)]  # a drift of the machine's load touches all alike


def test_benchmark_help_lists_every_option_with_type_default_and_meaning(python_env: dict[str, str]) -> None:
    import json
    import subprocess
    import sys
    import textwrap

    from itwinai_lightning.benchmark.settings import DEFAULTS

    code = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from itwinai_lightning.cli.main import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                main(["benchmark", "--help"])
            except SystemExit as stop:
                code = stop.code
        heavy = [m for m in ("ray", "mlflow", "wandb", "deepspeed", "horovod") if m in sys.modules]
        print(json.dumps([code, heavy, out.getvalue()]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=python_env, capture_output=True, text=True, timeout=120
    )
    exit_code, heavy, text = json.loads(proc.stdout.strip().splitlines()[-1])
    assert exit_code == 0 and heavy == []  # --help imports none of the heavy backends
    for key in DEFAULTS:
        assert f"--benchmark.{key}" in text, key
    assert "process counts, the other axis. (type: list[int], default: [1, 2])" in " ".join(text.split())
    assert "--config" in text


def _row(workers: int, epoch_s: float, reps: int = 1, spread: float = 0.0, eff: float | None = None) -> Row:
    return Row("hpc_ddp", "local", "weak", workers, reps, 0, epoch_s, epoch_s - spread, epoch_s + spread,
               efficiency_pct=eff)  # fmt: skip


def test_one_repetition_names_no_winner_inside_the_noise() -> None:
    rows = [_row(1, 2.10), _row(2, 1.98)]
    rec = recommend(rows)
    assert rec["fastest"]["single_repetition"] and [t["workers"] for t in rec["fastest"]["tied"]] == [1]
    (line,) = [ln for ln in recommendation_lines(rec, rows) if ln.startswith("Fastest:")]
    assert line.startswith("Fastest: no clear winner (one repetition: no spread measured)")
    assert "1.98 s" in line and "2.1 s" in line and "more repetitions" in line
    # far apart, one repetition: a winner, and the missing spread is said
    rows = [_row(1, 4.0), _row(2, 1.98)]
    (line,) = [ln for ln in recommendation_lines(recommend(rows), rows) if ln.startswith("Fastest:")]
    assert line == "Fastest: hpc_ddp with 2 workers (1.98 s per epoch) (one repetition: no spread measured)."
    # repetitions whose ranges overlap are a tie too; disjoint ranges name the winner
    assert recommend([_row(1, 2.1, 3, 0.2), _row(2, 2.0, 3, 0.2)])["fastest"]["tied"]
    assert not recommend([_row(1, 2.1, 3, 0.01), _row(2, 2.0, 3, 0.01)])["fastest"]["tied"]


def test_efficiency_above_100_percent_is_never_summarised_as_good() -> None:
    rows = [_row(1, 4.0, eff=100.0), _row(2, 1.46, eff=137.0), _row(4, 0.53, eff=189.0)]
    lines = recommendation_lines(recommend(rows, 70.0), rows)
    assert not any("stays above" in ln for ln in lines)
    (line,) = [ln for ln in lines if "above 100 %" in ln]
    assert "137 % at 2, 189 % at 4 workers" in line and "baseline" in line
