"""Tests for cac_jax.scoring.scores with hand-computed expected values."""

import json

import numpy as np
import pytest

from cac_jax.data.scan import Scan
from cac_jax.labels import AORTA, AORTIC_VALVE, LAD, LCX, MITRAL_VALVE, RCA
from cac_jax.scoring import scores


def _scan(shape, spacing, **meta):
  return Scan(np.zeros(shape, np.float32), spacing, meta=meta)


def test_agatston_reference_lesion():
  # 2x2 mm² lesion at 350 HU across 2 slices at 3 mm: area 4 x weight 3 x 2 slices x 3/3 = 24
  scan = _scan((6, 10, 10), (3.0, 1.0, 1.0), kvp=120.0)
  hu = scan.hu.copy()
  cls = np.zeros(scan.shape, np.int32)
  cls[2:4, 3:5, 3:5] = LAD
  hu[2:4, 3:5, 3:5] = 350.0
  r = scores.compute_scores(cls, hu, scan, "ncct")
  assert r["LAD"]["agatston"] == pytest.approx(24.0)
  assert r["total"]["agatston"] == pytest.approx(24.0)
  # volume: 8 voxels x 3 mm³ = 24 mm³; mass uncalibrated: 24 x 350 = 8400
  assert r["LAD"]["volume_mm3"] == pytest.approx(24.0)
  assert r["LAD"]["mass"] == pytest.approx(8400.0)
  assert r["LAD"]["lesions"] == 1 and r["total"]["lesions"] == 1
  assert r["LCX"]["volume_mm3"] == 0 and r["RCA"]["agatston"] == 0
  assert r["risk_category"] == "11-100"
  assert r["cac_drs"] == "A1/N1" and r["num_vessels"] == 1
  assert r["agatston_standard"] and not r["mass_calibrated"]
  json.dumps(r)


def test_slice_increment_normalisation():
  # same 2x2 mm² 350 HU lesion over 6 mm, sampled every 1.5 mm (4 slices):
  # 4 mm² x 3 x 4 slices x 1.5/3 = 24
  scan = _scan((8, 10, 10), (1.5, 1.0, 1.0))
  hu = scan.hu.copy()
  cls = np.zeros(scan.shape, np.int32)
  cls[2:6, 3:5, 3:5] = RCA
  hu[2:6, 3:5, 3:5] = 350.0
  assert scores.compute_scores(cls, hu, scan, "ncct")["RCA"]["agatston"] == pytest.approx(24.0)


def test_area_threshold_and_peak_weight():
  scan = _scan((3, 20, 20), (3.0, 0.5, 0.5))  # 0.25 mm² pixels
  hu = scan.hu.copy()
  cls = np.zeros(scan.shape, np.int32)
  cls[1, 1, 1:4] = LCX  # 3 px = 0.75 mm² < 1 mm² -> not counted
  hu[1, 1, 1:4] = 500.0
  cls[1, 10:12, 10:12] = LCX  # 4 px = 1 mm², peak 450 -> weight 4
  hu[1, 10:12, 10:12] = 150.0
  hu[1, 10, 10] = 450.0
  r = scores.compute_scores(cls, hu, scan, "ncct")
  # Agatston = 1 mm² x 4 x 1 slice x 3/3 = 4
  assert r["LCX"]["agatston"] == pytest.approx(4.0)
  # volume counts every voxel: 7 x 0.75 mm³ = 5.25 mm³; two lesions
  assert r["LCX"]["volume_mm3"] == pytest.approx(5.25)
  assert r["LCX"]["lesions"] == 2
  assert r["risk_category"] == "1-10"


def test_diagonal_pixels_are_separate_2d_lesions():
  scan = _scan((1, 6, 6), (3.0, 1.0, 1.0))
  hu = np.full(scan.shape, 250.0, np.float32)
  cls = np.zeros(scan.shape, np.int32)
  cls[0, 1, 1] = cls[0, 2, 2] = LAD  # each 1 mm², weight 2 -> 2 + 2 = 4
  cls[0, 4, 4] = cls[0, 4, 5] = LAD  # 2 mm² x 2 = 4
  r = scores.compute_scores(cls, hu, scan, "ncct")
  assert r["LAD"]["agatston"] == pytest.approx(8.0)
  assert r["LAD"]["lesions"] == 3


def test_multi_vessel_categories_and_non_coronary():
  scan = _scan((6, 30, 30), (3.0, 1.0, 1.0))
  hu = scan.hu.copy()
  cls = np.zeros(scan.shape, np.int32)
  cls[1:3, 1:3, 1:3] = LAD  # 4 mm² x 3 (350 HU) x 2 slices = 24
  hu[1:3, 1:3, 1:3] = 350.0
  cls[1:4, 10:20, 10:20] = RCA  # 100 mm² x 4 (500 HU) x 3 slices = 1200
  hu[1:4, 10:20, 10:20] = 500.0
  cls[5, 25:28, 25:28] = AORTA  # 9 voxels x 3 mm³ = 27 mm³
  cls[5, 0:2, 25] = AORTIC_VALVE  # 2 voxels = 6 mm³
  cls[5, 0, 0] = MITRAL_VALVE  # 3 mm³
  hu[5] = 300.0
  r = scores.compute_scores(cls, hu, scan, "ncct", calibration=0.001)
  assert r["total"]["agatston"] == pytest.approx(1224.0)
  assert r["risk_category"] == ">400"
  assert r["cac_drs"] == "A3/N2"
  assert r["total"]["volume_mm3"] == pytest.approx((8 + 300) * 3.0)
  assert r["total"]["lesions"] == 2
  # calibrated mass (mg) = c_HA x volume x mean HU: RCA 0.001 x 900 x 500 = 450
  assert r["RCA"]["mass"] == pytest.approx(450.0)
  assert r["mass_calibrated"] and r["mass_units"] == "mg"
  assert r["aorta"]["volume_mm3"] == pytest.approx(27.0)
  assert r["aortic_valve"]["volume_mm3"] == pytest.approx(6.0)
  assert r["mitral_valve"]["volume_mm3"] == pytest.approx(3.0)
  assert "agatston" not in r["aorta"] and "agatston" not in r["mitral_valve"]
  # aortic valve: 2 mm² at 300 HU (weight 3) on one 3 mm slice = 6
  assert r["aortic_valve"]["agatston"] == pytest.approx(6.0)
  json.dumps(r)


