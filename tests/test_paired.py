"""CCTA scores against the same patient's NCCT: categories, kappa, the paired phantoms."""

import csv
import math
import os
import pickle
import shutil

import numpy as np
import pytest

from cac_jax.evaluation import paired
from cac_jax.phantoms import lesions, variants


def _hand_kappa(cm: np.ndarray) -> float:
  k, n = cm.shape[0], cm.sum()
  po = pe = 0.0
  for i in range(k):
    for j in range(k):
      w = 1.0 - abs(i - j) / (k - 1)
      po += w * cm[i, j] / n
      pe += w * cm[i, :].sum() * cm[:, j].sum() / n**2
  return (po - pe) / (1.0 - pe)


def test_categories_confusion_and_kappa_by_hand():
  ncct = [0.0, 5.0, 50.0, 200.0, 500.0, 0.0, 10.0, 101.0]
  ccta = [0.0, 15.0, 50.0, 150.0, 0.0, 0.0, 10.0, 99.0]
  # Categories 0 | 1-10 | 11-100 | 101-400 | >400 (10 is in 1-10, 100 in 11-100).
  want_ref = [0, 1, 2, 3, 4, 0, 1, 3]
  want_pred = [0, 2, 2, 3, 0, 0, 1, 2]
  a = paired.agreement(list("abcdefgh"), ncct, ccta, ncct, ccta, n_resamples=200)
  assert a.ncct_category.tolist() == want_ref and a.ccta_category.tolist() == want_pred
  cm = np.zeros((5, 5), int)
  for r, p in zip(want_ref, want_pred):
    cm[r, p] += 1
  np.testing.assert_array_equal(a.confusion, cm)
  assert a.kappa.value == pytest.approx(_hand_kappa(cm))
  assert a.kappa.low <= a.kappa.value <= a.kappa.high
  assert a.moved == pytest.approx(3 / 8) and (a.moved_up, a.moved_down) == (1, 2)
  text = paired.markdown(a)
  assert "| 101-400 | 0 | 0 | 1 | 1 | 0 |" in text and "38% of patients (1 up, 2 down)" in text


def test_all_zero_patients():
  z = [0.0] * 5
  a = paired.agreement(list("abcde"), z, z, z, z, n_resamples=50)
  assert a.confusion[0, 0] == 5 and a.confusion.sum() == 5
  assert math.isnan(a.kappa.value) and "single category" in a.kappa_note
  assert a.moved == 0.0 and math.isnan(a.spearman.rho)
  assert "single category" in paired.markdown(a)


def test_paired_generator_draws_the_same_patient_twice(tiny_config):
  sims = variants.paired_cases(3, tiny_config)
  ncct, ccta = sims["cardiac_ncct"], sims["ccta"]
  assert pickle.dumps(ncct.patient) == pickle.dumps(ccta.patient)
  assert ncct.plans == ccta.plans and ncct.plans
  for plan in ncct.plans:
    assert pickle.dumps(lesions.lesion_shapes(plan, ncct.patient)) == pickle.dumps(
      lesions.lesion_shapes(plan, ccta.patient)
    )
  # Each acquisition its own: protocol, noise, reconstruction.
  assert ncct.protocol.kvp == 120 and ncct.protocol.thickness_mm == 3.0
  assert ccta.protocol.thickness_mm == 0.6 and ccta.protocol.iodine_hu > 0
  other = variants.paired_cases(4, tiny_config)["ccta"]
  assert pickle.dumps(other.patient) != pickle.dumps(ccta.patient)


def test_evaluate_paired_on_a_phantom_manifest(tmp_path, tiny_config):
  path = variants.write_paired_dataset(str(tmp_path / "data"), 3, 11, tiny_config)
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [r["patient"] for r in rows] == [variants.patient_id(s) for s in (11, 11, 12, 12, 13, 13)]
  preds = tmp_path / "preds"
  for r in rows:  # the reference labels as the predictions: CCTA scored as its annotator
    os.makedirs(preds / r["id"])
    shutil.copy(tmp_path / "data" / r["label"], preds / r["id"] / paired.PREDICTION_FILE)
  a, source = paired.evaluate_paired(str(preds), path)
  assert set(source.values()) == {"label"} and len(a.patients) == 3
  assert a.confusion.sum() == 3
  text = paired.write_report(a, str(tmp_path / "out"))
  for name in ("paired.md", "paired.csv", "paired_confusion.png", "paired_bland_altman.png"):
    assert (tmp_path / "out" / name).is_file(), name
  assert text.startswith("### CCTA against")
  os.remove(preds / rows[1]["id"] / paired.PREDICTION_FILE)
  with pytest.raises(ValueError, match=rows[1]["id"]):
    paired.evaluate_paired(str(preds), path)


def test_read_pairs_names_every_problem(tmp_path, tiny_config):
  path = variants.write_paired_dataset(str(tmp_path / "d"), 2, 1, tiny_config)
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  rows[0]["patient"] = rows[1]["patient"] = "p"  # renamed: still one ncct and one ccta
  rows[2]["domain"] = "ccta"  # patient_000002 now has two ccta rows
  bad = tmp_path / "d" / "bad.csv"
  with open(bad, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  pairs_ok = paired.read_pairs(path)
  assert [p.patient for p in pairs_ok] == [variants.patient_id(1), variants.patient_id(2)]
  with pytest.raises(ValueError, match="patient_000002' has 0 ncct and 2 ccta"):
    paired.read_pairs(str(bad))
  plain = tmp_path / "d" / "plain.csv"
  with open(plain, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "patient"], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  with pytest.raises(ValueError, match="needs a 'patient' column"):
    paired.read_pairs(str(plain))
