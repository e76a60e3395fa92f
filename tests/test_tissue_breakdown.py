"""Predicted-class volume by true phantom tissue (`cac_jax.studies.tissue_breakdown`, `launch.tissue_breakdown`)."""

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cac_jax import checkpoints, labels, models
from cac_jax.phantoms import anatomy, generate
from cac_jax.scoring import pipeline
from cac_jax.studies import experiment
from cac_jax.studies import tissue_breakdown as tb
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("air", "fat", "lumen")


def test_breakdown_hand_computed():
  # 1 x 2 x 4 voxels of 0.5 x 1 x 2 mm = 1 mm³ each.
  tissue = np.array([[[0, 1, 2, 2], [2, 2, 1, 0]]])
  reference = np.array([[[0, 0, 1, 0], [0, 3, 0, 0]]])
  predicted = np.array([[[0, 1, 1, 2], [0, 0, 0, 4]]])
  counted = np.array([[[False, True, True, True], [True, True, False, True]]])
  rows = tb.breakdown(tissue, reference, predicted, counted, (0.5, 1.0, 2.0), NAMES)
  assert set(rows) == {"fat", "lumen", "air", "reference LAD", "reference RCA"}
  np.testing.assert_array_equal(rows["fat"], [0, 1, 0, 0, 0, 0, 0])  # (0,1): fat called LAD
  np.testing.assert_array_equal(rows["lumen"], [1, 0, 1, 0, 0, 0, 0])  # (0,3) LCX, (1,0) background
  np.testing.assert_array_equal(rows["air"], [0, 0, 0, 0, 1, 0, 0])  # (1,3) called aorta
  np.testing.assert_array_equal(rows["reference LAD"], [0, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(rows["reference RCA"], [1, 0, 0, 0, 0, 0, 0])  # missed


def test_breakdown_rejects_bad_input():
  z = np.zeros((2, 2, 2), int)
  with pytest.raises(ValueError, match="predicted shape"):
    tb.breakdown(z, z, np.zeros((2, 2, 3), int), z > 0, (1, 1, 1), NAMES)
  with pytest.raises(ValueError, match="classes must be in 0..6"):
    tb.breakdown(z, z, z + 7, z == 0, (1, 1, 1), NAMES)


def test_breakdown_accumulates_means_and_writes(tmp_path):
  b = tb.Breakdown()
  b.add({"fat": np.array([2.0, 4, 0, 0, 0, 0, 0])})
  b.add({"fat": np.array([0.0, 2, 0, 0, 0, 0, 0]), "lumen": np.array([0.0, 0, 0, 10, 0, 0, 0])})
  per = b.per_scan()
  assert list(per) == ["lumen", "fat"]  # by volume per scan, largest first
  np.testing.assert_allclose(per["fat"], [1, 3, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(per["lumen"], [0, 0, 0, 5, 0, 0, 0])
  text = tb.markdown(b, "t")
  assert text.startswith("t (2 scans, mm³ per scan)")
  assert text.rstrip().splitlines()[-2:] == [
    "| lumen | 0.0 | 0.0 | 0.0 | 5.0 | 0.0 | 0.0 | 0.0 | 5.0 |",
    "| fat | 1.0 | 3.0 | 0.0 | 0.0 | 0.0 | 0.0 | 0.0 | 3.0 |",
  ]
  tb.write_csv(b, str(tmp_path / "b.csv"))
  with open(tmp_path / "b.csv", encoding="utf-8") as f:
    got = {r["row"]: float(r["LAD"]) for r in csv.DictReader(f)}
  assert got == {"fat": 3.0, "lumen": 0.0}


def test_phantom_breakdown_of_a_perfect_detector(monkeypatch):
  """A detector returning the reference: reference rows are diagonal, tissue rows background."""
  config = tiny.get_config()

  def perfect(setup, scan, params_list, config, **infer_options):
    case = generate.generate_case("ccta", 5, config)
    assert np.array_equal(case.scan.hu, scan.hu)
    return [case.labels.astype(np.int32) for _ in params_list]

  monkeypatch.setattr(pipeline, "raw_classes_many", perfect)
  b = tb.phantom_breakdown({"perfect": None}, config, "ccta", [5])["perfect"]
  case = generate.generate_case("ccta", 5, config)
  vox = float(np.prod(case.scan.spacing))
  rows = b.per_scan()
  assert b.num_scans == 1
  for name, v in rows.items():
    if name.startswith("reference "):
      k = labels.CLASS_NAMES.index(name[len("reference ") :])
      assert v[k] == pytest.approx((case.labels == k).sum() * vox) and v.sum() == pytest.approx(
        v[k]
      )
    else:
      assert name in anatomy.TISSUES and v[1:].sum() == 0
  assert sum(v.sum() for v in rows.values()) >= (case.labels > 0).sum() * vox > 0


def test_whole_scan_breakdown_classifies_every_voxel_from_130_hu(monkeypatch):
  """whole_scan: the Table 2 scoring without FP reduction (CCTA at 130 HU, no heart region);
  by default the calls inside the dilated heart at the lumen threshold."""
  config = tiny.get_config()
  seen = []

  def spy(setup, scan, params_list, config, **infer_options):
    seen.append((setup.threshold_hu, setup.region is None))
    return [np.zeros(scan.shape, np.int32) for _ in params_list]

  monkeypatch.setattr(pipeline, "raw_classes_many", spy)
  tb.phantom_breakdown({"m": None}, config, "ccta", [5], whole_scan=True)
  tb.phantom_breakdown({"m": None}, config, "ccta", [5])
  assert seen[0] == (130.0, True)
  assert seen[1][0] > 200.0 and seen[1][1] is False
  with pytest.raises(ValueError, match="whole_scan"):
    tb.phantom_breakdown({"m": None}, config, "ccta", [5], fp_settings=object(), whole_scan=True)


def test_cli_writes_one_table_per_checkpoint(tmp_path):
  config = tiny.get_config()
  p = models.init_params(config, jax.random.key(0))
  export = checkpoints.export_inference(
    tmp_path / "export", {"generator": p["generator"], "classifier": p["classifier"]}, config
  )
  out = tmp_path / "out"
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.tissue_breakdown",
      f"--checkpoints=a={export},b={export}",
      "--role=ccta_test",
      "--num_cases=1",
      f"--output_dir={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  first = experiment.first_case_seed("ccta_test", 0)
  assert f"a: ccta_test (ccta) phantoms {first}..{first}" in r.stdout
  assert sorted(os.listdir(out)) == ["a.csv", "a.md", "b.csv", "b.md"]
  a, b = ((out / f"{n}.md").read_text(encoding="utf-8").split("\n", 1) for n in "ab")
  assert a[1] == b[1] and "| true tissue |" in a[1]  # same checkpoint, same table
  bad = subprocess.run(
    [sys.executable, "-m", "launch.tissue_breakdown", f"--checkpoints={tmp_path / 'nope'}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=300,
  )
  assert bad.returncode != 0 and "tissue_breakdown: error" in bad.stderr
