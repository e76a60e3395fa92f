"""Static HTML reports: every <img> resolves from disk, and a headless Chromium render loads
every image and shows the reproduce report's summary first, on one screen (skipped without
Chromium unless CAC_JAX_REQUIRE_SYSTEM_TOOLS=1)."""

import os
import pathlib
import subprocess
import types

import numpy as np

from cac_jax import labels
from cac_jax.evaluation import dataset, html_report, plots
from cac_jax.evaluation import gates as gates_lib
from cac_jax.scoring import overlay
from cac_jax.studies import report
from tests import system_tools, test_evaluate

SCREEN = (1280, 1024)  # the window the browser test renders in (CSS pixels)


def _chromium():
  return system_tools.find(("chromium", "chromium-browser", "google-chrome"), "chromium")


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


def _chromium_dom(page):
  """The DOM of `page` after a headless Chromium render in a `SCREEN`-sized window."""
  proc = subprocess.run(
    [
      _chromium(),
      "--headless",
      f"--window-size={SCREEN[0]},{SCREEN[1]}",
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
  return proc.stdout


def _attribute(dom, name):
  """The integer value of the body attribute `name` the page's script set."""
  marker = f'{name}="'
  assert marker in dom, dom[-2000:]
  return int(dom.split(marker, 1)[1].split('"', 1)[0])


def _chromium_broken_images(page):
  """Number of images that did not load, read from the page's data-broken-images attribute."""
  return _attribute(_chromium_dom(page), "data-broken-images")


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


def test_report_renders_in_headless_chromium(tmp_path):
  page = _evaluation_report(tmp_path)
  assert _chromium_broken_images(page) == 0
  # The check can fail: a missing image is counted.
  os.remove(page.parent / "bland_altman.png")
  assert _chromium_broken_images(page) == 1


def _scan(f1, ref_mm3):
  """A per-scan entry as `experiment.score_tests` gives it (total coronary metrics only)."""
  total = types.SimpleNamespace(f1=f1, has_reference=ref_mm3 > 0)
  return {
    "id": f"s{ref_mm3:g}",
    "ref_mm3": ref_mm3,
    "pred_mm3": ref_mm3 * f1,
    "metrics": {"total": total},
  }


def _reproduce_report(tmp_path):
  """A reproduce report with its summary, from made-up per-scan results of every summary column."""
  out = tmp_path / "results"
  f1 = {"NCCT test": 0.8, "CCTA no adaptation": 0.3, "CCTA Ladv+Lcls": 0.5, "CCTA oracle": 0.7}
  f1["CCTA Ladv+Lcls+FP red."] = 0.6
  per_scan = {c: [_scan(v, 0.0), _scan(v - 0.1, 20.0), _scan(v + 0.1, 50.0)] for c, v in f1.items()}
  gates = [
    gates_lib.Gate("G1", "source at home", "F1 0.80 [0.70, 0.90]", "F1 >= 0.60", True),
    gates_lib.Gate("G2", "domain gap", "drop 0.50 [0.40, 0.60]", "drop >= 0.25", True),
    gates_lib.Gate("G3", "oracle gain", "gain 0.10 [-0.10, 0.30]", "gain >= 0.25", False),
  ]
  results = [{"seed": 0, "gates": gates, "per_scan": per_scan}]
  shares = {"total": {report.SUMMARY_SHARE: gates_lib.GapShare(0.4, 0.1, 0.7, 16)}}
  hu = np.full((6, 64, 64), -50.0)
  ref = np.zeros(hu.shape, np.int32)
  ref[4, 20:24, 30:34] = labels.LAD
  ref[1, 40:42, 10:12] = labels.RCA
  assert plots.calcium_slice(ref) == 4
  figures = {
    "overlay_side_by_side": plots.overlay_row(
      hu, {"reference": ref, "no adaptation": 0 * ref, "adapted": ref}, 4, str(out / "row.png")
    ),
    "bland_altman_adapted": plots.bland_altman_plot(
      [1.0, 2.0, 3.0], [1.5, 2.0, 2.5], str(out / "ba.png")
    ),
  }
  path = str(out / "report.html")
  summary, f1_png = report.summary_html(results, {}, shares, figures, path)
  md = "## Benchmark gates\n\n| gate | value | passed |\n|---|---|---|\n| G1 | 0.7 | yes |\n"
  page = html_report.reproduce_report(path, md, figures, per_scan, summary=summary)
  return page, f1_png


def test_reproduce_report_opens_with_the_summary(tmp_path):
  page, f1_png = _reproduce_report(tmp_path)
  text = open(page, encoding="utf-8").read()
  assert text.index('id="summary"') < text.index("Full tables") < text.index("<h2>Benchmark gates")
  summary = text[text.index('id="summary"') : text.index("Full tables")]
  assert summary.count("✔ PASS") == 2 and summary.count("✘ FAIL") == 1
  assert "F1 0.80 [0.70, 0.90]" in summary and "<strong>0.40 [0.10, 0.70]</strong>" in summary
  srcs = [os.path.basename(s) for s in html_report.image_sources(summary)]
  assert srcs == ["f1_per_column.png", "row.png"] and os.path.getsize(f1_png) > 1000
  for label, col in report.SUMMARY_F1:
    assert f"{label}: {col}" in summary and label in report.summary_f1(
      [{"per_scan": {c: [_scan(0.5, 1.0)] for _, c in report.SUMMARY_F1}}]
    )


def test_reproduce_report_summary_fits_one_screen_in_chromium(tmp_path):
  page, _ = _reproduce_report(tmp_path)
  dom = _chromium_dom(pathlib.Path(page))
  assert _attribute(dom, "data-broken-images") == 0
  assert 0 < _attribute(dom, "data-summary-bottom") <= SCREEN[1]
