"""Benchmark gates and the share of the oracle gap, on hand-computed cases."""

import math

import numpy as np
import pytest

from cac_jax import labels
from cac_jax.evaluation import gates, metrics


def test_gates_pass_and_fail_on_their_thresholds():
  # The paper's own numbers: G1 passes (0.66, 73.6); G2 0.16 <= 0.41; G3 needs >= 0.41.
  g = gates.evaluate_gates(0.66, 73.6, 0.16, 0.45)
  assert [x.passed for x in g] == [True, True, True]
  g = gates.evaluate_gates(0.66, 73.6, 0.16, 0.40)
  assert [x.passed for x in g] == [True, True, False] and "0.41" in g[2].rule
  # This project's demo today: G1 fails on FP volume and on F1.
  g = gates.evaluate_gates(0.21, 1014.6, 0.14, 0.10)
  assert [x.passed for x in g] == [False, False, False]
  assert not gates.evaluate_gates(0.7, 100.1, 0.1, 0.9)[0].passed  # FP just above 100 mm³
  assert gates.evaluate_gates(0.6, 100.0, 0.35, 0.6)[1].passed  # exactly 0.60 - 0.25
  # A missing oracle never passes.
  g = gates.evaluate_gates(0.66, 73.6, 0.16, math.nan)
  assert not g[2].passed and "n/a" in g[2].value
  md = gates.gates_markdown(g)
  assert md.count("\n") == 4 and "FAIL" in md and "| G1 |" in md


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


def test_gate_intervals_are_printed_and_do_not_change_pass_or_fail():
  ci = {"G1 F1": (0.31, 0.86), "G1 FP": (12.04, 130.0), "G2 F1": (0.5, 0.95)}
  g = gates.evaluate_gates(0.58, 64.7, 0.8, 0.87, intervals=ci)
  assert [x.passed for x in g] == [x.passed for x in gates.evaluate_gates(0.58, 64.7, 0.8, 0.87)]
  assert g[0].value == "F1 0.58 [0.31, 0.86], FP 64.7 [12.0, 130.0] mm³/scan"
  assert g[1].value == "F1 0.80 [0.50, 0.95]" and g[2].value == "F1 0.87"  # none given for G3
  g = gates.evaluate_gates(0.7, 50.0, 0.1, 0.9, intervals={"G1 F1": (math.nan, math.nan)})
  assert g[0].value.startswith("F1 0.70, FP") and all(x.passed for x in g)


def _scan(ref_vox: int, tp_vox: int, fp_vox: int) -> dict:
  """`metrics.scan_metrics` of a one-row scan at 1 mm³ voxels: `ref_vox` reference LAD voxels,
  `tp_vox` of them predicted, and `fp_vox` predicted voxels beyond them."""
  ref = np.zeros((1, 1, 40), np.int32)
  pred = np.zeros_like(ref)
  ref[0, 0, :ref_vox] = labels.LAD
  pred[0, 0, :tp_vox] = labels.LAD
  pred[0, 0, ref_vox + 1 : ref_vox + 1 + fp_vox] = labels.LAD
  return metrics.scan_metrics(ref, pred, (1.0, 1.0, 1.0))


def test_calcium_free_reading_bounds_the_authors_mean():
  # 8 scans: 5 with calcium scored perfectly, 3 calcium-free of which 1 has no predicted voxel.
  scans = [_scan(10, 10, 0)] * 5 + [_scan(0, 0, 2)] * 2 + [_scan(0, 0, 0)]
  r = gates.calcium_free_reading(scans, n_resamples=100)
  assert (r.n_scans, r.n_free, r.n_free_clean) == (8, 3, 1)
  assert r.ceiling == pytest.approx(6 / 8) and r.floor == pytest.approx(1 / 8)
  # The authors' mean equals the ceiling here: every scan with calcium scores F1 1.
  authors = np.mean(gates.per_scan_values(scans, "f1_authors"))
  assert authors == pytest.approx(r.ceiling)
  assert r.f1_with_calcium == pytest.approx(1.0) and r.low == r.high == pytest.approx(1.0)
  text = r.format()
  assert "3 of 8 scans without reference calcium, 1 of them" in text and "[0.12, 0.75]" in text
  # Scans with calcium at F1 0.5 (TP 5 of 10, no FP: 2*5 / (10 + 5)) = 2/3.
  r2 = gates.calcium_free_reading([_scan(10, 5, 0), _scan(0, 0, 3)], n_resamples=50)
  assert (r2.floor, r2.ceiling) == (0.0, 0.5) and r2.f1_with_calcium == pytest.approx(2 / 3)
  # Every calcium-free scan clean, every calcium scan missed: the mean is the floor.
  r3 = gates.calcium_free_reading([_scan(10, 0, 0), _scan(0, 0, 0)], n_resamples=50)
  assert r3.floor == pytest.approx(0.5) and r3.f1_with_calcium == 0.0
  assert np.mean(
    gates.per_scan_values([_scan(10, 0, 0), _scan(0, 0, 0)], "f1_authors")
  ) == pytest.approx(r3.floor)
