"""Scoring outputs for a user's own scan: provenance, notices and warnings, the automatic heart
region and TotalSegmentator folders, lesions.csv, viewer colour tables, scores.csv rounding."""

import csv
import dataclasses
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from cac_jax import checkpoints, labels, phantoms
from cac_jax.data.scan import Scan
from cac_jax.scoring import outputs, pipeline, score_files, scores
from cac_jax.train import data as data_lib


@pytest.fixture(scope="module")
def phantom_export(tmp_path_factory, tiny_params, tiny_config):
  meta = {
    "stage": "source",
    "steps": 0,
    "training_data": data_lib.describe_training_data(None, tiny_config),
  }
  return checkpoints.export_inference(
    tmp_path_factory.mktemp("ckpt") / "export", tiny_params, tiny_config, meta
  )


@pytest.fixture(scope="module")
def case_files(tmp_path_factory, tiny_config):
  from cac_jax.data import manifest

  path = phantoms.write_dataset(
    str(tmp_path_factory.mktemp("data")), "ccta", 1, 7, tiny_config, split="test"
  )
  return manifest.read_manifest(path)[0]


def _read_csv(path):
  with open(path, encoding="utf-8") as f:
    return list(csv.DictReader(f))


def test_score_file_auto_heart_provenance_and_outputs(tmp_path, phantom_export, case_files):
  out = tmp_path / "out"
  report = score_files.score_file(case_files.image, phantom_export, str(out))
  for name in outputs.OUTPUT_FILES:
    assert (out / name).exists(), name
  saved = json.loads((out / "scores.json").read_text(encoding="utf-8"))
  assert saved["notice"] == pipeline.RESEARCH_NOTICE and "not a medical device" in saved["notice"]
  assert saved["heart_region"]["source"] == "auto" and saved["heart_region"]["found"]
  assert saved["input"]["image"] is None  # paths are stored only with record_input_path
  assert saved["settings"]["heart_filter"] is True
  prov = saved["provenance"]
  assert prov["checkpoint"] == os.path.abspath(phantom_export)
  assert prov["checkpoint_sha256"] == checkpoints.content_hash(phantom_export)
  assert prov["training_data"]["phantoms_only"] is True and prov["steps"] == 0
  assert "trained only on phantoms" in saved["warnings"][0]
  assert set(saved["versions"]) >= {"cac_jax", "jax", "flax", "numpy", "python"}
  # lesions.csv adds up to scores.json (per artery: volume, Agatston, count).
  rows = _read_csv(out / "lesions.csv")
  with open(out / "lesions.csv", encoding="utf-8") as f:
    assert f.readline().strip().split(",") == list(scores.LESION_FIELDS)
  assert rows, (
    "the random tiny network calls some candidates calcium; without lesions this test is vacuous"
  )
  for artery in ("LAD", "LCX", "RCA"):
    mine = [r for r in rows if r["artery"] == artery]
    s = report["scores"][artery]
    assert len(mine) == s["lesions"]
    assert sum(float(r["volume_mm3"]) for r in mine) == pytest.approx(
      s["volume_mm3"], abs=0.01 * len(mine) + 1e-9
    )
    assert sum(float(r["agatston"]) for r in mine) == pytest.approx(
      s["agatston"], abs=0.01 * len(mine) + 1e-9
    )


def test_masks_dir_and_unrecorded_training(tmp_path, tiny_params, tiny_config, case_files):
  bare = checkpoints.export_inference(
    tmp_path / "bare", tiny_params, tiny_config
  )  # no provenance.json
  seg = tmp_path / "seg"
  seg.mkdir()
  shutil.copy(case_files.heart_mask, seg / "heart.nii.gz")
  shutil.copy(case_files.aorta_mask, seg / "aorta.nii.gz")
  report = score_files.score_file(
    case_files.image,
    bare,
    str(tmp_path / "o"),
    masks_dir=str(seg),
    domain="ccta",
    record_input_path=True,
  )
  assert report["heart_region"] == {"source": "mask", "file": str(seg / "heart.nii.gz")}
  assert "mask" in report["threshold"]["method"]  # the folder's aorta.nii.gz placed the ROI
  assert report["provenance"]["training_data"]["description"] == "not recorded"
  assert any("does not record its training data" in w for w in report["warnings"])
  os.remove(seg / "heart.nii.gz")
  with pytest.raises(FileNotFoundError, match="heart.nii.gz"):
    score_files.score_file(case_files.image, bare, str(tmp_path / "o2"), masks_dir=str(seg))


def test_no_heart_region_means_heart_filter_false(tiny_params, tiny_config):
  scan = phantoms.generate_case("cardiac_ncct", 5, tiny_config).scan
  scan = dataclasses.replace(
    scan, hu=scan.hu[40:48].copy(), source=None
  )  # a slab keeps inference short
  res = pipeline.score_scan(scan, tiny_params, tiny_config, domain="ncct")
  assert res.report["heart_region"] == {"source": "none"}
  assert res.report["settings"]["heart_filter"] is False
  assert any("no heart mask" in w for w in res.report["warnings"])


