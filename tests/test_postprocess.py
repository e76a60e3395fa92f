"""Tests for cac_jax.scoring.postprocess on hand-built volumes."""

import warnings

import ml_collections
import numpy as np
import pytest

from cac_jax.data.scan import Scan
from cac_jax.labels import AORTA, LAD, LCX, RCA
from cac_jax.scoring import postprocess as pp
from configs import paper

T = 130.0
SCORING = paper.get_config().scoring


def _settings(**kw) -> pp.FPReductionSettings:
  """The paper's FP reduction with some steps or limits changed."""
  return pp.FPReductionSettings.from_config(SCORING, **kw)


def _vol(shape=(5, 10, 10)):
  return np.zeros(shape, np.float32), np.zeros(shape, np.int32)


@pytest.mark.parametrize("where", ["middle", "border"])
def test_heart_region_is_the_whole_scan_distance_transform(where):
  """heart_region (a distance transform in the heart's grown bounding box) equals the
  whole-scan distance transform of the complement thresholded at the dilation."""
  from scipy import ndimage

  rng = np.random.RandomState(0)
  heart = np.zeros((30, 60, 50), bool)
  z, y, x = (12, 25, 20) if where == "middle" else (0, 58, 0)
  heart[z : z + 6, y - 8 : y + 2, x : x + 9] = rng.rand(6, 10, 9) < 0.7
  spacing = (2.0, 0.7, 0.9)
  want = ndimage.distance_transform_edt(~heart, sampling=spacing) <= 6.0 + 1e-6
  got = pp.heart_region(heart, spacing, 6.0)
  assert want.sum() > heart.sum()
  np.testing.assert_array_equal(got, want)


def test_growing_joins_connected_region():
  hu, det = _vol()
  hu[2, 2, 2:7] = 300.0  # a 5-voxel bright bar
  hu[2, 8, 8] = 300.0  # a separate bright voxel, not detected
  det[2, 2, 3] = LAD  # one detected voxel in the bar
  out = pp.grow_lesions(det, hu, T)
  assert np.all(out[2, 2, 2:7] == LAD)
  assert out[2, 8, 8] == 0
  assert out.sum() == 5 * LAD


def test_detections_below_threshold_are_dropped():
  hu, det = _vol()
  det[1, 1, 1] = RCA
  assert not pp.grow_lesions(det, hu, T).any()


def test_six_connectivity_diagonal_voxels_are_separate():
  hu, det = _vol()
  hu[2, 2, 2] = hu[2, 3, 3] = hu[3, 4, 4] = 300.0  # only edge/corner neighbours
  det[2, 2, 2] = LAD
  out = pp.grow_lesions(det, hu, T)
  assert out[2, 2, 2] == LAD and out[2, 3, 3] == 0 and out[3, 4, 4] == 0
  lab, n = pp.label_lesions((hu > T).astype(np.int32))
  assert n == 3  # 26-connectivity would give 1
  # the same with a face neighbour joins
  hu[2, 2, 3] = 300.0
  hu[2, 3, 3] = 300.0
  out = pp.grow_lesions(det, hu, T)
  assert out[2, 3, 3] == LAD


def test_majority_label_and_tie_to_lowest_class():
  hu, det = _vol()
  hu[2, 2, 0:6] = 400.0
  det[2, 2, 0] = LCX
  det[2, 2, 1] = RCA
  det[2, 2, 2] = RCA
  out = pp.grow_lesions(det, hu, T)
  assert np.all(out[2, 2, 0:6] == RCA)  # 2 RCA votes vs 1 LCX
  det[2, 2, 3] = LCX  # 2 vs 2 -> lowest class (LCX)
  out = pp.grow_lesions(det, hu, T)
  assert np.all(out[2, 2, 0:6] == LCX)


