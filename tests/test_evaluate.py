"""End-to-end: launch.evaluate on 3 tiny synthetic cases written with SimpleITK."""

import csv
import math
import os
import subprocess
import sys

from matplotlib import image as mimage
import numpy as np
import pytest
import SimpleITK as sitk

from cac_jax.evaluation import dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACING_XYZ = (0.8, 0.8, 2.0)  # voxel volume 1.28 mm³
VOX = 0.8 * 0.8 * 2.0
SHAPE = (4, 16, 16)  # (z, y, x)


def _write(array, path, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = sitk.GetImageFromArray(array)
  img.SetSpacing(SPACING_XYZ)
  img.SetOrigin((-10.0, 5.0, 20.0))
  img.SetDirection(direction)
  sitk.WriteImage(img, str(path))


def _make_dataset(root):
  """Cases a (perfect), b (RCA partly found + LCX FP, RAS-oriented file), c (no reference, FP)."""
  cases = {}
  ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
  ref[1, 4:6, 4:6] = 8  # LAD, 4 voxels
  pred[1, 4:6, 4:6] = 8
  ref[2, 10, 10:13] = 15  # aorta: ignored by the coronary metrics
  pred[2, 10, 10:13] = 15
  cases["a"] = (ref, pred, (1, 0, 0, 0, 1, 0, 0, 0, 1))
  ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
  ref[2, 8, 3:6] = 10  # RCA, 3 voxels
  pred[2, 8, 3:5] = 10  # 2 TP, 1 FN
  pred[0, 1, 1] = 9  # LCX FP voxel
  cases["b"] = (ref, pred, (-1, 0, 0, 0, -1, 0, 0, 0, 1))
  ref, pred = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
  pred[3, 2, 2:4] = 8  # 2 FP voxels, no reference calcium
  cases["c"] = (ref, pred, (1, 0, 0, 0, 1, 0, 0, 0, 1))
  rows = []
  for cid, (ref, pred, direction) in cases.items():
    hu = np.full(SHAPE, 40, np.int16)
    hu[(ref > 0) | (pred > 0)] = 450
    _write(hu, root / "data" / "images" / f"{cid}.nii.gz", direction)
    _write(ref, root / "data" / "labels" / f"{cid}.nii.gz", direction)
    _write(pred, root / "preds" / cid / "calcium_labels.nii.gz", direction)
    rows.append([cid, f"images/{cid}.nii.gz", f"labels/{cid}.nii.gz", "", "", "ccta", "test"])
  # an unlabelled test case and a train case: skipped / filtered out
  _write(np.zeros(SHAPE, np.int16), root / "data" / "images" / "u.nii.gz")
  rows.append(["u", "images/u.nii.gz", "", "", "", "ccta", "test"])
  rows.append(["t", "images/t.nii.gz", "labels/t.nii.gz", "", "", "ncct", "train"])
  manifest = root / "data" / "manifest.csv"
  with open(manifest, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "image", "label", "heart_mask", "aorta_mask", "domain", "split"])
    w.writerows(rows)
  return manifest, root / "preds"


def _evaluate(preds, manifest, out, *extra):
  """`launch.evaluate` on the test split of `manifest` with predictions `preds`, report in `out`."""
  return _run(
    "--predictions",
    str(preds),
    "--manifest",
    str(manifest),
    "--output_dir",
    str(out),
    "--split",
    "test",
    *extra,
  )


