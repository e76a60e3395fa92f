"""The automatic heart region on phantoms (tiny config), an abdominal crop and the real CT."""

import dataclasses

import numpy as np
import pytest

from cac_jax import phantoms
from cac_jax.data import volume_io
from cac_jax.data.scan import Scan
from cac_jax.labels import CORONARY_CLASSES
from cac_jax.scoring import heart_region, pipeline, postprocess
from configs import paper

DILATION_MM = paper.get_config().scoring.heart_dilation_mm


@pytest.mark.parametrize(
  "domain,seed", [("chest_ncct", 1000), ("cardiac_ncct", 1011), ("ccta", 1000)]
)
def test_region_holds_the_coronary_calcium_and_is_heart_sized(tiny_config, domain, seed):
  # cardiac_ncct 1011: a field of view that cuts the spine off (the sternum must not be taken for it).
  case = phantoms.generate_case(domain, seed, tiny_config)
  coronary = np.isin(case.labels, CORONARY_CLASSES)
  assert coronary.sum() > 0
  m = heart_region.measure(case.scan, case.heart_mask, coronary, DILATION_MM)
  assert m["found"]
  assert m["coronary_inside"] / m["coronary_voxels"] >= 0.99
  assert 0.8 < m["volume_ratio"] < 3.5 and m["dice"] > 0.4


def test_abdominal_crop_has_no_heart_and_no_coronary_score(tiny_config, tiny_params):
  case = phantoms.generate_case("chest_ncct", 1000, tiny_config)
  first_heart_slice = int(np.nonzero(case.heart_mask.any(axis=(1, 2)))[0][0])
  crop = dataclasses.replace(case.scan, hu=case.scan.hu[:first_heart_slice].copy(), source=None)
  found = heart_region.find_heart(crop, DILATION_MM)
  assert not found.found and not found.mask.any() and "no heart" in found.notes[0]
  res = pipeline.score_scan(crop, tiny_params, tiny_config, domain="ncct", auto_heart=True)
  assert res.report["coronary_score"] is False and not res.classes.any()
  assert res.report["heart_region"] == {
    "source": "auto",
    "found": False,
    "volume_ml": pytest.approx(found.volume_ml, abs=0.1),
  }
  assert res.report["settings"]["heart_filter"] is False
  assert any("no heart found" in w for w in res.report["warnings"])


def test_no_lungs_means_no_heart():
  flat = np.full((20, 30, 30), 40.0, np.float32)
  found = heart_region.find_heart(Scan(flat, (3.0, 3.0, 3.0)), DILATION_MM)
  assert not found.found and "no lungs" in found.notes[0]


def test_real_contrast_ct_dice_against_its_heart_mask(realdata):
  scan = volume_io.read_scan(realdata / "contrast_chest_ct_1.nii.gz")
  heart = volume_io.read_mask(realdata / "contrast_chest_ct_1_heart.nii.gz", scan) > 0
  m = heart_region.measure(scan, heart, None, DILATION_MM)
  # Measured 0.72 (docs/scoring.md); the TotalSegmentator mask also holds the pulmonary veins.
  assert m["found"] and m["dice"] > 0.65
  assert 0.7 < m["volume_ratio"] < 1.5
  region = postprocess.heart_region(
    heart_region.find_heart(scan, DILATION_MM).mask, scan.spacing, DILATION_MM
  )
  assert (region & heart).sum() / heart.sum() > 0.9


def test_oversized_region_is_found_with_a_warning():
  # Two lung slabs 240 mm apart with nothing but soft tissue (and no spine) between them: a
  # 10-litre "mediastinum". Found (it is between lungs and thick), but flagged.
  hu = np.full((60, 100, 120), 40.0, np.float32)
  hu[:, 10:90, :20] = -850.0
  hu[:, 10:90, 100:] = -850.0
  found = heart_region.find_heart(Scan(hu, (3.0, 3.0, 3.0)), DILATION_MM)
  assert found.found and found.volume_ml > heart_region.MAX_PLAUSIBLE_ML
  assert any("spine not found" in n for n in found.notes)
  assert any("probably holds non-cardiac tissue" in n for n in found.notes)
