"""The benchmark's fixed points and the share of the oracle gap that adaptation closes.

A domain-adaptation result means something only between two fixed points: the source
network must be good at home and fail on the target, and an oracle trained with target labels
must succeed there. The gates (issue 13; total coronary calcium, mean over test scans; the
experiment evaluates them twice, like with like, on Table 2's columns after FP reduction and on
those without it: `cac_jax.studies.experiment.GATE_SETS`):

  G1 source at home      NCCT network on NCCT test: F1 >= 0.60 and FP <= 100 mm³/scan
                         (the paper: 0.66 and 73.6)
  G2 the shift hurts     NCCT network on CCTA test: F1 <= F1(G1) - 0.25 (paper 0.66 -> 0.16)
  G3 target learnable    oracle (same architecture and budget, CCTA labels) on CCTA test:
                         F1 >= F1(G2) + 0.25

F1 here is averaged as the authors' evaluation script does (`metrics.StructureMetrics.f1_authors`:
every test scan counts; one without reference calcium counts 1 if nothing is predicted, else 0),
since the thresholds are the paper's numbers and those were averaged that way.

The gap share of an adapted network is (F1_adapted - F1_source) / (F1_oracle - F1_source)
on the same test scans: 0 = no better than the source network, 1 = as good as the oracle.
It is undefined (NaN, never a division by ~0) when the oracle beats the source network by
less than `MIN_ORACLE_GAP` F1. Its 95 % interval resamples test scans with replacement
(the same resample for the three networks: they are scored on the same scans).

Each gate value carries a 95 % bootstrap interval over its test scans too: with 8 NCCT and 16
CCTA test phantoms, about half of them calcium-free, one draw of the test set moves a gate's F1
by tenths (docs/results.md), and the interval shows how much of a pass or a fail that is. Pass
and fail still read the means, as the gates define them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math

import numpy as np

G1_MIN_F1 = 0.60
G1_MAX_FP_MM3 = 100.0
G2_MIN_DROP = 0.25
G3_MIN_GAIN = 0.25
MIN_ORACLE_GAP = 0.05  # F1: below this the gap share is undefined


@dataclasses.dataclass(frozen=True)
class Gate:
  """One gate: `value` (F1 or "F1 / FP mm³") against `rule`, and whether it passed.
  `passed` is False when a value is missing (NaN)."""

  name: str
  what: str
  value: str
  rule: str
  passed: bool


def _fmt(x: float, digits: int = 2) -> str:
  return "n/a" if not np.isfinite(x) else f"{x:.{digits}f}"


def _fmt_ci(x: float, ci: tuple[float, float] | None, digits: int = 2) -> str:
  """`x`, and ` [low, high]` when an interval is given and finite."""
  if ci is None or not all(np.isfinite(ci)):
    return _fmt(x, digits)
  return f"{_fmt(x, digits)} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def bootstrap_mean(
  groups: Sequence[Sequence[float]], n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
  """Mean over groups (seeds) of each group's mean over its scans, with a 95 % percentile
  bootstrap interval (every group's scans resampled with replacement).

  Args:
    groups: per group, one value per test scan (NaN entries skipped, as in the table's means).

  Returns:
    (mean, low, high); all NaN when a group has no finite value.
  """
  arrs = [np.asarray(g, dtype=float) for g in groups]
  arrs = [a[np.isfinite(a)] for a in arrs]
  if not arrs or any(a.size == 0 for a in arrs):
    return math.nan, math.nan, math.nan
  rng = np.random.default_rng(seed)
  reps = np.mean(
    [a[rng.integers(a.size, size=(n_resamples, a.size))].mean(axis=1) for a in arrs], axis=0
  )
  low, high = np.percentile(reps, [2.5, 97.5])
  return float(np.mean([a.mean() for a in arrs])), float(low), float(high)


def evaluate_gates(
  source_ncct_f1: float,
  source_ncct_fp_mm3: float,
  source_ccta_f1: float,
  oracle_ccta_f1: float,
  intervals: Mapping[str, tuple[float, float]] | None = None,
) -> list[Gate]:
  """G1-G3 from mean total-coronary F1 (and FP volume in mm³/scan).

  Args:
    source_ncct_f1, source_ncct_fp_mm3: the NCCT network on the NCCT test scans.
    source_ccta_f1: the NCCT network on the CCTA test scans.
    oracle_ccta_f1: the CCTA-trained oracle on the CCTA test scans (NaN: no oracle).
    intervals: optional 95 % intervals printed beside the values, keyed "G1 F1", "G1 FP",
      "G2 F1", "G3 F1"; they do not change pass or fail.
  """
  ci = dict(intervals or {})
  g1 = (
    np.isfinite(source_ncct_f1)
    and np.isfinite(source_ncct_fp_mm3)
    and source_ncct_f1 >= G1_MIN_F1
    and source_ncct_fp_mm3 <= G1_MAX_FP_MM3
  )
  g2_max = source_ncct_f1 - G2_MIN_DROP
  g2 = np.isfinite(source_ccta_f1) and np.isfinite(g2_max) and source_ccta_f1 <= g2_max
  g3_min = source_ccta_f1 + G3_MIN_GAIN
  g3 = np.isfinite(oracle_ccta_f1) and np.isfinite(g3_min) and oracle_ccta_f1 >= g3_min
  return [
    Gate(
      "G1",
      "source at home: NCCT network on NCCT test",
      f"F1 {_fmt_ci(source_ncct_f1, ci.get('G1 F1'))}, "
      f"FP {_fmt_ci(source_ncct_fp_mm3, ci.get('G1 FP'), 1)} mm³/scan",
      f"F1 >= {G1_MIN_F1:.2f} and FP <= {G1_MAX_FP_MM3:.0f} mm³/scan",
      bool(g1),
    ),
    Gate(
      "G2",
      "the shift hurts: NCCT network on CCTA test",
      f"F1 {_fmt_ci(source_ccta_f1, ci.get('G2 F1'))}",
      f"F1 <= G1 F1 - {G2_MIN_DROP:.2f} = {_fmt(g2_max)}",
      bool(g2),
    ),
    Gate(
      "G3",
      "the target is learnable: CCTA oracle on CCTA test",
      f"F1 {_fmt_ci(oracle_ccta_f1, ci.get('G3 F1'))}",
      f"F1 >= G2 F1 + {G3_MIN_GAIN:.2f} = {_fmt(g3_min)}",
      bool(g3),
    ),
  ]


def gates_markdown(gates: Sequence[Gate]) -> str:
  lines = ["| gate | what | measured | pass if | result |", "|---|---|---|---|---|"]
  for g in gates:
    lines.append(
      f"| {g.name} | {g.what} | {g.value} | {g.rule} | {'pass' if g.passed else 'FAIL'} |"
    )
  return "\n".join(lines)


def gap_share(
  f1_adapted: float, f1_source: float, f1_oracle: float, min_gap: float = MIN_ORACLE_GAP
) -> float:
  """(F1_adapted - F1_source) / (F1_oracle - F1_source); NaN when the oracle gap < `min_gap`
  or any input is NaN."""
  gap = f1_oracle - f1_source
  if not (np.isfinite(f1_adapted) and np.isfinite(gap)) or gap < min_gap:
    return math.nan
  return float((f1_adapted - f1_source) / gap)


@dataclasses.dataclass(frozen=True)
class GapShare:
  """A gap share with its 95 % bootstrap interval over test scans.

  `share` is NaN when undefined (`note` says why); `low`/`high` are NaN when fewer than
  95 % of the resamples had a defined share.
  """

  share: float
  low: float
  high: float
  n_scans: int
  note: str = ""

  def format(self) -> str:
    if not np.isfinite(self.share):
      return f"undefined ({self.note})" if self.note else "undefined"
    ci = f" [{self.low:.2f}, {self.high:.2f}]" if np.isfinite(self.low) else " [interval undefined]"
    return f"{self.share:.2f}{ci}"


def _per_scan(values: Sequence[float]) -> np.ndarray:
  return np.asarray(values, dtype=float)


def bootstrap_gap_share(
  adapted: Sequence[Sequence[float]],
  source: Sequence[Sequence[float]],
  oracle: Sequence[Sequence[float]],
  n_resamples: int = 2000,
  seed: int = 0,
  min_gap: float = MIN_ORACLE_GAP,
) -> GapShare:
  """Gap share of the mean over groups (seeds), with a 95 % percentile bootstrap interval.

  Args:
    adapted, source, oracle: per group (one per experiment seed), per-scan F1 of the same test
      scans in the same order (NaN for a scan without reference calcium: skipped, as in the
      table's means).
    n_resamples: bootstrap resamples; each resamples every group's scans with replacement and
      takes the mean over groups of the per-group shares.

  Returns:
    `GapShare` whose `share` is the mean over groups of each group's share (NaN if any group's
    share is undefined).
  """
  groups = [(_per_scan(a), _per_scan(s), _per_scan(o)) for a, s, o in zip(adapted, source, oracle)]
  if not groups or any(not (a.shape == s.shape == o.shape) for a, s, o in groups):
    raise ValueError(
      "adapted, source and oracle need the same number of groups and scans per group"
    )
  n_scans = sum(a.size for a, _, _ in groups)

  def share(idx_per_group) -> float:
    shares = []
    for (a, s, o), idx in zip(groups, idx_per_group):
      with np.errstate(invalid="ignore"):
        means = [np.nanmean(x[idx]) if np.isfinite(x[idx]).any() else math.nan for x in (a, s, o)]
      shares.append(gap_share(*means, min_gap=min_gap))
    return float(np.mean(shares)) if all(np.isfinite(shares)) else math.nan

  point = share([np.arange(a.size) for a, _, _ in groups])
  if not np.isfinite(point):
    gaps = []
    for _, s, o in groups:
      with np.errstate(invalid="ignore"):
        gaps.append(np.nanmean(o) - np.nanmean(s))
    note = (
      "oracle F1 - source F1 = "
      + ", ".join(_fmt(g, 3) for g in gaps)
      + f", below {min_gap:.2f} or n/a"
    )
    return GapShare(math.nan, math.nan, math.nan, n_scans, note)
  rng = np.random.default_rng(seed)
  reps = np.array(
    [share([rng.integers(a.size, size=a.size) for a, _, _ in groups]) for _ in range(n_resamples)]
  )
  ok = reps[np.isfinite(reps)]
  if ok.size < 0.95 * n_resamples:
    return GapShare(
      point,
      math.nan,
      math.nan,
      n_scans,
      f"share undefined in {n_resamples - ok.size} of {n_resamples} resamples",
    )
  low, high = np.percentile(ok, [2.5, 97.5])
  return GapShare(point, float(low), float(high), n_scans)


@dataclasses.dataclass(frozen=True)
class CalciumFreeReading:
  """How a gate's mean authors' F1 splits between test scans with and without calcium.

  Under the authors' averaging a scan without reference calcium counts F1 1 only when not one
  voxel is predicted, else 0. With `n_free` of `n_scans` calcium-free and `n_free_clean` of
  them clean, the mean F1 over all scans lies in [`floor`, `ceiling`] =
  [n_free_clean, n_scans - n_free + n_free_clean] / n_scans, however the scans with calcium are
  scored (`f1_with_calcium`: their mean F1, with its 95 % bootstrap interval). With about half
  the phantoms calcium-free this range, not the calcium, can decide a gate.
  """

  n_scans: int
  n_free: int
  n_free_clean: int
  f1_with_calcium: float
  low: float
  high: float

  @property
  def floor(self) -> float:
    return self.n_free_clean / self.n_scans if self.n_scans else math.nan

  @property
  def ceiling(self) -> float:
    return (self.n_scans - self.n_free) / self.n_scans + self.floor if self.n_scans else math.nan

  def format(self) -> str:
    n_cal = self.n_scans - self.n_free
    return (
      f"{self.n_free} of {self.n_scans} scans without reference calcium, "
      f"{self.n_free_clean} of them without a predicted voxel (F1 1; the others 0), so the "
      f"mean F1 lies in [{_fmt(self.floor)}, {_fmt(self.ceiling)}] whatever the scans with "
      f"calcium score; over those {n_cal} F1 {_fmt_ci(self.f1_with_calcium, (self.low, self.high))}"
    )


def calcium_free_reading(
  per_scan_metrics: Sequence[Mapping], structure: str = "total", n_resamples: int = 2000
) -> CalciumFreeReading:
  """`CalciumFreeReading` of one test set from `metrics.scan_metrics` outputs."""
  ms = [m[structure] for m in per_scan_metrics]
  free = [m for m in ms if not m.has_reference]
  clean = sum(m.pred_mm3 == 0 for m in free)
  mean, low, high = bootstrap_mean([[m.f1 for m in ms if m.has_reference]], n_resamples)
  return CalciumFreeReading(len(ms), len(free), int(clean), mean, low, high)


def per_scan_values(
  per_scan_metrics: Sequence[Mapping], field: str, structure: str = "total"
) -> list[float]:
  """One measure of `structure` per scan from `cac_jax.evaluation.metrics.scan_metrics`
  outputs: e.g. `field` "f1" (NaN where the scan has neither reference nor predicted calcium),
  "f1_authors" (defined for every scan, as the authors' evaluation averages it) or "fp_mm3"."""
  return [float(getattr(m[structure], field)) for m in per_scan_metrics]
