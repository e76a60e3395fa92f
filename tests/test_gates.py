"""Benchmark gates and the share of the oracle gap, on hand-computed cases."""

import math

import numpy as np
import pytest

from cac_jax import labels
from cac_jax.evaluation import gates, metrics


def _scan(ref_vox: int, tp_vox: int, fp_vox: int) -> dict:
  """`metrics.scan_metrics` of a one-row scan at 1 mm³ voxels: `ref_vox` reference LAD voxels,
  `tp_vox` of them predicted, and `fp_vox` predicted voxels beyond them."""
  ref = np.zeros((1, 1, 400), np.int32)
  pred = np.zeros_like(ref)
  ref[0, 0, :ref_vox] = labels.LAD
  pred[0, 0, :tp_vox] = labels.LAD
  pred[0, 0, ref_vox + 1 : ref_vox + 1 + fp_vox] = labels.LAD
  return metrics.scan_metrics(ref, pred, (1.0, 1.0, 1.0))


def _f1(tp: int, ref: int, fp: int = 0) -> float:
  return 2 * tp / (ref + tp + fp)


def test_gate_f1_is_read_over_the_scans_with_calcium_and_fp_over_all():
  # NCCT: 4 calcium scans (F1 1, 1, 2*8/18, 1) and 2 calcium-free ones (one with 30 mm³ FP).
  ncct = [_scan(10, 10, 0)] * 2 + [_scan(10, 8, 0), _scan(10, 10, 0)]
  ncct += [_scan(0, 0, 30), _scan(0, 0, 0)]
  ccta = [_scan(10, 2, 0)] * 4 + [_scan(0, 0, 0)]
  oracle = [_scan(10, 9, 0)] * 4 + [_scan(0, 0, 5)]
  g = gates.evaluate_gates([ncct], [ccta], [oracle], n_resamples=300)
  f1_g1 = (3 + _f1(8, 10)) / 4
  assert g[0].estimates["F1"][0] == pytest.approx(f1_g1)  # the calcium-free scans left out
  assert g[0].estimates["FP"][0] == pytest.approx(30 / 6)  # FP over all six scans
  assert g[1].estimates["F1"][0] == pytest.approx(_f1(2, 10))
  assert g[1].estimates["G1 - G2"][0] == pytest.approx(f1_g1 - _f1(2, 10))
  assert g[2].estimates["G3 - G2"][0] == pytest.approx(_f1(9, 10) - _f1(2, 10))
  assert [x.passed for x in g] == [True, True, True]
  # Identical per-scan differences on CCTA: the paired interval of G3 - G2 has no width.
  lo, hi = g[2].estimates["G3 - G2"][1:]
  assert lo == pytest.approx(hi) == pytest.approx(_f1(9, 10) - _f1(2, 10))
  # The calcium-free scans are counted beside the gates.
  assert (
    g[0].calcium_free
    == "2 of 6 scans calcium-free: 0.50 of them with no predicted voxel, FP 15.0 mm³/scan"
  )
  assert g[2].calcium_free.endswith("0.00 of them with no predicted voxel, FP 5.0 mm³/scan")
  md = gates.gates_markdown(g)
  assert md.count("\n") == 4 and "| G1 |" in md and "FAIL" not in md
  # Predicted calcium on a calcium-free scan does not move F1, only FP (under the authors'
  # averaging that scan would have counted F1 0).
  ncct2 = ncct[:-1] + [_scan(0, 0, 36)]
  g2 = gates.evaluate_gates([ncct2], [ccta], [oracle], n_resamples=100)
  assert g2[0].estimates["F1"][0] == pytest.approx(f1_g1)
  assert g2[0].estimates["FP"][0] == pytest.approx(66 / 6) and g2[0].passed


def test_gate_pass_rules_thresholds_intervals_and_readings():
  perfect, half = _scan(10, 10, 0), _scan(10, 5, 0)  # F1 1 and 2/3
  # G1 fails on FP (mean 101 mm³/scan, all on a calcium-free scan, F1 1); on F1 below 0.60.
  g = gates.evaluate_gates([[perfect, _scan(0, 0, 202)]], [[half]], None, n_resamples=50)
  assert g[0].estimates["FP"][0] == pytest.approx(101) and g[0].estimates["F1"][0] == 1.0
  assert not g[0].passed
  assert gates.evaluate_gates([[perfect, _scan(0, 0, 200)]], [[half]], None, n_resamples=50)[
    0
  ].passed
  low = gates.evaluate_gates([[_scan(10, 4, 5)]], [[half]], None, n_resamples=50)
  assert not low[0].passed and low[0].estimates["F1"][0] < 0.6
  # G2: a drop of 1/3 >= 0.25 with every resample above 0 passes ...
  g = gates.evaluate_gates([[perfect] * 4], [[half] * 4], [[perfect] * 4], n_resamples=200)
  assert g[1].passed and g[1].estimates["G1 - G2"][1] > 0
  # ... but a drop of 0.25 or more whose interval reaches 0 fails: scans that vary.
  noisy_ccta = [_scan(10, 10, 0), _scan(10, 0, 0), _scan(10, 0, 0), _scan(10, 10, 0)]
  g = gates.evaluate_gates([[perfect] * 4], [noisy_ccta], [[perfect] * 4], n_resamples=400)
  assert g[1].estimates["G1 - G2"][0] == pytest.approx(0.5) and g[1].estimates["G1 - G2"][1] <= 0
  assert not g[1].passed
  # G3 pairs by scan: an oracle one better on every scan has a tight interval however the
  # scans vary; G3 - G2 = 0.5 with an interval above 0.
  # Source F1 per scan (2/3, 0, 0, 2/3), oracle 1/3 more on each: (1, 1/3, 1/3, 1).
  source = [half, _scan(10, 0, 0), _scan(10, 0, 0), half]
  oracle = [perfect, _scan(10, 2, 0), _scan(10, 2, 0), perfect]
  g = gates.evaluate_gates([[perfect] * 4], [source], [oracle], n_resamples=400)
  d, lo, hi = g[2].estimates["G3 - G2"]
  assert d == pytest.approx(1 / 3) and lo == pytest.approx(1 / 3) and hi == pytest.approx(1 / 3)
  assert g[2].passed
  # Unpaired, the same two sets would give an interval reaching below 1/3.
  unpaired = gates.bootstrap(
    lambda a, b: gates.seed_mean(a) - gates.seed_mean(b),
    [(gates.calcium_f1(oracle),)],
    [(gates.calcium_f1(source),)],
    n_resamples=400,
  )
  assert unpaired.low < 1 / 3 - 0.1
  # No oracle: G3 fails, and says n/a.
  g = gates.evaluate_gates([[perfect]], [[half]], None, n_resamples=50)
  assert g[2].passed is False and "n/a" in g[2].value
  # A reading decides nothing.
  g = gates.evaluate_gates([[perfect] * 4], [[half] * 4], [[perfect] * 4], False, 50)
  assert [x.passed for x in g] == [None] * 3 and "| reading |" in gates.gates_markdown(g)