def _run(*args):
  return subprocess.run(
    [sys.executable, "-m", "launch.evaluate", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=120,
  )


def test_evaluate_dataset_library(tmp_path):
  manifest, preds = _make_dataset(tmp_path)
  res = dataset.evaluate_dataset(str(preds), str(manifest), split="test")
  assert [c.case_id for c in res.cases] == ["a", "b", "c"] and res.unlabelled == ["u"]
  total = res.summary["total"]
  # sensitivity: a = 1, b = 2/3, c undefined -> mean 5/6 over n = 2 scans with reference calcium.
  assert total.n_with_reference == 2
  assert total.per_scan["sensitivity"].mean == pytest.approx(5 / 6)
  assert total.per_scan["sensitivity"].n == 2
  # FP volume: 0, 1 voxel, 2 voxels -> mean 1 voxel = 1.28 mm³.
  assert total.per_scan["fp_mm3"].mean == pytest.approx(VOX)
  # F1: a 1, b 2·2/(2·2 + 1 + 1) = 2/3, c 0 (FP only) -> mean 5/9.
  assert total.per_scan["f1"].mean == pytest.approx(5 / 9)
  b = res.cases[1].metrics
  assert b["RCA"].tp_mm3 == pytest.approx(2 * VOX) and b["LCX"].fp_lesions == 1
  assert math.isnan(res.cases[2].metrics["total"].sensitivity)
  assert res.bland_altman is not None and res.bland_altman.n == 3


def test_reference_min_voxels_leaves_small_reference_components_out(tmp_path):
  manifest, preds = _make_dataset(tmp_path)
  # Case b's RCA reference is 3 voxels: kept with 2 (the authors' reference), dropped with 3.
  two = dataset.evaluate_dataset(str(preds), str(manifest), split="test", reference_min_voxels=2)
  three = dataset.evaluate_dataset(str(preds), str(manifest), split="test", reference_min_voxels=3)
  assert two.cases[1].metrics["RCA"].ref_mm3 == pytest.approx(3 * VOX)
  assert three.cases[1].metrics["RCA"].ref_mm3 == 0
  assert three.cases[0].metrics["LAD"].ref_mm3 == pytest.approx(4 * VOX)  # 4 voxels stay
  assert "at most 3 voxels" in dataset.results_markdown(three)
  assert "as labelled" in dataset.results_markdown(
    dataset.evaluate_dataset(str(preds), str(manifest), split="test")
  )


def test_drop_small_components_is_26_connected_over_all_classes():
  from cac_jax.evaluation import metrics

  ref = np.zeros((4, 6, 6), np.uint8)
  ref[1, 1, 1], ref[2, 2, 2] = 8, 9  # diagonal neighbours: one 2-voxel component
  ref[1, 4, 4] = 8  # alone
  ref[3, 4, 1:4] = 10  # 3 voxels
  out = metrics.drop_small_components(ref, 2)
  assert not out[:3].any() and (out[3, 4, 1:4] == 10).all() and out.dtype == ref.dtype
  np.testing.assert_array_equal(metrics.drop_small_components(ref, 0), ref)
  assert metrics.drop_small_components(ref, 1)[2, 2, 2] == 9  # the pair has 2 voxels: kept


def test_cli_end_to_end(tmp_path):
  manifest, preds = _make_dataset(tmp_path)
  out = tmp_path / "report"
  proc = _evaluate(preds, manifest, out)
  assert proc.returncode == 0, proc.stderr
  assert "| total | 2 |" in proc.stdout and "| LAD |" in proc.stdout
  md = (out / "results.md").read_text(encoding="utf-8")
  assert md == proc.stdout
  for name in ("total", "LAD", "LCX", "RCA"):
    assert f"| {name} |" in md
  with open(out / "results.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [r["case_id"] for r in rows] == ["a", "b", "c"]
  assert float(rows[1]["total_fp_mm3"]) == pytest.approx(VOX)
  assert rows[2]["total_sensitivity"] == "nan"
  img = mimage.imread(out / "bland_altman.png")
  assert img.shape[0] > 50 and float(img[..., :3].std()) > 0.01


def test_cli_missing_and_broken_predictions_are_left_out_and_named(tmp_path):
  manifest, preds = _make_dataset(tmp_path)
  os.remove(preds / "b" / "calcium_labels.nii.gz")
  out = tmp_path / "report"
  proc = _evaluate(preds, manifest, out)
  assert proc.returncode == 2, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert "1 of 3 case(s) left out" in errors[0] and "b: no prediction file" in errors[0]
  assert "--allow_missing" in errors[0]
  md = (out / "results.md").read_text(encoding="utf-8")
  assert "2 scans evaluated (1 left out" in md and "- b: no prediction file" in md
  with open(out / "results.csv", newline="", encoding="utf-8") as f:
    assert [r["case_id"] for r in csv.DictReader(f)] == ["a", "c"]  # not a row of zeros
  proc = _evaluate(preds, manifest, out, "--allow_missing")
  assert proc.returncode == 0, proc.stderr
  assert "- b: no prediction file" in (out / "results.md").read_text(encoding="utf-8")
  # 2 scans: Bland-Altman needs 3 -> noted in the report, figure still written.
  assert "Not computed: Bland-Altman analysis needs at least 3 scans" in proc.stdout
  assert (out / "bland_altman.png").is_file()
  # A truncated prediction is left out with its reason, also with --allow_missing.
  pred = preds / "a" / "calcium_labels.nii.gz"
  pred.write_bytes(pred.read_bytes()[:60])
  proc = _evaluate(preds, manifest, out, "--allow_missing")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
  assert "1 of 3 case(s) left out" in proc.stderr and "a: " in proc.stderr
  assert "b: no prediction" not in proc.stderr  # allowed
  md = (out / "results.md").read_text(encoding="utf-8")
  assert "1 scans evaluated (2 left out" in md and "- a: " in md and "calcium_labels" in md


def test_a_prediction_on_another_grid_is_left_out_with_the_reason(tmp_path):
  manifest, preds = _make_dataset(tmp_path)
  shifted = sitk.ReadImage(str(preds / "b" / "calcium_labels.nii.gz"))
  shifted.SetOrigin((0.0, 0.0, 0.0))  # same size and spacing, moved: not the image's grid
  sitk.WriteImage(shifted, str(preds / "b" / "calcium_labels.nii.gz"))
  res = dataset.evaluate_dataset(str(preds), str(manifest), split="test", allow_missing=True)
  assert [c.case_id for c in res.cases] == ["a", "c"] and list(res.broken) == ["b"]
  assert "calcium_labels.nii.gz: not on the same voxel grid as the scan" in res.broken["b"]
  assert "b: " in res.problems() and "- b: " in dataset.results_markdown(res)
  for cid in ("a", "c"):
    os.remove(preds / cid / "calcium_labels.nii.gz")
  with pytest.raises(ValueError, match="no labelled case with a usable prediction.*b: .*grid"):
    dataset.evaluate_dataset(str(preds), str(manifest), split="test")
