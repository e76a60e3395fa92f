"""Scoring pipeline and the `launch.score` CLI on phantoms (random tiny weights) and real data."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from cac_jax import checkpoints, labels, phantoms
from cac_jax.data import volume_io
from cac_jax.scoring import outputs, pipeline, postprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def config(tiny_config):
  return tiny_config


@pytest.fixture(scope="module")
def params(tiny_params):
  return tiny_params


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, params, config):
  return checkpoints.export_inference(tmp_path_factory.mktemp("ckpt") / "export", params, config)


@pytest.fixture(scope="module")
def ccta_case(config):
  return phantoms.generate_case("ccta", 3, config)


def _score_ccta(case, params, config, **kw):
  """`pipeline.score_scan` of a CCTA phantom with its heart and aorta masks (override in kw)."""
  kw = {"heart_mask": case.heart_mask, "aorta_mask": case.aorta_mask, **kw}
  return pipeline.score_scan(case.scan, params, config, domain="ccta", **kw)


def test_score_scan_ccta_detects_only_candidates(ccta_case, params, config):
  c = ccta_case

  def score(heart_filter):
    fp = postprocess.FPReductionSettings.from_config(
      config.scoring, region_growing=False, size_limits=False, heart_filter=heart_filter
    )
    return _score_ccta(c, params, config, fp_settings=fp)

  res = score(False)
  thr = res.report["threshold"]["threshold_hu"]
  # The ROI comes from the eroded aorta mask: its mean is the iodine lumen, not wall calcium.
  assert 200 < res.report["threshold"]["mean_hu"] < 700 and thr > res.report["threshold"]["mean_hu"]
  detected = res.classes > 0
  assert np.all(c.scan.hu[detected] >= thr)
  # Heart filter off (the ablation without FP reduction): the network sees every candidate.
  assert res.report["num_candidates"] == int((c.scan.hu >= thr).sum())
  assert res.report["domain"] == "ccta"
  json.dumps(res.report)  # serialisable
  # Heart filter on: inference is restricted to the heart dilated by 10 mm (the same candidates
  # the filter would keep), and nothing outside it is detected.
  region = postprocess.heart_region(c.heart_mask, c.scan.spacing, config.scoring.heart_dilation_mm)
  assert ((c.scan.hu >= thr) & ~region).any()  # the restriction is not vacuous
  res_h = score(True)
  assert res_h.report["num_candidates"] == int(((c.scan.hu >= thr) & region).sum())
  assert not np.any((res_h.raw_classes > 0) & ~region)
  inside = region & (c.scan.hu >= thr)
  # Same network outputs at the shared candidates (up to argmax near-ties from float reassociation).
  assert np.mean(res_h.raw_classes[inside] == res.classes[inside]) >= 0.99


def test_aorta_threshold_off_scores_ccta_at_130_hu(ccta_case, params, config):
  """--noaorta_threshold: CCTA candidates are every voxel >= 130 HU (contrast lumen included,
  the authors' scoring without FP reduction); the report keeps the ROI's threshold beside it."""
  c = ccta_case
  fp = postprocess.FPReductionSettings.from_config(
    config.scoring,
    region_growing=False,
    size_limits=False,
    heart_filter=False,
    aorta_threshold=False,
  )
  res = _score_ccta(c, params, config, fp_settings=fp)
  t = res.report["threshold"]
  assert t["threshold_hu"] == 130.0 and t["aorta_threshold_hu"] > 200.0
  assert res.report["num_candidates"] == int((c.scan.hu >= 130.0).sum())
  assert res.report["settings"]["aorta_threshold"] is False
  assert "aortic-lumen threshold off" in " ".join(res.report["warnings"])
  lumen = (c.scan.hu >= 130.0) & (c.scan.hu < t["aorta_threshold_hu"])
  assert lumen.sum() > 0.5 * res.report["num_candidates"]  # mostly contrast below the ROI's
  assert np.all(c.scan.hu[res.classes > 0] >= 130.0)
  # No aorta to be found: the fixed 130 HU needs none, so the scan is still scored.
  hu = np.where(c.scan.hu >= 130.0, 40.0, c.scan.hu).astype(np.float32)
  hu[tuple(slice(s // 2, s // 2 + 2) for s in hu.shape)] = 900.0  # one bright spot, no lumen
  res = pipeline.score_scan(c.scan.with_array(hu), params, config, domain="ccta", fp_settings=fp)
  t = res.report["threshold"]
  assert t["threshold_hu"] == 130.0 and t["aorta_threshold_hu"] is None
  assert not any("no aorta found" in w for w in res.report["warnings"])
  assert res.report["num_candidates"] == int((hu >= 130.0).sum())


def test_fp_reduction_only_removes_or_grows_within_threshold(ccta_case, params, config):
  c = ccta_case
  res = _score_ccta(c, params, config)
  thr = res.report["threshold"]["threshold_hu"]
  assert np.all(c.scan.hu[res.classes > 0] >= thr)
  # Size limits: no surviving lesion is larger than 500 mm^3.
  from scipy import ndimage

  lab, n = ndimage.label(res.classes > 0, structure=postprocess.CONNECTIVITY_6)
  if n:
    vols = np.bincount(lab.ravel())[1:] * c.scan.voxel_volume_mm3
    assert vols.max() <= 500 + 1e-6 and vols.min() >= 1 - 1e-6


def test_empty_cases_give_zero_results_with_warnings(ccta_case, params, config):
  c = ccta_case
  res = _score_ccta(c, params, config, heart_mask=np.zeros_like(c.heart_mask))
  assert not res.classes.any() and any("heart" in w for w in res.report["warnings"])
  flat = c.scan.with_array(np.full(c.scan.shape, 40.0, np.float32))
  res = pipeline.score_scan(flat, params, config, domain="ncct", heart_mask=c.heart_mask)
  assert not res.classes.any() and any("no candidate" in w for w in res.report["warnings"])
  assert res.report["scores"]["total"]["volume_mm3"] == 0
  res = pipeline.score_scan(flat, params, config, domain="ccta")
  assert not res.classes.any() and any("aorta" in w for w in res.report["warnings"])


def test_working_spacing_resampling_returns_native_grid(params, config):
  case = phantoms.generate_case("cardiac_ncct", 5, config)
  # Upsample in-plane by 2: inference runs at working spacing, labels come back on this grid.
  img = sitk.GetImageFromArray(case.scan.hu)
  img.SetSpacing(tuple(float(s) for s in case.scan.spacing[::-1]))
  from cac_jax.data import preprocess

  fine = preprocess.resample(
    case.scan, (case.scan.spacing[0], case.scan.spacing[1] / 2, case.scan.spacing[2] / 2)
  )
  heart = preprocess.resample_labels(case.heart_mask.astype(np.uint8), case.scan, fine) > 0
  res = pipeline.score_scan(fine, params, config, domain="ncct", heart_mask=heart)
  assert res.classes.shape == fine.shape
  assert np.all(fine.hu[res.raw_classes > 0] >= 130)


def _write_case(tmp_path, config):
  manifest = phantoms.write_dataset(str(tmp_path / "data"), "ccta", 2, 7, config, split="test")
  from cac_jax.data import manifest as manifest_lib

  return manifest, manifest_lib.read_manifest(manifest)


def _run(args):
  return subprocess.run(
    [sys.executable, "-m", "launch.score", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=600,
  )


def test_score_cli_single_and_manifest(tmp_path, export_dir, config):
  manifest, rows = _write_case(tmp_path, config)
  row = rows[0]
  out = tmp_path / "out"
  r = _run(
    [
      "--image",
      row.image,
      "--heart_mask",
      row.heart_mask,
      "--aorta_mask",
      row.aorta_mask,
      "--checkpoint",
      export_dir,
      "--output_dir",
      str(out),
      "--domain",
      "auto",
    ]
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "domain ccta" in r.stdout
  for f in outputs.OUTPUT_FILES:
    assert (out / f).exists(), f
  report = json.loads((out / "scores.json").read_text())
  assert report["domain"] == "ccta" and "auto-detected" in " ".join(report["warnings"])
  assert set(report["threshold"]) >= {"mean_hu", "sd_hu", "threshold_hu", "roi_centre_zyx"}
  # Labels overlay the input exactly: same geometry, reference encoding only.
  src, lab = sitk.ReadImage(row.image), sitk.ReadImage(str(out / "calcium_labels.nii.gz"))
  assert lab.GetSize() == src.GetSize() and np.allclose(lab.GetOrigin(), src.GetOrigin())
  assert np.allclose(lab.GetDirection(), src.GetDirection()) and np.allclose(
    lab.GetSpacing(), src.GetSpacing()
  )
  assert set(np.unique(sitk.GetArrayFromImage(lab))) <= set(labels.CLASS_TO_REFERENCE)
  # Refuses to overwrite; nothing is changed.
  before = (out / "scores.json").read_bytes()
  r = _run(["--image", row.image, "--checkpoint", export_dir, "--output_dir", str(out)])
  assert r.returncode != 0 and "--overwrite" in r.stderr
  assert (out / "scores.json").read_bytes() == before
  # Manifest mode.
  out2 = tmp_path / "out2"
  r = _run(["--manifest", manifest, "--checkpoint", export_dir, "--output_dir", str(out2)])
  assert r.returncode == 0, r.stderr[-3000:]
  with open(out2 / "scores.csv", encoding="utf-8") as f:
    got = list(csv.DictReader(f))
  assert [g["id"] for g in got] == [r.id for r in rows]
  assert all((out2 / r.id / "calcium_labels.nii.gz").exists() for r in rows)


def test_score_cli_bad_inputs(tmp_path, export_dir):
  r = _run(
    [
      "--image",
      str(tmp_path / "missing.nii.gz"),
      "--checkpoint",
      export_dir,
      "--output_dir",
      str(tmp_path / "o"),
    ]
  )
  assert r.returncode != 0 and "missing.nii.gz" in r.stderr
  bad = tmp_path / "bad_ckpt"
  bad.mkdir()
  (bad / "junk").write_text("x")
  img = tmp_path / "img.nii.gz"
  sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 16, 16), 40, np.int16)), str(img))
  r = _run(["--image", str(img), "--checkpoint", str(bad), "--output_dir", str(tmp_path / "o")])
  assert r.returncode != 0 and "bad_ckpt" in r.stderr
  assert not (tmp_path / "o" / "scores.json").exists()


def test_real_contrast_ct_scores_in_aortic_lumen(realdata, params, config):
  scan = volume_io.read_scan(realdata / "contrast_chest_ct_1.nii.gz")
  heart = volume_io.read_mask(realdata / "contrast_chest_ct_1_heart.nii.gz", scan) > 0
  pa = volume_io.read_mask(realdata / "contrast_chest_ct_1_pulmonary_artery.nii.gz", scan) > 0
  res = pipeline.score_scan(scan, params, config, domain="auto", heart_mask=heart)
  assert res.report["domain"] == "ccta"
  t = res.report["threshold"]
  assert 200 < t["mean_hu"] < 700 and t["threshold_hu"] > t["mean_hu"]
  z, y, x = t["roi_centre_zyx"]
  assert not pa[z, y, x]
  assert res.classes.shape == scan.shape
  assert np.all(scan.hu[res.classes > 0] >= t["threshold_hu"])


def test_prepare_searches_the_aorta_once(ccta_case, config, monkeypatch):
  """Domain decision and threshold share one automatic aorta search per scan."""
  from cac_jax.data import threshold

  calls = []
  search = threshold._chain_lumen
  monkeypatch.setattr(threshold, "_chain_lumen", lambda *a, **k: calls.append(1) or search(*a, **k))
  settings = postprocess.FPReductionSettings.from_config(config.scoring)
  setup = pipeline.prepare(ccta_case.scan, config, settings, domain="auto", auto_heart=True)
  assert setup.domain == "ccta" and setup.report["threshold"]["method"].endswith("(auto)")
  assert len(calls) == 1


def test_labels_identical_to_the_whole_volume_steps(ccta_case, params, config):
  """A phantom scored on its own (working) grid: `score_scan`'s labels and scores equal the
  whole-volume steps composed one by one (the exact heart dilation, detection, region growing,
  size limits and heart filter on the full map, scores of the full map)."""
  from cac_jax.scoring import scores

  c = ccta_case
  settings = postprocess.FPReductionSettings.from_config(config.scoring)
  res = _score_ccta(c, params, config)
  thr = res.report["threshold"]["threshold_hu"]
  region = postprocess.heart_region(c.heart_mask, c.scan.spacing, settings.dilation_mm)
  setup = pipeline.Setup("ccta", thr, c.heart_mask, region, None, {}, [])
  raw = pipeline.raw_classes(setup, c.scan, params, config)
  ref = postprocess.grow_lesions(raw, c.scan.hu, thr)
  ref = postprocess.size_filter(ref, c.scan.spacing, settings.min_mm3, settings.max_mm3)
  ref = postprocess.heart_filter(ref, c.heart_mask, c.scan.spacing, settings.dilation_mm)
  assert ref.any() and np.array_equal(res.raw_classes, raw)
  assert np.array_equal(res.classes, ref)
  assert res.report["scores"] == scores.compute_scores(ref, c.scan.hu, c.scan, "ccta")


def test_heart_dilation_on_the_working_grid_is_exact_to_half_a_working_voxel(ccta_case, config):
  """On a grid finer than the working grid, the dilated heart (computed on the working grid)
  differs from the exact dilation only where the distance to the heart is within half a
  working voxel's diagonal (plus the heart's own nearest-neighbour mapping) of the dilation."""
  from scipy import ndimage

  from cac_jax.data import preprocess

  fine = preprocess.resample(ccta_case.scan, (0.75, 0.5, 0.5), order=1)
  heart = (
    preprocess.resample_labels(ccta_case.heart_mask.astype(np.uint8), ccta_case.scan, fine) > 0
  )
  working = pipeline.working_scan(fine, config)
  assert working is not fine
  got, on_working = pipeline.dilated_heart(heart, fine, working, 10.0)
  assert on_working.shape == working.shape
  exact = postprocess.heart_region(heart, fine.spacing, 10.0)
  dist = ndimage.distance_transform_edt(~heart, sampling=fine.spacing)
  diff = got != exact
  tol = float(np.linalg.norm(working.spacing))  # half a diagonal each way: heart and region
  assert diff.any() and diff.mean() < 0.05
  assert np.all(np.abs(dist[diff] - 10.0) <= tol)
