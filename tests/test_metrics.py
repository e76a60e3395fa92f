"""Hand-computed checks of cac_jax.evaluation.metrics (every expected number derived in the comments)."""

import dataclasses
import math

import numpy as np
import pytest

from cac_jax.evaluation import metrics

LAD, LCX, RCA, AORTA = 1, 2, 3, 4
SPACING = (0.5, 1.0, 1.0)  # voxel volume 0.5 mm³


def _volume_case():
  """LAD: 3 reference voxels (one lesion); prediction hits 2 of them and adds 3 FP voxels."""
  ref = np.zeros((1, 6, 12), np.int32)
  pred = np.zeros_like(ref)
  ref[0, 0, 0:3] = LAD
  pred[0, 0, 0:2] = LAD  # 2 TP, 1 FN
  pred[0, 4, 0:3] = LAD  # 3 FP voxels, one FP lesion
  ref[0, 5, 8] = AORTA  # non-coronary reference: ignored by coronary metrics
  return ref, pred


def test_volume_and_lesion_single_artery():
  ref, pred = _volume_case()
  m = metrics.scan_metrics(ref, pred, SPACING)
  for name in ("LAD", "total"):
    s = m[name]
    # TP 2 × 0.5 = 1.0 mm³, FN 1 × 0.5 = 0.5 mm³, FP 3 × 0.5 = 1.5 mm³.
    assert s.tp_mm3 == pytest.approx(1.0)
    assert s.fn_mm3 == pytest.approx(0.5)
    assert s.fp_mm3 == pytest.approx(1.5)
    # sensitivity = 1.0 / 1.5 = 2/3; F1 = 2·1.0 / (2·1.0 + 1.5 + 0.5) = 2/4 = 1/2.
    assert s.sensitivity == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(0.5)
    # 1 reference lesion, found; 2 predicted lesions, one touches no reference -> 1 FP lesion.
    assert (s.ref_lesions, s.found_lesions, s.missed_lesions) == (1, 1, 0)
    assert (s.pred_lesions, s.fp_lesions) == (2, 1)
    # lesion sensitivity 1/1; lesion F1 = 2·1 / (2·1 + 1 + 0) = 2/3.
    assert s.lesion_sensitivity == pytest.approx(1.0)
    assert s.lesion_f1 == pytest.approx(2 / 3)
  for name in ("LCX", "RCA"):
    s = m[name]
    # nothing in reference or prediction: sensitivities and F1s undefined, FP 0.
    assert math.isnan(s.sensitivity) and math.isnan(s.f1)
    assert math.isnan(s.lesion_sensitivity) and math.isnan(s.lesion_f1)
    assert s.fp_mm3 == 0 and s.fp_lesions == 0 and not s.has_reference


def test_metrics_ignore_empty_surroundings():
  """The same class maps inside a larger all-zero scan give the same metrics (scan_metrics
  works in the bounding box of the calcium); no calcium at all gives FP 0 and no lesions."""
  ref, pred = _volume_case()
  big_ref = np.zeros((5,) + ref.shape[1:2] + (ref.shape[2] + 9,), ref.dtype)
  big_pred = np.zeros_like(big_ref)
  big_ref[3, :, 4:-5], big_pred[3, :, 4:-5] = ref[0], pred[0]
  got, want = (metrics.scan_metrics(r, p, SPACING) for r, p in ((big_ref, big_pred), (ref, pred)))
  assert got["LAD"].pred_lesions == 2  # the maps are in there
  np.testing.assert_equal(  # NaN == NaN here (undefined ratios of empty arteries)
    {k: dataclasses.asdict(v) for k, v in got.items()},
    {k: dataclasses.asdict(v) for k, v in want.items()},
  )
  empty = metrics.scan_metrics(np.zeros_like(big_ref), np.zeros_like(big_ref), SPACING)
  assert empty["total"].fp_mm3 == 0 and empty["total"].pred_lesions == 0