def test_growing_with_more_components_than_uint16_labels_hold():
  """65,535 components is where uint16 labels end: beyond it region growing still labels every
  component (int32), and the detected ones grow as with few components."""
  hu = np.zeros((2, 520, 260), np.float32)
  hu[0, ::2, ::2] = 300.0  # 260 x 130 = 33,800 isolated bright voxels
  hu[1, ::2, ::2] = 300.0  # joined across z: still 33,800 components
  det = np.zeros(hu.shape, np.int32)
  det[0, 0, 0] = LAD
  few = pp.grow_lesions(det, hu, T)
  assert few.sum() == 2 * LAD and few[1, 0, 0] == LAD
  hu[1] = 0.0
  hu[1, 1::2, 1::2] = 300.0  # 67,600 components, none touching another
  many = pp.grow_lesions(det, hu, T)
  assert many.sum() == LAD and many[0, 0, 0] == LAD
  lab, n = pp._label_compact(hu >= T)
  assert n == 67_600 and lab.dtype == np.int32 and lab.max() == n


def test_size_limits_with_anisotropic_spacing():
  spacing = (3.0, 0.5, 0.5)  # 0.75 mm³ per voxel
  cls = np.zeros((4, 20, 20), np.int32)
  cls[1, 1, 1] = LAD  # 0.75 mm³ < 1 -> dropped
  cls[1, 5, 5:7] = LCX  # 1.5 mm³ -> kept
  cls[1, 10:20, 10:20] = AORTA  # 100 voxels = 75 mm³
  out = pp.size_filter(cls, spacing, min_mm3=1.0, max_mm3=500.0)
  assert out[1, 1, 1] == 0
  assert np.all(out[1, 5, 5:7] == LCX)
  assert out[1, 10, 10] == AORTA
  out = pp.size_filter(cls, spacing, min_mm3=1.0, max_mm3=74.0)  # 75 mm³ > 74 -> dropped
  assert out[1, 10, 10] == 0 and np.all(out[1, 5, 5:7] == LCX)
  out = pp.size_filter(cls, spacing, min_mm3=0.75, max_mm3=75.0)  # limits are inclusive
  assert out[1, 1, 1] == LAD and out[1, 10, 10] == AORTA


def test_heart_filter_dilation_9mm_kept_11mm_dropped():
  spacing = (1.0, 1.0, 1.0)
  heart = np.zeros((3, 5, 40), bool)
  heart[:, :, :10] = True  # last heart voxel at x = 9
  cls = np.zeros(heart.shape, np.int32)
  cls[1, 2, 18] = LAD  # 9 mm from the heart -> kept
  cls[1, 2, 20] = 0
  cls[1, 4, 20] = RCA  # 11 mm -> dropped
  out = pp.heart_filter(cls, heart, spacing, dilation_mm=10.0)
  assert out[1, 2, 18] == LAD and out[1, 4, 20] == 0


def test_heart_filter_anisotropic_spacing():
  spacing = (3.0, 0.5, 0.5)
  heart = np.zeros((10, 4, 4), bool)
  heart[0] = True
  cls = np.zeros(heart.shape, np.int32)
  cls[3, 1, 1] = LAD  # 3 slices x 3 mm = 9 mm -> kept
  cls[4, 2, 2] = RCA  # 12 mm -> dropped
  out = pp.heart_filter(cls, heart, spacing, dilation_mm=10.0)
  assert out[3, 1, 1] == LAD and out[4, 2, 2] == 0