def test_zero_and_ccta_flags():
  scan = _scan((3, 5, 5), (0.5, 0.4, 0.4))
  r = scores.compute_scores(np.zeros(scan.shape, np.int32), scan.hu, scan, "ccta")
  assert r["total"]["agatston"] == 0 and r["risk_category"] == "0" and r["cac_drs"] == "A0"
  assert r["agatston_standard"] is False and r["notes"]
  json.dumps(r)
  with pytest.raises(ValueError):
    scores.compute_scores(np.zeros(scan.shape, np.int32), scan.hu, scan, "mri")


@pytest.mark.parametrize(
  "a,risk,drs",
  [
    (0, "0", "A0"),
    (0.5, "1-10", "A1/N1"),
    (10, "1-10", "A1/N1"),
    (10.5, "11-100", "A1/N1"),
    (99.9, "11-100", "A1/N1"),
    (100, "11-100", "A2/N1"),
    (101, "101-400", "A2/N1"),
    (299, "101-400", "A2/N1"),
    (300, "101-400", "A3/N1"),
    (400, "101-400", "A3/N1"),
    (401, ">400", "A3/N1"),
  ],
)
def test_category_boundaries(a, risk, drs):
  assert scores.risk_category(a) == risk
  assert scores.cac_drs(a, 1) == drs


def test_weights():
  assert [scores.agatston_weight(h) for h in (129, 130, 199, 200, 299, 300, 399, 400, 2000)] == [
    0,
    1,
    1,
    2,
    2,
    3,
    3,
    4,
    4,
  ]


def test_agatston_standard_only_for_the_defined_protocol():
  cls = np.zeros((4, 6, 6), np.int32)
  cls[1:3, 2:4, 2:4] = LAD
  hu = np.where(cls > 0, 300.0, 0.0)
  standard = scores.compute_scores(cls, hu, _scan(cls.shape, (3.0, 1.0, 1.0), kvp=120.0), "ncct")
  assert standard["agatston_standard"] is True and standard["agatston_protocol_notes"] == []
  for spacing, meta, why in (
    ((1.5, 1.0, 1.0), {"kvp": 120.0}, "1.5 mm"),
    ((3.0, 1.0, 1.0), {"kvp": 100.0}, "100 kVp"),
    ((3.0, 1.0, 1.0), {}, "unknown"),
  ):
    r = scores.compute_scores(cls, hu, _scan(cls.shape, spacing, **meta), "ncct")
    assert r["agatston_standard"] is False
    assert any(why in n for n in r["agatston_protocol_notes"]), r["agatston_protocol_notes"]


def test_empty_class_mean_hu_is_null_and_valve_agatston():
  scan = _scan((3, 8, 8), (3.0, 1.0, 1.0), kvp=120.0)
  cls = np.zeros(scan.shape, np.int32)
  cls[1, 2:5, 2:5] = AORTIC_VALVE  # 9 mm² at 450 HU, 1 slice: 9 x 4 x 3/3 = 36
  hu = np.where(cls > 0, 450.0, 0.0)
  r = scores.compute_scores(cls, hu, scan, "ncct")
  assert r["aortic_valve"]["agatston"] == pytest.approx(36.0)
  assert r["total"]["agatston"] == 0.0  # valve calcium is not coronary
  assert r["LAD"]["mean_hu"] is None and r["LAD"]["mass"] == 0.0
  assert json.loads(json.dumps(r))["RCA"]["mean_hu"] is None


def test_scores_and_lesion_table_do_not_depend_on_the_zero_margin():
  """Scores and the lesion table are computed in the box of the labelled voxels: the same
  class map with a wide margin of 0 (and other HU there) gives the same results, centroids
  included (the padded scan's origin moved by the margin)."""
  rng = np.random.default_rng(4)
  classes = np.where(rng.random((6, 20, 24)) < 0.15, rng.integers(1, 7, (6, 20, 24)), 0)
  hu = rng.uniform(100, 900, classes.shape).astype(np.float32)
  spacing = (0.5, 0.25, 0.5)  # binary fractions: the moved origin is exact
  small = Scan(hu, spacing, origin=(10.0, 20.0, 30.0))
  pad = ((3, 5), (7, 2), (4, 6))
  big_hu = np.pad(hu, pad, constant_values=-500.0)
  big_hu[: pad[0][0]] = 2000.0  # bright voxels outside the labels count for nothing
  origin = tuple(o - p[0] * s for o, p, s in zip((10.0, 20.0, 30.0), pad[::-1], spacing[::-1]))
  big = Scan(big_hu, spacing, origin=origin)
  big_classes = np.pad(classes, pad)
  for domain in ("ncct", "ccta"):
    assert scores.compute_scores(big_classes, big_hu, big, domain) == scores.compute_scores(
      classes, hu, small, domain
    )
  assert scores.lesion_table(big_classes, big_hu, big) == scores.lesion_table(classes, hu, small)
  assert len(scores.lesion_table(classes, hu, small)) > 10