def test_artery_mixup_connectivity_and_total():
  ref = np.zeros((1, 6, 12), np.int32)
  pred = np.zeros_like(ref)
  ref[0, 0, 0:2] = LAD  # lesion A (2 voxels)
  ref[0, 0, 8] = LAD  # lesion A2
  ref[0, 1, 9] = LAD  # lesion A3: only diagonally adjacent to A2 -> separate 6-connected lesion
  ref[0, 2, 0] = LCX  # lesion B
  ref[0, 4, 0:3] = RCA  # lesion C (3 voxels)
  pred[0, 0, 0:2] = LCX  # A predicted as the wrong artery
  pred[0, 2, 0] = LCX  # B correct
  pred[0, 0, 8] = LAD  # A2 correct
  pred[0, 2, 6] = LAD  # FP
  pred[0, 4, 0] = RCA  # 1 of 3 voxels of C
  pred[0, 5, 6] = RCA  # FP
  m = metrics.scan_metrics(ref, pred, SPACING)

  t = m["total"]
  # ref coronary 8 voxels, pred coronary 7; both coronary (artery ignored): A(2), B, A2, C(1) = 5.
  # TP 5·0.5 = 2.5, FN 3·0.5 = 1.5, FP 2·0.5 = 1.0 mm³; sens 5/8; F1 = 10 / (10 + 2 + 3) = 2/3.
  assert (t.tp_mm3, t.fn_mm3, t.fp_mm3) == pytest.approx((2.5, 1.5, 1.0))
  assert t.sensitivity == pytest.approx(5 / 8)
  assert t.f1 == pytest.approx(2 / 3)
  # lesions A, A2, A3, B, C; found all but A3; pred lesions 6, of which 2 touch nothing.
  # lesion sens 4/5; lesion F1 = 8 / (8 + 2 + 1) = 8/11.
  assert (t.ref_lesions, t.found_lesions, t.missed_lesions, t.pred_lesions, t.fp_lesions) == (
    5,
    4,
    1,
    6,
    2,
  )
  assert t.lesion_sensitivity == pytest.approx(4 / 5)
  assert t.lesion_f1 == pytest.approx(8 / 11)

  s = m["LAD"]
  # ref LAD 4 voxels, pred LAD 2: TP 1 (A2), FN 3, FP 1 -> sens 1/4, F1 = 2/(2+1+3) = 1/3.
  assert (s.tp_mm3, s.fn_mm3, s.fp_mm3) == pytest.approx((0.5, 1.5, 0.5))
  assert s.sensitivity == pytest.approx(1 / 4)
  assert s.f1 == pytest.approx(1 / 3)
  # ref lesions A, A2, A3 -> found 1, missed 2; FP lesion 1 -> sens 1/3, F1 = 2/(2+1+2) = 2/5.
  assert (s.ref_lesions, s.found_lesions, s.missed_lesions, s.fp_lesions) == (3, 1, 2, 1)
  assert s.lesion_sensitivity == pytest.approx(1 / 3)
  assert s.lesion_f1 == pytest.approx(2 / 5)

  s = m["LCX"]
  # ref 1 voxel (B), pred 3 (A's 2 + B): TP 1, FN 0, FP 2 -> sens 1, F1 = 2/(2+2) = 1/2.
  assert (s.tp_mm3, s.fn_mm3, s.fp_mm3) == pytest.approx((0.5, 0.0, 1.0))
  assert s.sensitivity == pytest.approx(1.0)
  assert s.f1 == pytest.approx(0.5)
  # the predicted LCX lesion on reference LAD calcium is a FP lesion for LCX: F1 = 2/(2+1) = 2/3.
  assert (s.ref_lesions, s.found_lesions, s.pred_lesions, s.fp_lesions) == (1, 1, 2, 1)
  assert s.lesion_f1 == pytest.approx(2 / 3)

  s = m["RCA"]
  # ref 3, pred 2: TP 1, FN 2, FP 1 -> sens 1/3, F1 = 2/(2+1+2) = 2/5; lesion found, 1 FP lesion.
  assert s.sensitivity == pytest.approx(1 / 3)
  assert s.f1 == pytest.approx(2 / 5)
  assert s.lesion_sensitivity == pytest.approx(1.0)
  assert s.lesion_f1 == pytest.approx(2 / 3)


def test_six_connectivity_along_z():
  ref = np.zeros((2, 2, 2), np.int32)
  ref[0, 0, 0] = LAD
  ref[1, 0, 0] = LAD  # face neighbour along z: same lesion
  ref[1, 1, 1] = LAD  # corner neighbour only: another lesion
  pred = np.zeros_like(ref)
  pred[1, 0, 0] = LAD  # one voxel detects the whole first lesion
  s = metrics.scan_metrics(ref, pred, (1, 1, 1))["LAD"]
  assert (s.ref_lesions, s.found_lesions, s.missed_lesions) == (2, 1, 1)
  assert s.lesion_sensitivity == pytest.approx(0.5)