def test_plausibility_warnings():
  scan = Scan(np.full((4, 40, 40), 300.0, np.float32), (3.0, 1.0, 1.0))
  cls = np.zeros(scan.shape, np.int32)
  cls[1, ::2, ::2] = labels.LAD  # 400 isolated one-voxel lesions
  s = scores.compute_scores(cls, scan.hu, scan, "ncct")
  heart = np.zeros(scan.shape, bool)
  heart[:, :5, :5] = True
  w = pipeline.plausibility_warnings(cls, scan, s, heart, 1.0)
  assert any("400 coronary lesions" in x for x in w)
  assert any("outside the (dilated) heart region" in x for x in w)
  assert not any("mm³ of coronary" in x for x in w)  # 400 x 3 mm³ = 1200 mm³ is plausible
  big = np.zeros(scan.shape, np.int32)
  big[:, :, :] = labels.RCA  # 4 x 40 x 40 x 3 mm³ = 19200 mm³, one lesion
  w = pipeline.plausibility_warnings(
    big, scan, scores.compute_scores(big, scan.hu, scan, "ncct"), None, None
  )
  assert len(w) == 1 and "19200 mm³" in w[0]


def test_viewer_colour_tables_name_every_class():
  itk = labels.itksnap_label_description().splitlines()
  entries = [l.split() for l in itk if not l.startswith("#")]
  written = sorted(set(labels.CLASS_TO_REFERENCE) | {labels.LEFT_MAIN_REFERENCE})
  assert sorted(int(e[0]) for e in entries) == written
  assert '"aortic' in itk[-2] and itk[-1].endswith('"mitral valve"')
  ctbl = [l.split() for l in labels.slicer_colour_table().splitlines() if not l.startswith("#")]
  assert sorted(int(e[0]) for e in ctbl) == written
  assert [e[1] for e in ctbl[1:]] == [
    "LAD",
    "left_main",
    "LCX",
    "RCA",
    "aorta",
    "aortic_valve",
    "mitral_valve",
  ]
  assert all(len(e) == 6 for e in ctbl)


def test_csv_row_rounds_and_carries_per_artery_scores():
  scan = Scan(np.zeros((3, 8, 8), np.float32), (3.0, 0.7, 0.7))
  cls = np.zeros(scan.shape, np.int32)
  cls[1, 2:5, 2:5] = labels.LCX
  hu = np.where(cls > 0, 333.3333, 0.0)
  report = {
    "domain": "ncct",
    "threshold": {"threshold_hu": 566.6813952190827},
    "num_candidates": 9,
    "heart_region": {"source": "auto"},
    "scores": scores.compute_scores(cls, hu, scan, "ncct"),
    "warnings": [],
  }
  row = score_files.csv_row("a", report)
  assert set(row) == set(score_files.CSV_FIELDS)
  assert row["threshold_hu"] == 566.7 and row["LCX_lesions"] == 1 and row["LAD_lesions"] == 0
  assert row["LCX_mm3"] == round(9 * 3.0 * 0.49, 2) and row["LCX_agatston"] == round(
    9 * 0.49 * 3, 2
  )
  assert row["LCX_mass"] == round(9 * 3.0 * 0.49 * 333.3333, 1)
  assert row["heart_region"] == "auto" and row["coronary_score"] is True


def test_lesion_table_centroids_in_scanner_coordinates():
  scan = Scan(np.zeros((4, 10, 10), np.float32), (2.0, 0.5, 0.5), origin=(-10.0, 20.0, 100.0))
  cls = np.zeros(scan.shape, np.int32)
  cls[1, 2:4, 2:4] = labels.RCA  # centroid index (1, 2.5, 2.5)
  cls[3, 8, 8] = labels.AORTA
  hu = np.where(cls > 0, 250.0, 0.0)
  hu[1, 2, 2] = 410.0
  rows = scores.lesion_table(cls, hu, scan)
  assert [r["artery"] for r in rows] == ["RCA", "aorta"] and [r["id"] for r in rows] == [1, 2]
  rca = rows[0]
  assert (rca["centroid_x_mm"], rca["centroid_y_mm"], rca["centroid_z_mm"]) == (-8.8, 21.2, 102.0)
  assert rca["voxels"] == 4 and rca["volume_mm3"] == 2.0 and rca["peak_hu"] == 410.0
  # 1 mm² x weight 4 (peak 410 HU) x 2 mm / 3 mm, as compute_scores; rounded to 0.01
  assert (
    rca["agatston"]
    == round(scores.compute_scores(cls, hu, scan, "ncct")["RCA"]["agatston"], 2)
    == 2.67
  )
  assert rows[1]["agatston"] is None


def test_training_on_a_phantom_data_set_is_recorded_as_phantoms_only(tmp_path, tiny_config):
  # The phantom writer marks its folder; manifest streams over it say so, other manifests do not.
  from cac_jax.phantoms import writer

  manifest = phantoms.write_dataset(
    str(tmp_path / "ph"), "chest_ncct", 1, 3, tiny_config, split="train"
  )
  assert (tmp_path / "ph" / writer.PHANTOM_MARKER).is_file()
  prov = data_lib.describe_training_data(
    data_lib.manifest_streams(tiny_config, manifest), tiny_config
  )
  assert prov["phantoms_only"] is True and prov["description"].startswith("phantom data set")
  assert prov["manifest_sha256"] == [hashlib.sha256(open(manifest, "rb").read()).hexdigest()]
  os.remove(tmp_path / "ph" / writer.PHANTOM_MARKER)  # as a user's own data set would be
  prov = data_lib.describe_training_data(
    data_lib.manifest_streams(tiny_config, manifest), tiny_config
  )
  assert prov["phantoms_only"] is None and prov["description"].startswith("manifest ")
