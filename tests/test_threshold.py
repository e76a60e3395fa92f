"""Tests for cac_jax.data.threshold: fixed NCCT and aorta-derived CCTA thresholds."""

import pathlib

import numpy as np
import pytest
from scipy import ndimage

from cac_jax.data import threshold
from cac_jax.data.scan import Scan
from configs import paper

REALDATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "realdata"

SPACING = (1.5, 1.0, 1.0)
ROI = tuple(paper.get_config().scoring.roi_size_mm)
ASC = dict(y=30, x=40, r=13.0, z0=5)  # ascending aorta: anterior (small y), patient right (small x)
DESC = dict(y=72, x=60, r=10.0, z0=0)  # descending aorta: posterior
ARCH_Z = 40  # arch slices ARCH_Z..end join both


def _phantom(lumen_hu=400.0, lumen_sd=20.0, wall_calcium=False, seed=0):
  """Chest-like phantom (z, y, x) = (48, 100, 100): body, ascending/descending aorta, arch.

  Returns (scan, aorta_mask including a 1.5 mm wall).
  """
  rng = np.random.default_rng(seed)
  nz, ny, nx = 48, 100, 100
  z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
  hu = np.full((nz, ny, nx), -1000.0, np.float32)
  body = ((y - 50) / 40.0) ** 2 + ((x - 50) / 45.0) ** 2 <= 1
  hu[body] = 40.0 + rng.normal(0, 10, body.sum())
  lumen = np.zeros(hu.shape, bool)
  mask = np.zeros(hu.shape, bool)
  for v in (ASC, DESC):
    d = np.hypot(y - v["y"], x - v["x"])
    lumen |= (d <= v["r"]) & (z >= v["z0"])
    mask |= (d <= v["r"] + 1.5) & (z >= v["z0"])
  # arch: a band joining both at the top (not round in axial slices)
  t = np.clip(
    ((y - ASC["y"]) * (DESC["y"] - ASC["y"]) + (x - ASC["x"]) * (DESC["x"] - ASC["x"]))
    / float((DESC["y"] - ASC["y"]) ** 2 + (DESC["x"] - ASC["x"]) ** 2),
    0,
    1,
  )
  dseg = np.hypot(
    y - (ASC["y"] + t * (DESC["y"] - ASC["y"])), x - (ASC["x"] + t * (DESC["x"] - ASC["x"]))
  )
  lumen |= (dseg <= 10) & (z >= ARCH_Z)
  mask |= (dseg <= 11.5) & (z >= ARCH_Z)
  hu[lumen] = lumen_hu + rng.normal(0, lumen_sd, lumen.sum())
  if wall_calcium:
    # bright calcium plaques on the ascending wall at the root level, inside the mask
    d = np.hypot(y - ASC["y"], x - ASC["x"])
    ring = (d > ASC["r"] - 1.0) & (d <= ASC["r"] + 1.5) & (z >= ASC["z0"]) & (z < ASC["z0"] + 12)
    hu[ring] = 1500.0
  return Scan(hu, SPACING), mask


def test_mask_threshold_excludes_wall_calcium_and_picks_ascending():
  scan, mask = _phantom(wall_calcium=True)
  roi = threshold.ccta_threshold(scan, aorta_mask=mask, roi_size_mm=ROI)
  assert roi.source == "mask"
  # lumen: 400 +- 20 HU -> threshold about 460 HU
  assert abs(roi.mean_hu - 400) < 5
  assert 10 < roi.sd_hu < 25
  assert 440 < roi.threshold_hu < 480
  # ascending (anterior) aorta at the lowest level (root), not the descending aorta
  assert abs(roi.centre[1] - ASC["y"]) <= 1 and abs(roi.centre[2] - ASC["x"]) <= 1
  assert roi.box[0].start == ASC["z0"] + 2  # root level (3 mm erosion = 2 slices at 1.5 mm)
  # mean + 3 SD of the whole mask as is would be inflated by the wall calcium
  naive = scan.hu[mask]
  assert naive.mean() + 3 * naive.std() > 700
  assert not np.any(roi.voxels & (scan.hu > 1000))


def test_robust_stats_drop_outliers_surviving_erosion():
  scan, mask = _phantom()
  hu = scan.hu.copy()
  hu[ASC["z0"] + 6, ASC["y"], ASC["x"] - 3 : ASC["x"] + 4] = 2000.0  # a streak inside the lumen
  roi = threshold.ccta_threshold(scan.with_array(hu), aorta_mask=mask, roi_size_mm=ROI)
  assert roi.threshold_hu < 480


def test_automatic_roi_on_phantom():
  scan, _ = _phantom()
  roi = threshold.ccta_threshold(scan, roi_size_mm=ROI)
  assert roi.source == "auto"
  assert abs(roi.centre[1] - ASC["y"]) <= 2 and abs(roi.centre[2] - ASC["x"]) <= 2
  assert 440 < roi.threshold_hu < 480


def test_no_aorta_raises():
  scan = Scan(np.full((20, 40, 40), 40.0, np.float32), (1.5, 1.0, 1.0))
  with pytest.raises(threshold.NoAortaError):
    threshold.ccta_threshold(scan, roi_size_mm=ROI)
  with pytest.raises(threshold.NoAortaError):
    threshold.ccta_threshold(scan, aorta_mask=None, roi_size_mm=ROI)


def test_decide_domain():
  scan, mask = _phantom()
  domain, reason = threshold.decide_domain(scan)
  assert domain == "ccta" and "HU" in reason
  assert threshold.decide_domain(scan, mask)[0] == "ccta"
  ncct, _ = _phantom(lumen_hu=45.0, lumen_sd=10.0)
  assert threshold.decide_domain(ncct, mask)[0] == "ncct"
  domain, reason = threshold.decide_domain(ncct)
  assert domain == "ncct" and reason