def test_empty_reference_conventions():
  empty = np.zeros((1, 4, 4), np.int32)
  m = metrics.scan_metrics(empty, empty, SPACING)["total"]
  # TP + FP + FN = 0: sensitivity and F1 undefined.
  assert math.isnan(m.sensitivity) and math.isnan(m.f1) and math.isnan(m.lesion_f1)
  pred = empty.copy()
  pred[0, 1, 1:3] = RCA  # 2 FP voxels = 1.0 mm³, one FP lesion
  m = metrics.scan_metrics(empty, pred, SPACING)["total"]
  assert math.isnan(m.sensitivity) and math.isnan(m.lesion_sensitivity)
  assert m.fp_mm3 == pytest.approx(1.0)
  # empty reference with FP > 0: F1 = 0 / (0 + FP + 0) = 0.
  assert m.f1 == 0.0 and m.lesion_f1 == 0.0 and m.fp_lesions == 1


def test_aggregate_mean_sd_and_pooled():
  ref, pred = _volume_case()
  empty = np.zeros_like(ref)
  fp_only = np.zeros_like(ref)
  fp_only[0, 1, 1:3] = LAD
  scans = [
    metrics.scan_metrics(ref, pred, SPACING),
    metrics.scan_metrics(empty, empty, SPACING),
    metrics.scan_metrics(empty, fp_only, SPACING),
  ]
  agg = metrics.aggregate(scans)["total"]
  assert agg.n_scans == 3 and agg.n_with_reference == 1
  # sensitivity defined only in scan 1: mean 2/3, SD undefined (n = 1).
  sens = agg.per_scan["sensitivity"]
  assert sens.n == 1 and sens.mean == pytest.approx(2 / 3) and math.isnan(sens.sd)
  # FP volume 1.5, 0, 1.0 -> mean 5/6; SD² = ((2/3)² + (5/6)² + (1/6)²) / 2 = 7/12.
  fp = agg.per_scan["fp_mm3"]
  assert fp.n == 3 and fp.mean == pytest.approx(5 / 6) and fp.sd == pytest.approx(math.sqrt(7 / 12))
  # F1 0.5, undefined, 0 -> mean 0.25 over n = 2, SD = sqrt(2·0.25² / 1) = sqrt(1/8).
  f1 = agg.per_scan["f1"]
  assert f1.n == 2 and f1.mean == pytest.approx(0.25) and f1.sd == pytest.approx(math.sqrt(1 / 8))
  # pooled: TP 1.0, FN 0.5, FP 1.5 + 1.0 = 2.5 -> sens 2/3, F1 = 2 / (2 + 2.5 + 0.5) = 2/5.
  assert agg.pooled_sensitivity == pytest.approx(2 / 3)
  assert agg.pooled_f1 == pytest.approx(2 / 5)
  # pooled lesions: found 1, missed 0, FP 1 + 0 + 1 = 2 -> F1 = 2 / (2 + 2) = 1/2.
  assert agg.pooled_lesion_f1 == pytest.approx(0.5) and agg.fp_lesions_total == 2
  assert f1.format() == "0.25 (0.35)"
  assert metrics.summarize([math.nan]).format() == "n/a (n=0)"
  # The authors' averaging: every scan counts; the empty scan is sensitivity 1 and F1 1, the
  # FP-only scan sensitivity 1 and F1 0 -> sensitivity (2/3 + 1 + 1) / 3 = 8/9, F1 (0.5 + 1 + 0) / 3.
  assert agg.per_scan["sensitivity_authors"].n == 3
  assert agg.per_scan["sensitivity_authors"].mean == pytest.approx(8 / 9)
  assert agg.per_scan["f1_authors"].n == 3
  assert agg.per_scan["f1_authors"].mean == pytest.approx(0.5)


