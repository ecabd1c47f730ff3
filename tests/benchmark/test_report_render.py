"""The HTML report in headless Chromium: fits the page, every figure loads, findings come first."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from itwinai_lightning.benchmark.report import build as report
from itwinai_lightning.benchmark.report import plots
from tests.benchmark import synthetic
from tests.helpers.engines import require

LAW_DDP = (8.0, 0.3, 0.5)
LAW_DS = (8.5, 0.5, 0.6)
WIDTH = 1300
#: appended to a copy of the page: what the browser laid out, written into the DOM that --dump-dom prints
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const heads = [...document.querySelectorAll('h2')].map(h => h.textContent.trim());
  document.body.setAttribute('data-probe', JSON.stringify({
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    narrowest: Math.min(...imgs.map(i => i.getBoundingClientRect().width)),
    heads: heads}));
});</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    require(found is not None, "headless Chromium", "apt-get install chromium")
    assert found is not None
    return found


def _browser(*args: str) -> str:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},3000", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_renders_in_chromium_fitting_the_page_with_every_figure(tmp_path: Path) -> None:
    import json

    grid = tmp_path / "grid"
    synthetic.make_grid(
        grid, {"hpc_ddp": LAW_DDP, "hpc_deepspeed": LAW_DS}, [1, 2, 4, 8], repetitions=3, noise=0.05
    )
    built = report.build([grid])
    page = built.files["html"].read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _browser("--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    match = re.search(r"data-probe=\"([^\"]+)\"", dom)
    assert match, dom[:500]
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    assert probe["overflow"] <= 0, f"the page is {probe['overflow']} px wider than a {WIDTH} px window"
    assert probe["images"] == probe["loaded"] == len(plots.PLOTS)
    assert probe["narrowest"] >= 500  # two figures per row at most: each readable
    heads = probe["heads"]
    assert heads.index("Findings") < heads.index("Results (median over repetitions)") < heads.index("Figures")
    # the header names the hardware and the workload before any figure
    header = page[: page.index("<h2>Findings")]
    assert "Synthetic CPU" in header and "Synthetic GPU" in header and "global batch 64" in header

    shot = tmp_path / "shot.png"
    _browser(f"--screenshot={shot}", built.files["html"].as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[1] == WIDTH and pixels.shape[0] >= 2000
    assert float(pixels[..., :3].std()) > 0.05  # drawn, not a blank page
    assert "time to target" in page and "MFU" in page


def test_findings_name_time_to_accuracy_and_mfu(tmp_path: Path) -> None:
    grid = tmp_path / "grid"
    synthetic.make_grid(grid, {"hpc_ddp": LAW_DDP}, [1, 2, 4], repetitions=1)
    built = report.build([grid])
    rows = {r.workers: r for r in built.rows}
    # every configuration reaches the worst best val_loss (0.5, at the second epoch) at the end of epoch 1
    for n, row in rows.items():
        expected = 0.5 + 2 * synthetic.epoch_time(n, LAW_DDP)
        assert row.time_to_target_s == pytest.approx(expected)
        assert row.mfu_pct == pytest.approx(
            100 * synthetic.FLOPS_PER_SAMPLE * row.samples_per_s / (synthetic.PEAK_FLOPS_PER_S * n), rel=1e-6
        )
    lines = report.recommendation_lines(built.recommendation, built.rows)
    assert any(line.startswith("Fastest to val_loss 0.5: hpc_ddp with 4 workers") for line in lines), lines


def test_a_cpu_report_with_rapl_energy_has_its_energy_figures_and_no_empty_box(tmp_path: Path) -> None:
    """CPU-only runs with RAPL energy and no profiling: the energy figures are drawn from the CPU energy;
    the breakdown (no profiling) is left out with one line saying why; every figure on the page has an
    image that loads."""
    import json

    grid = tmp_path / "grid"
    synthetic.make_grid(
        grid, {"hpc_ddp": LAW_DDP}, [1, 2, 4, 8], power_w_per_worker=None, profile=False,
        cpu_power_w_per_node=180.0,
    )  # fmt: skip
    built = report.build([grid])
    rows = {r.workers: r for r in built.rows}
    for n, row in rows.items():  # 180 W per node (one node up to 4 workers) times the epoch time
        watts = 180.0 * max(1, n // 4)
        assert row.energy_per_epoch_wh == pytest.approx(watts * synthetic.epoch_time(n, LAW_DDP) / 3600)
        assert row.energy_per_sample_wh == pytest.approx(row.energy_per_epoch_wh / 4096)
        assert row.energy_to_target_wh == pytest.approx(row.energy_per_epoch_wh * 2)  # reached at epoch 2
    why = "no profiling data (run the benchmark with --benchmark.profile true)"
    assert built.left_out == {"breakdown": why}
    drawn = [name for name in plots.PLOTS if name != "breakdown"]
    assert sorted(p.stem for p in (grid / "plots").glob("*.png")) == sorted(drawn)
    assert json.loads(built.files["json"].read_text())["figures_left_out"] == built.left_out
    page = built.files["html"].read_text()
    assert "<b>Computation vs communication</b>: no profiling data" in page
    assert "no energy recorded" not in page
    assert "Least energy per sample: hpc_ddp" in page
    probed = tmp_path / "probed.html"
    figures = "document.querySelectorAll('figure').length"
    probe = PROBE.replace("images: imgs.length,", f"images: imgs.length, figures: {figures},")
    probed.write_text(page.replace("</body>", probe + "</body>"))
    dom = _browser("--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    match = re.search(r"data-probe=\"([^\"]+)\"", dom)
    assert match, dom[:500]
    seen = json.loads(match.group(1).replace("&quot;", '"'))
    assert seen["figures"] == seen["images"] == seen["loaded"] == len(drawn)
    assert seen["overflow"] <= 0