def _read_real(name):
  sitk = pytest.importorskip("SimpleITK")
  path = REALDATA / name
  if not path.exists():
    pytest.skip(f"real data {path} absent (expected under ../shared/realdata)")
  img = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
  return sitk, img


def test_automatic_roi_on_real_contrast_ct_lands_in_aortic_lumen():
  sitk, img = _read_real("contrast_chest_ct_1.nii.gz")
  hu = sitk.GetArrayFromImage(img).astype(np.float32)
  scan = Scan(hu, tuple(img.GetSpacing()[::-1]), tuple(img.GetOrigin()), tuple(img.GetDirection()))
  roi = threshold.ccta_threshold(scan, roi_size_mm=ROI)
  assert roi.source == "auto"
  vals = hu[roi.voxels]
  assert vals.size >= 200
  assert 200 < vals.mean() < 600, vals.mean()  # contrast-filled lumen
  assert vals.std() < 0.2 * vals.mean()  # homogeneous: no wall, no calcium, no myocardium
  assert roi.threshold_hu > 300
  # not in the pulmonary artery (same grid)
  _, pa_img = _read_real("contrast_chest_ct_1_pulmonary_artery.nii.gz")
  pa = sitk.GetArrayFromImage(pa_img) > 0
  assert pa.shape == hu.shape
  assert not np.any(roi.voxels & pa)
  # not in the heart (mask on a larger grid: resample by physical coordinates)
  _, heart_img = _read_real("contrast_chest_ct_1_heart.nii.gz")
  heart = sitk.Resample(heart_img, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
  heart = sitk.GetArrayFromImage(heart) > 0
  assert heart.any()
  assert not np.any(roi.voxels & heart)
  assert threshold.decide_domain(scan)[0] == "ccta"


@pytest.mark.parametrize("touch_border", [False, True])
def test_erode_mm_on_bounding_box_equals_whole_volume(touch_border):
  rng = np.random.default_rng(3)
  mask = ndimage.binary_dilation(rng.random((20, 30, 40)) > 0.995, iterations=3)
  mask[:3] = False
  if touch_border:
    mask[:, :6, 10:20] = True
  spacing = (1.5, 0.7, 0.7)
  whole = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1] > 1.4
  got = threshold._erode_mm(mask, spacing, 1.4)
  assert got.any() and np.array_equal(got, whole)
  assert not threshold._erode_mm(np.zeros_like(mask), spacing, 1.4).any()


def _count_searches(monkeypatch):
  """Counts calls of the automatic search (`threshold._chain_lumen`, whatever grid it runs on)."""
  calls = []
  search = threshold._chain_lumen

  def counted(*args, **kwargs):
    calls.append(args[0].shape)
    return search(*args, **kwargs)

  monkeypatch.setattr(threshold, "_chain_lumen", counted)
  return calls


@pytest.mark.parametrize("domain", ["auto", "ccta"])
def test_choose_threshold_searches_the_aorta_once(monkeypatch, tiny_config, domain):
  scan, _ = _phantom()
  calls = _count_searches(monkeypatch)
  got_domain, thr, info, _ = threshold.choose_threshold(scan, domain, None, tiny_config)
  assert got_domain == "ccta" and info["threshold"]["method"].endswith("(auto)")
  assert len(calls) == 1
  # on the search grid, not the scan's own (1.5 x 1 x 1 mm -> 1.5 mm)
  assert calls[0] == (48, 67, 67)
  assert thr == threshold.ccta_threshold(scan, roi_size_mm=ROI).threshold_hu


def _native_search_threshold(scan):
  """The threshold of the search run on the scan's own grid (`find_ascending_aorta`)."""
  lumen = threshold.find_ascending_aorta(scan)
  return threshold._roi_from_lumen(scan, lumen, (18.0, 14.0, 14.0), "auto").threshold_hu


# The coarse search's threshold agrees with the search on the scan's own grid within this (HU).
COARSE_TOLERANCE_HU = 2.0


@pytest.mark.parametrize("seed,lumen_hu", [(0, 400.0), (1, 300.0), (2, 550.0)])
def test_coarse_search_threshold_matches_the_native_search_on_phantoms(seed, lumen_hu):
  scan, _ = _phantom(lumen_hu=lumen_hu, lumen_sd=25.0, seed=seed)
  native = _native_search_threshold(scan)
  coarse = threshold.ccta_threshold(scan, roi_size_mm=ROI).threshold_hu
  assert native != coarse  # the two searches ran on different grids
  assert abs(native - coarse) <= COARSE_TOLERANCE_HU, (native, coarse)


def test_coarse_search_threshold_matches_the_native_search_on_real_contrast_ct():
  from cac_jax.data import preprocess

  sitk, img = _read_real("contrast_chest_ct_1.nii.gz")
  hu = sitk.GetArrayFromImage(img).astype(np.float32)
  scan = Scan(hu, tuple(img.GetSpacing()[::-1]), tuple(img.GetOrigin()), tuple(img.GetDirection()))
  # On its own 1.5 mm grid the search grid is the scan's: the same threshold.
  assert threshold.ccta_threshold(scan, roi_size_mm=ROI).threshold_hu == _native_search_threshold(
    scan
  )
  fine = preprocess.resample(scan, (0.6, 0.6, 0.7), order=1)
  native = _native_search_threshold(fine)
  coarse = threshold.ccta_threshold(fine, roi_size_mm=ROI).threshold_hu
  assert abs(native - coarse) <= COARSE_TOLERANCE_HU, (native, coarse)