def test_authors_averaging_is_the_limit_of_their_epsilon_formula():
  """utils/util.py:113-114 of the authors' code: (TP + 1e-5) / (TP + FN + 1e-5) and
  (2 TP + 1e-5) / (2 TP + FP + FN + 1e-5) per scan, in voxels."""
  ref, pred = _volume_case()
  empty = np.zeros_like(ref)
  fp_only = np.zeros_like(ref)
  fp_only[0, 1, 1:3] = LAD
  for r, p in ((ref, pred), (empty, empty), (empty, fp_only), (ref, empty)):
    m = metrics.scan_metrics(r, p, SPACING)["total"]
    tp, fn, fp = (
      int(np.sum(np.isin(r, (1, 2, 3)) & np.isin(p, (1, 2, 3)))),
      int(np.sum(np.isin(r, (1, 2, 3)) & ~np.isin(p, (1, 2, 3)))),
      int(np.sum(~np.isin(r, (1, 2, 3)) & np.isin(p, (1, 2, 3)))),
    )
    assert m.sensitivity_authors == pytest.approx((tp + 1e-5) / (tp + fn + 1e-5), abs=1e-4)
    assert m.f1_authors == pytest.approx((2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5), abs=1e-4)


def test_spearman():
  # ranks 1,2,3,4 vs 1,3,2,4: Σd² = 2 -> rho = 1 - 6·2 / (4·(16 - 1)) = 0.8.
  r = metrics.spearman([1, 2, 3, 4], [10, 30, 20, 40])
  assert r.rho == pytest.approx(0.8) and r.n == 4 and not r.note
  # Exact p: of the 24 pairings of 4 ranks, |rho| >= 0.8 for Σd² <= 2 (identity + 3 adjacent
  # swaps) or >= 18 (the reversal and its 3 adjacent swaps): 8/24 (the t approximation: 0.2).
  assert r.p_method == "exact" and r.pvalue == pytest.approx(1 / 3)
  big = metrics.spearman(np.arange(12), np.arange(12) ** 2)
  assert big.p_method == "t approximation" and big.rho == pytest.approx(1.0)
  c = metrics.spearman([1, 2, 3], [5, 5, 5])
  assert math.isnan(c.rho) and "constant" in c.note
  assert math.isnan(metrics.spearman([1], [2]).rho)


def test_bland_altman_exact_regression():
  # means 1, 4, 9, 16 (√m = 1..4); |d| = 1 + 0.5·√m = 1.5, 2, 2.5, 3 with alternating signs.
  m = np.array([1.0, 4.0, 9.0, 16.0])
  d = np.array([1.5, -2.0, 2.5, -3.0])
  ref, pred = m - d / 2, m + d / 2  # (0.25, 1.75), (5, 3), (7.75, 10.25), (17.5, 14.5)
  ba = metrics.bland_altman(ref, pred, min_heteroskedastic_n=3)
  # bias = (1.5 - 2 + 2.5 - 3) / 4 = -0.25; OLS exact: b = 1, a = 0.5.
  assert ba.bias == pytest.approx(-0.25)
  assert ba.b == pytest.approx(1.0) and ba.a == pytest.approx(0.5)
  assert ba.n == 4
  np.testing.assert_allclose(ba.mean, m)
  np.testing.assert_allclose(ba.diff, d)
  # at m = 4: half-width = 1.96·√(π/2)·(1 + 0.5·2) = 3.92·√(π/2).
  half = 3.92 * math.sqrt(math.pi / 2)
  lo, hi = ba.limits(4.0)
  assert lo == pytest.approx(-0.25 - half) and hi == pytest.approx(-0.25 + half)
  np.testing.assert_allclose(
    ba.upper(np.array([0.0, 16.0])), -0.25 + 1.96 * math.sqrt(math.pi / 2) * np.array([1.0, 3.0])
  )
  with pytest.raises(ValueError, match="at least 3"):
    metrics.bland_altman([1, 2], [1, 2])
  # all means equal: slope undefined -> a = 0, b = mean |d| = (1 + 1 + 1) / 3.
  flat = metrics.bland_altman([1.5, 2.5, 1.5], [2.5, 1.5, 2.5], min_heteroskedastic_n=3)
  assert flat.a == 0.0 and flat.b == pytest.approx(1.0) and flat.bias == pytest.approx(1 / 3)


def test_agatston_categories():
  cats = metrics.agatston_category([0, 0.5, 10, 10.5, 100, 101, 400, 401])
  np.testing.assert_array_equal(cats, [0, 1, 1, 2, 2, 3, 3, 4])
  with pytest.raises(ValueError):
    metrics.agatston_category([-1])


