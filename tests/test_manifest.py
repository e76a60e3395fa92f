"""Tests for cac_jax.data.manifest: validation that reports every bad row, and case loading."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from cac_jax.data import manifest
from configs import paper

HEADER = "id,image,label,heart_mask,aorta_mask,domain,split\n"


def _write(
  array,
  path,
  spacing=(0.7, 0.7, 1.0),
  origin=(0.0, 0.0, 0.0),
  direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
):
  path.parent.mkdir(parents=True, exist_ok=True)
  img = sitk.GetImageFromArray(array)
  img.SetSpacing(spacing)
  img.SetOrigin(origin)
  img.SetDirection([float(d) for d in direction])
  sitk.WriteImage(img, str(path))


def _ct(shape=(8, 20, 20)):
  a = np.full(shape, -1000, np.int16)
  a[1:-1, 4:-4, 4:-4] = 40
  a[4, 10, 10] = 700
  return a


def _dataset(root, n=2):
  """n cases: case0 labelled NCCT (train), others unlabelled CCTA (test); masks on another grid."""
  rows = []
  for i in range(n):
    a = _ct()
    _write(a, root / "images" / f"case{i}.nii.gz")
    heart = np.zeros((12, 30, 30), np.uint8)  # larger grid, shifted by (-2, -5, -5) voxels
    heart[2 + 2 : 2 + 6, 5 + 6 : 5 + 14, 5 + 6 : 5 + 14] = 1
    _write(heart, root / "heart" / f"case{i}.nii.gz", origin=(-3.5, -3.5, -2.0))
    label = ""
    if i == 0:
      lab = np.zeros(a.shape, np.uint8)
      lab[4, 10, 10] = 10  # RCA
      _write(lab, root / "labels" / f"case{i}.nii.gz")
      label = f"labels/case{i}.nii.gz"
    domain, split = ("ncct", "train") if i == 0 else ("ccta", "test")
    rows.append(f"case{i},images/case{i}.nii.gz,{label},heart/case{i}.nii.gz,,{domain},{split}\n")
  (root / "manifest.csv").write_text(HEADER + "".join(rows))
  return root / "manifest.csv"


def test_read_manifest_ok(tmp_path):
  csv = _dataset(tmp_path)
  rows = manifest.read_manifest(csv)
  assert [r.id for r in rows] == ["case0", "case1"]
  assert rows[0].labelled and not rows[1].labelled
  assert rows[0].image == str(tmp_path / "images" / "case0.nii.gz")
  assert rows[0].aorta_mask is None and rows[1].domain == "ccta" and rows[1].split == "test"


def test_read_manifest_reports_every_bad_row(tmp_path):
  _dataset(tmp_path)
  # A label map on a different grid than its image.
  _write(np.zeros((8, 20, 20), np.uint8), tmp_path / "labels" / "shifted.nii.gz", origin=(5, 0, 0))
  (tmp_path / "bad.csv").write_text(
    HEADER
    + "".join(
      [
        "case0,images/case0.nii.gz,labels/case0.nii.gz,heart/case0.nii.gz,,ncct,train\n",
        "case0,images/case1.nii.gz,,,,ccta,train\n",  # duplicate id
        "case2,images/missing.nii.gz,,,,ccta,train\n",  # missing image
        "case3,images/case1.nii.gz,,,,mri,train\n",  # unknown domain
        "case4,images/case1.nii.gz,labels/shifted.nii.gz,,,ncct,train\n",  # grid mismatch
        "case5,images/case1.nii.gz,,heart/nope.nii.gz,,ccta,val\n",  # missing mask
      ]
    )
  )
  with pytest.raises(manifest.ManifestError) as info:
    manifest.read_manifest(tmp_path / "bad.csv")
  errors = info.value.errors
  assert len(errors) == 5, errors
  text = str(info.value)
  assert "line 3 (id 'case0'): duplicate id (first on line 2)" in text
  assert "line 4 (id 'case2'): image file not found: images/missing.nii.gz" in text
  assert "line 5 (id 'case3'): unknown domain 'mri'" in text
  assert "line 6 (id 'case4'): label map is not on the image's voxel grid" in text
  assert "line 7 (id 'case5'): heart_mask file not found" in text


def test_read_manifest_missing_columns(tmp_path):
  (tmp_path / "m.csv").write_text("id,image,domain\nx,y.nii.gz,ncct\n")
  with pytest.raises(
    manifest.ManifestError,
    match=r"missing column\(s\) \['label', 'heart_mask', "
    r"'aorta_mask', 'split'\]",
  ):
    manifest.read_manifest(tmp_path / "m.csv")
  with pytest.raises(FileNotFoundError):
    manifest.read_manifest(tmp_path / "none.csv")


def test_label_in_other_orientation_same_grid_is_accepted(tmp_path):
  csv = _dataset(tmp_path, n=1)
  lab = np.zeros((8, 20, 20), np.uint8)
  # Same voxel centres as the image, stored flipped in x and y (RAS): the grid matches.
  _write(
    lab[:, ::-1, ::-1].copy(),
    tmp_path / "labels" / "case0.nii.gz",
    origin=(19 * 0.7, 19 * 0.7, 0.0),
    direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1),
  )
  assert len(manifest.read_manifest(csv)) == 1


def test_load_cases(tmp_path):
  csv = _dataset(tmp_path)
  config = paper.get_config()
  config.data.working_spacing = (1.0, 0.35, 0.35)  # exact 2x in-plane upsampling
  cases = manifest.load_cases(csv, config)
  assert [c.case_id for c in cases] == ["case0", "case1"]
  c0 = cases[0]
  assert c0.scan.spacing == (1.0, 0.35, 0.35) and c0.scan.shape == (8, 40, 40)
  assert c0.labels.dtype == np.int32 and set(np.unique(c0.labels)) == {0, 3}
  assert c0.heart_mask.dtype == np.bool_ and c0.heart_mask.shape == c0.scan.shape
  # The heart mask (on a larger, shifted grid) lands on the 4x8x8 tissue block: 4*16*16 voxels.
  assert c0.heart_mask.sum() == 4 * 16 * 16
  assert np.all(c0.scan.hu[c0.heart_mask] >= 40)
  assert cases[1].labels is None and cases[1].aorta_mask is None
  assert c0.scan.meta["domain"] == "ncct"
  only = manifest.load_cases(csv, config, split="test")
  assert [c.case_id for c in only] == ["case1"]
  assert [c.case_id for c in manifest.load_cases(csv, config, domain="ncct")] == ["case0"]


def test_load_cases_thick_slice(tmp_path):
  root = tmp_path
  a = np.full((12, 20, 20), -1000, np.int16)
  a[2:10, 4:16, 4:16] = 40
  _write(a, root / "images" / "thin.nii.gz", spacing=(0.7, 0.7, 0.5))
  lab = np.zeros(a.shape, np.uint8)
  lab[4:8, 8:12, 8:12] = 8
  _write(lab, root / "labels" / "thin.nii.gz", spacing=(0.7, 0.7, 0.5))
  (root / "m.csv").write_text(HEADER + "thin,images/thin.nii.gz,labels/thin.nii.gz,,,ncct,train\n")
  config = paper.get_config()
  config.data.working_spacing = (1.5, 0.7, 0.7)
  config.data.thick_slice = True
  (case,) = manifest.load_cases(root / "m.csv", config)
  # 6 mm of 0.5 mm slices -> windows of 3 mm every 1.5 mm: centres 1.25, 2.75, 4.25 mm.
  assert case.scan.shape == (3, 20, 20) and case.scan.spacing == (1.5, 0.7, 0.7)
  assert case.scan.meta["slice_thickness_mm"] == 3.0
  assert case.labels.shape == case.scan.shape and set(np.unique(case.labels)) == {0, 1}


def test_real_manifest(realdata, tmp_path):
  shutil.copy(realdata / "contrast_chest_ct_1.nii.gz", tmp_path / "ct.nii.gz")
  shutil.copy(realdata / "contrast_chest_ct_1_heart.nii.gz", tmp_path / "heart.nii.gz")
  (tmp_path / "m.csv").write_text(HEADER + "real1,ct.nii.gz,,heart.nii.gz,,ccta,test\n")
  config = paper.get_config()
  config.data.working_spacing = (1.5, 1.5, 1.5)
  (case,) = manifest.load_cases(tmp_path / "m.csv", config)
  assert case.scan.shape == (112, 102, 122) and case.heart_mask.any()
  assert 0 < float(case.scan.hu[case.heart_mask].mean()) < 600