def test_voxel_heart_filter_cuts_an_edge_lesion_where_the_lesion_filter_keeps_it_whole():
  spacing = (1.0, 1.0, 1.0)
  hu = np.zeros((3, 5, 40), np.float32)
  heart = np.zeros(hu.shape, bool)
  heart[:, :, :10] = True  # the dilated region ends at x = 19
  cls = np.zeros(hu.shape, np.int32)
  hu[1, 2, 17:23] = 400.0
  cls[1, 2, 17:23] = LAD  # 6 voxels, x = 17..22: 3 inside the region, 3 outside
  hu[1, 4, 25:28] = 400.0
  cls[1, 4, 25:28] = RCA  # wholly outside
  only_heart = dict(region_growing=False, size_limits=False)
  lesion = pp.reduce_false_positives(
    cls, hu, T, spacing, heart, _settings(**only_heart, heart_filter_mode="lesion")
  )
  voxel = pp.reduce_false_positives(
    cls, hu, T, spacing, heart, _settings(**only_heart, heart_filter_mode="voxel")
  )
  assert (lesion[1, 2, 17:23] == LAD).all() and not lesion[1, 4].any()
  assert (voxel[1, 2, 17:20] == LAD).all() and not voxel[1, 2, 20:].any()
  assert not voxel[1, 4].any()
  # The size limits then read the cut lesion: 3 mm³ survives a 1-3 mm³ window, 6 mm³ would not.
  sized = _settings(region_growing=False, heart_filter_mode="voxel", min_mm3=1.0, max_mm3=3.0)
  assert (pp.reduce_false_positives(cls, hu, T, spacing, heart, sized)[1, 2, 17:20] == LAD).all()
  with pytest.raises(ValueError, match="heart_filter_mode"):
    _settings(heart_filter_mode="box")


def test_heart_filter_mode_comes_from_the_config_and_old_exports_filter_by_lesion():
  scoring = ml_collections.ConfigDict(
    {"min_lesion_mm3": 1.0, "max_lesion_mm3": 500.0, "heart_dilation_mm": 10.0}
  )
  assert pp.FPReductionSettings.from_config(scoring).heart_filter_mode == "lesion"
  scoring.heart_filter = "voxel"
  assert pp.FPReductionSettings.from_config(scoring).heart_filter_mode == "voxel"


def test_heart_filter_without_mask_warns_and_skips():
  cls = np.zeros((3, 3, 3), np.int32)
  cls[1, 1, 1] = LAD
  with pytest.warns(UserWarning, match="heart mask"):
    out = pp.heart_filter(cls, None, (1, 1, 1), 10.0)
  np.testing.assert_array_equal(out, cls)


def test_reduce_false_positives_switches():
  hu, det = _vol((6, 30, 30))
  scan = Scan(hu, (1.0, 1.0, 1.0))
  hu[2, 2, 2:6] = 300.0
  det[2, 2, 2] = LAD  # grows to 4 voxels = 4 mm³
  hu[2, 20, 20] = 300.0
  det[2, 20, 20] = RCA  # 1 voxel = 1 mm³, far from the heart
  heart = np.zeros(hu.shape, bool)
  heart[:, :8, :8] = True
  out = pp.reduce_false_positives(det, hu, T, scan, heart, _settings())
  assert out[2, 2, 5] == LAD and out[2, 20, 20] == 0
  s = _settings(heart_filter=False)
  out = pp.reduce_false_positives(det, hu, T, scan.spacing, heart, s)
  assert out[2, 20, 20] == RCA
  s = _settings(region_growing=False, heart_filter=False, min_mm3=2.0)
  out = pp.reduce_false_positives(det, hu, T, scan, None, s)
  assert not out.any()  # both single-voxel detections < 2 mm³
  s = _settings(region_growing=False, size_limits=False, heart_filter=False)
  out = pp.reduce_false_positives(det, hu, T, scan, None, s)
  assert out[2, 2, 2] == LAD and out[2, 2, 3] == 0
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    pp.reduce_false_positives(det, hu, T, scan, heart, _settings())  # mask given: no warning


def test_settings_from_config():
  sc = ml_collections.ConfigDict(
    dict(min_lesion_mm3=2.0, max_lesion_mm3=300.0, heart_dilation_mm=5.0)
  )
  s = pp.FPReductionSettings.from_config(sc, heart_filter=False)
  assert (s.min_mm3, s.max_mm3, s.dilation_mm, s.heart_filter) == (2.0, 300.0, 5.0, False)