def test_weighted_kappa_by_hand():
  # confusion (rows ref, cols pred) [[2,1,0],[0,2,1],[0,0,2]], N = 8, k = 3.
  pairs = [(0, 0)] * 2 + [(0, 1)] + [(1, 1)] * 2 + [(1, 2)] + [(2, 2)] * 2
  ref, pred = zip(*pairs)
  k = metrics.weighted_kappa(ref, pred, 3)
  np.testing.assert_array_equal(k.confusion, [[2, 1, 0], [0, 2, 1], [0, 0, 2]])
  # weights w = 1 - |i-j|/2. p_o = (6 + 2·0.5) / 8 = 7/8.
  # rows (3, 3, 2), cols (2, 3, 3): Σ|i-j| r_i c_j = 9 + 18 + 6 + 9 + 8 + 6 = 56,
  # p_e = 1 - 56 / (2·64) = 9/16; κ = (7/8 - 9/16) / (1 - 9/16) = 5/7.
  assert k.kappa == pytest.approx(5 / 7)
  assert metrics.weighted_kappa([0, 1, 2], [0, 1, 2], 3).kappa == pytest.approx(1.0)
  single = metrics.weighted_kappa([1, 1], [1, 1], 3)
  assert math.isnan(single.kappa) and single.note


def test_agatston_kappa_five_categories():
  # ref categories (0, 1, 4), pred (0, 2, 4): k = 5, weights 1 - |i-j|/4.
  k = metrics.agatston_kappa([0, 5, 1000], [0, 50, 800])
  assert k.confusion.shape == (5, 5) and k.confusion[1, 2] == 1
  # p_o = (1 + 0.75 + 1) / 3 = 11/12. row totals r = (1,1,0,0,1), column totals c = (1,0,1,0,1);
  # Σ|i-j| r_i c_j = |0-2| + |0-4| + |1-0| + |1-2| + |1-4| + |4-0| + |4-2| = 2+4+1+1+3+4+2 = 17
  # (plus zeros on the diagonal), p_e = 1 - 17 / (4·9) = 19/36; κ = (11/12 - 19/36) / (17/36) = 14/17.
  assert k.kappa == pytest.approx(14 / 17)


def test_bland_altman_formula_text():
  ba = metrics.bland_altman(
    [0.25, 5.0, 7.75, 17.5], [1.75, 3.0, 10.25, 14.5], min_heteroskedastic_n=3
  )
  assert ba.formula() == "-0.25 ± 1.96·√(π/2)·(1 + 0.5·√m)"
  neg = metrics.BlandAltman(bias=0.0, a=-2.0, b=5.0, mean=np.zeros(3), diff=np.zeros(3))
  assert neg.formula() == "0 ± 1.96·√(π/2)·(5 - 2·√m)"


def test_bland_altman_falls_back_to_constant_limits():
  # 3 scans: d = (1, -2, 4), bias 1, SD(d) = 3 -> limits 1 ± 5.88 everywhere, not a fit on 3 points.
  ba = metrics.bland_altman([10.0, 20.0, 30.0], [11.0, 18.0, 34.0])
  assert not ba.heteroskedastic and "3 scans" in ba.note
  lo, hi = ba.limits(np.array([0.0, 100.0]))
  np.testing.assert_allclose(lo, 1 - 1.96 * 3.0)
  np.testing.assert_allclose(hi, 1 + 1.96 * 3.0)
  assert ba.formula() == "1 ± 1.96·3 (constant)"
  # 10 scans whose |d| falls steeply with m: the OLS line b + a·√m turns negative inside the
  # observed range (lower limit above the upper one), so the fit is not used.
  m = np.array([1.0, 4, 9, 16, 25, 36, 49, 64, 81, 100])
  d = np.array([9.0, -8, 7, -6, 5, -4, 3, -2, 0.5, -0.1])
  ba = metrics.bland_altman(m - d / 2, m + d / 2)
  assert not ba.heteroskedastic and "cross" in ba.note
  assert np.all(ba.lower(m) <= ba.upper(m))
  a, b = np.polyfit(np.sqrt(m), np.abs(d), 1)  # the fit it rejected: negative spread at m = 100
  assert b + a * 10.0 < 0
