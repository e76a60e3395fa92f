"""Static HTML reports: every <img> resolves from disk, and (when Chromium is installed) a
headless Chromium render loads every image."""

import os
import shutil
import subprocess

import numpy as np
import pytest

from cac_jax.evaluation import dataset, html_report, plots
from cac_jax.scoring import overlay
from tests import test_evaluate

CHROMIUM = next(
  (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
  None,
)


def _evaluation_report(tmp_path):
  manifest, preds = test_evaluate._make_dataset(tmp_path)  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  for cid in ("a", "b"):  # overlays as launch.score writes them (none for case c)
    overlay.overlay_png(
      rng.normal(0, 50, (3, 20, 20)),
      np.zeros((3, 20, 20), np.int32),
      str(preds / cid / "overlay.png"),
    )
  results = dataset.evaluate_dataset(str(preds), str(manifest), split="test")
  out = tmp_path / "report"
  dataset.write_report(results, str(out), predictions_dir=str(preds))
  return out / "report.html"


def _chromium_broken_images(page):
  """Number of images that did not load, read from the page's data-broken-images attribute."""
  proc = subprocess.run(
    [
      CHROMIUM,
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--allow-file-access-from-files",
      "--virtual-time-budget=5000",
      "--dump-dom",
      page.as_uri(),
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  dom = proc.stdout
  marker = 'data-broken-images="'
  assert marker in dom, dom[-2000:]
  return int(dom.split(marker, 1)[1].split('"', 1)[0])


def test_evaluation_report_images_resolve(tmp_path):
  page = _evaluation_report(tmp_path)
  text = page.read_text(encoding="utf-8")
  srcs = html_report.image_sources(text)
  assert len(srcs) == 3  # Bland-Altman + the overlays of a and b
  for src in srcs:
    assert not os.path.isabs(src) and (page.parent / src).is_file(), src
  assert "<table>" in text and "Per scan" in text and html_report.NOTICE in text
  assert "<td>a</td>" in text and "<td>c</td>" in text


def test_reproduce_report(tmp_path):
  figs = {}
  for name in ("bland_altman_adapted", "overlay_adapted"):
    figs[name] = plots.bland_altman_plot(
      [1.0, 2.0, 3.0], [1.5, 2.0, 2.5], str(tmp_path / "results" / f"{name}.png")
    )
  per_scan = {
    "CCTA a": [
      {"id": "x", "ref_mm3": 10.0, "pred_mm3": 12.5},
      {"id": "y", "ref_mm3": 0.0, "pred_mm3": 3.0},
    ],
    "CCTA b": [
      {"id": "x", "ref_mm3": 10.0, "pred_mm3": 9.0},
      {"id": "y", "ref_mm3": 0.0, "pred_mm3": 0.0},
    ],
    "NCCT a": [{"id": "z", "ref_mm3": 5.0, "pred_mm3": 5.0}],
  }
  md = "## Benchmark gates\n\n| gate | value | passed |\n|---|---|---|\n| G1 | 0.7 | yes |\n\nsome `code` text\n"
  page = html_report.reproduce_report(str(tmp_path / "results" / "report.html"), md, figs, per_scan)
  text = open(page, encoding="utf-8").read()
  assert (
    "<h2>Benchmark gates</h2>" in text and "<td>G1</td>" in text and "<code>code</code>" in text
  )
  assert text.count("<h2>Per scan") == 2  # CCTA columns share one table, NCCT gets its own
  assert "<th>CCTA a</th><th>CCTA b</th>" in text and "<td>12.5</td>" in text
  assert [os.path.basename(s) for s in html_report.image_sources(text)] == [
    "bland_altman_adapted.png",
    "overlay_adapted.png",
  ]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
  page = _evaluation_report(tmp_path)
  assert _chromium_broken_images(page) == 0
  # The check can fail: a missing image is counted.
  os.remove(page.parent / "bland_altman.png")
  assert _chromium_broken_images(page) == 1
