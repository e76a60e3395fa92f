"""Left main on its own where the labels separate it (reference value 11; phantoms write it)."""

import numpy as np
import pytest

from cac_jax import labels
from cac_jax.data import manifest
from cac_jax.data.scan import Scan
from cac_jax.evaluation import dataset
from cac_jax.phantoms import generate, writer
from cac_jax.scoring import scores
from configs import tiny


def test_reference_encoding_round_trip():
  classes = np.zeros((2, 4, 4), np.int32)
  classes[0, :2, :2] = labels.LAD
  classes[1, 2:, 2:] = labels.RCA
  lm = np.zeros_like(classes, bool)
  lm[0, 0, :2] = True
  ref = labels.classes_to_reference(classes, lm)
  assert set(np.unique(ref)) == {0, 8, 10, labels.LEFT_MAIN_REFERENCE}
  np.testing.assert_array_equal(
    labels.reference_to_classes(ref), classes
  )  # LM is LAD for the network
  np.testing.assert_array_equal(labels.left_main_mask(ref), lm)
  assert labels.left_main_mask(labels.classes_to_reference(classes)) is None
  with pytest.raises(ValueError, match="LAD class"):
    labels.classes_to_reference(classes, classes == labels.RCA)


def _two_artery_scan():
  scan = Scan(np.zeros((3, 10, 10), np.float32), (3.0, 1.0, 1.0))
  classes = np.zeros(scan.shape, np.int32)
  classes[1, 1:3, 1:3] = labels.LAD  # left main: 4 mm², 500 HU -> Agatston 16
  classes[1, 6:8, 6:9] = labels.LAD  # LAD proper: 6 mm², 250 HU -> 12
  classes[1, 1:3, 6:8] = labels.RCA  # 4 mm², 150 HU -> 4
  hu = np.zeros(scan.shape)
  hu[1, 1:3, 1:3], hu[1, 6:8, 6:9], hu[1, 1:3, 6:8] = 500.0, 250.0, 150.0
  lm = np.zeros(scan.shape, bool)
  lm[1, 1:3, 1:3] = True
  return scan, classes, hu, lm


def test_scores_report_left_main_apart_only_when_labelled():
  scan, classes, hu, lm = _two_artery_scan()
  merged = scores.compute_scores(classes, hu, scan, "ncct")
  split = scores.compute_scores(classes, hu, scan, "ncct", left_main=lm)
  assert "LM" not in merged and not merged["left_main_separate"]
  assert any("LAD includes the left main" in n for n in merged["notes"])
  assert merged["LAD"]["agatston"] == pytest.approx(16 + 12) and merged["num_vessels"] == 2
  assert split["left_main_separate"] and split["num_vessels"] == 3
  assert split["LM"]["agatston"] == pytest.approx(16) and split["LM"][
    "volume_mm3"
  ] == pytest.approx(12)
  assert split["LAD"]["agatston"] == pytest.approx(12) and split["LAD"][
    "volume_mm3"
  ] == pytest.approx(18)
  assert split["total"] == merged["total"] and split["cac_drs"] == "A1/N3"
  rows = scores.lesion_table(classes, hu, scan, left_main=lm)
  assert [r["artery"] for r in rows] == ["LM", "LAD", "RCA"]
  assert [r["agatston"] for r in rows] == [16, 12, 4]


def test_phantom_left_main_written_read_and_evaluated(tmp_path):
  config = tiny.get_config()
  seed = 1  # its plan has a labelled left-main lesion
  assert any(p.site == "lm" for p in generate.plan_case_calcium("chest_ncct", seed, config))
  case = generate.generate_case("chest_ncct", seed, config)
  assert case.left_main is not None and case.left_main.any()
  assert np.all(case.labels[case.left_main] == labels.LAD)
  row = writer.write_case(case, str(tmp_path))
  mrow = manifest.ManifestRow(
    id=row["id"],
    image=str(tmp_path / row["image"]),
    label=str(tmp_path / row["label"]),
    heart_mask=None,
    aorta_mask=None,
    domain="ncct",
    split="test",
  )
  loaded = manifest.load_case(mrow)
  np.testing.assert_array_equal(loaded.left_main, case.left_main)
  np.testing.assert_array_equal(loaded.labels, case.labels)
  result = dataset._evaluate_case(mrow, str(tmp_path / row["label"]))  # the reference as prediction
  assert result.left_main_ref_mm3 == pytest.approx(
    case.left_main.sum() * np.prod(case.scan.spacing)
  )
  assert result.left_main_found_as_lad == 1.0 and result.left_main_ref_agatston > 0
  assert "left_main_ref_mm3" in dataset.results_csv_text(_results([result])).splitlines()[0]


def _results(cases):
  return dataset.EvaluationResults(
    cases=cases,
    summary={},
    spearman={},
    bland_altman=None,
    bland_altman_note="",
    kappa=None,
    kappa_note="",
  )