def test_gates_over_seeds_are_the_mean_of_the_per_seed_means():
  a = [_scan(10, 10, 0)] * 2  # seed 0: F1 1 over 2 scans
  b = [_scan(10, 5, 0)] * 4  # seed 1: F1 2/3 over 4 scans
  g = gates.evaluate_gates([a, b], [b, b], [a, a + a], n_resamples=50)
  assert g[0].estimates["F1"][0] == pytest.approx((1 + 2 / 3) / 2)
  assert g[0].estimates["F1"][1] == pytest.approx(g[0].estimates["F1"][0])  # no spread


def test_gap_share_hand_computed_and_undefined_when_the_oracle_is_no_better():
  assert gates.gap_share(0.5, 0.2, 0.8) == pytest.approx(0.5)
  assert gates.gap_share(0.1, 0.2, 0.8) == pytest.approx(-1 / 6)
  assert math.isnan(gates.gap_share(0.5, 0.2, 0.2))  # oracle = source
  assert math.isnan(gates.gap_share(0.5, 0.2, 0.24))  # gap below 0.05
  assert math.isnan(gates.gap_share(0.5, 0.3, 0.2))  # oracle worse
  assert math.isnan(gates.gap_share(math.nan, 0.2, 0.8))


def test_bootstrap_gap_share_point_interval_and_groups():
  # Per-scan F1 of 4 test scans; means: adapted 0.5, source 0.2, oracle 0.8 -> share 0.5.
  a, s, o = [0.4, 0.6, 0.5, 0.5], [0.1, 0.3, 0.2, 0.2], [0.7, 0.9, 0.8, 0.8]
  r = gates.bootstrap_gap_share([a], [s], [o], n_resamples=500)
  assert r.share == pytest.approx(0.5) and r.n_scans == 4
  assert r.low <= 0.5 <= r.high and r.low > 0
  # Identical per-scan differences: every resample gives exactly 0.5.
  assert r.high - r.low == pytest.approx(0.0, abs=1e-9)
  # NaN scans (no reference calcium) are skipped as in the table's means.
  r2 = gates.bootstrap_gap_share(
    [a + [math.nan]], [s + [math.nan]], [o + [math.nan]], n_resamples=200
  )
  assert r2.share == pytest.approx(0.5)
  # Two seeds: the mean of the per-seed shares (0.5 and 0.0).
  r3 = gates.bootstrap_gap_share([a, s], [s, s], [o, o], n_resamples=200)
  assert r3.share == pytest.approx(0.25)
  with pytest.raises(ValueError):
    gates.bootstrap_gap_share([a], [s[:3]], [o])


def test_bootstrap_gap_share_undefined_is_reported_not_divided():
  a, s = [0.4, 0.6, 0.5, 0.5], [0.1, 0.3, 0.2, 0.2]
  r = gates.bootstrap_gap_share([a], [s], [s], n_resamples=100)
  assert math.isnan(r.share) and math.isnan(r.low) and "oracle F1 - source F1 = 0.000" in r.note
  assert r.format().startswith("undefined")
  # A noisy gap: the point is defined, but many resamples are not -> no interval.
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 1, 8)
  orc = src + np.where(np.arange(8) % 2 == 0, 0.5, -0.38)
  r = gates.bootstrap_gap_share([src + 0.01], [src], [orc], n_resamples=300)
  assert np.isfinite(r.share) and math.isnan(r.low) and "resamples" in r.note
  assert "interval undefined" in r.format()


def test_bootstrap_mean_of_groups_hand_computed():
  m, lo, hi = gates.bootstrap_mean([[0.0, 1.0, 1.0, 0.0]], n_resamples=400)
  assert m == pytest.approx(0.5) and 0.0 <= lo < 0.5 < hi <= 1.0
  # Identical scans: no spread. NaN scans are skipped as in the table's means.
  assert gates.bootstrap_mean([[0.3, 0.3, math.nan]], n_resamples=50) == pytest.approx(
    (0.3, 0.3, 0.3)
  )
  # Two seeds: the mean of the per-seed means (0.2 over 2 scans, 0.8 over 4), not of all 6 scans.
  m, lo, hi = gates.bootstrap_mean([[0.2, 0.2], [0.8, 0.8, 0.8, 0.8]], n_resamples=50)
  assert m == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
  assert all(math.isnan(x) for x in gates.bootstrap_mean([[0.1], [math.nan]]))
