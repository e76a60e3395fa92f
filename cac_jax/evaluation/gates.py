"""The benchmark's fixed points and the share of the oracle gap that adaptation closes.

A domain-adaptation result means something only between two fixed points: the source
network must be good at home and fail on the target, and an oracle trained with target labels
must succeed there. The gates read total coronary calcium after FP reduction
(`cac_jax.studies.experiment.GATE_SETS`; the set without FP reduction is printed as a reading
and decides nothing):

  G1 source at home      NCCT network on NCCT test: F1 >= 0.60 and FP <= 100 mm³/scan
                         (the paper: 0.66 and 73.6)
  G2 the shift hurts     NCCT network on CCTA test: F1(G1) - F1(G2) >= 0.25 and the 95 %
                         bootstrap interval of that difference above 0 (paper 0.66 -> 0.16)
  G3 target learnable    oracle (same architecture and budget, CCTA labels) on CCTA test:
                         F1(G3) - F1(G2) >= 0.25 and its interval above 0, paired by scan
                         (the oracle and the NCCT network score the same CCTA scans)

F1 is the per-scan total-coronary F1 averaged over the test scans **with reference calcium**
(`calcium_f1`: Table 2's own reading). A scan without reference calcium has no F1 to give: under
the authors' averaging it counts 1 or 0 by whether a single voxel is predicted, and with about
half the phantoms calcium-free those scans, not the calcium, decided the gates. They still count
for G1's FP bound (over all scans), and beside each gate the report prints how many there are,
the share with no predicted voxel and their mean FP volume (`CalciumFree`). Table 2 keeps the
authors' averaging in its own rows, which are what compares with the paper's numbers.

The gap share of an adapted network is (F1_adapted - F1_source) / (F1_oracle - F1_source)
on the same test scans, F1 read as the gates read it: 0 = no better than the source network,
1 = as good as the oracle. It is undefined (NaN, never a division by ~0) when the oracle beats
the source network by less than `MIN_ORACLE_GAP` F1.

Every interval is a 95 % percentile bootstrap over test scans, grouped by seed: each resample
draws every seed's scans with replacement (the same draw for networks scored on the same scans)
and takes the mean over seeds of the per-seed means.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import math

import numpy as np

G1_MIN_F1 = 0.60
G1_MAX_FP_MM3 = 100.0
G2_MIN_DROP = 0.25
G3_MIN_GAIN = 0.25
MIN_ORACLE_GAP = 0.05  # F1: below this the gap share is undefined
N_RESAMPLES = 2000


def _fmt(x: float, digits: int = 2) -> str:
  return "n/a" if not np.isfinite(x) else f"{x:.{digits}f}"


def _fmt_ci(x: float, ci: tuple[float, float] | None, digits: int = 2) -> str:
  """`x`, and ` [low, high]` when an interval is given and finite."""
  if ci is None or not all(np.isfinite(ci)):
    return _fmt(x, digits)
  return f"{_fmt(x, digits)} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A point value with its 95 % bootstrap interval (NaN where undefined)."""

  value: float
  low: float = math.nan
  high: float = math.nan

  def format(self, digits: int = 2) -> str:
    return _fmt_ci(self.value, (self.low, self.high), digits)


# A set of test scans: per seed, a tuple of per-scan arrays that share the scan axis (e.g. the
# F1 of two networks on the same scans); a bootstrap draw resamples them with the same indices.
ScanSet = Sequence[tuple[np.ndarray, ...]]


def seed_mean(scan_set: ScanSet, k: int = 0) -> float:
  """Mean over seeds of each seed's mean (NaN scans skipped) of array `k`.

  NaN if a seed has no finite value."""
  means = []
  for arrays in scan_set:
    a = np.asarray(arrays[k], dtype=float)
    if not np.isfinite(a).any():
      return math.nan
    means.append(float(np.nanmean(a)))
  return float(np.mean(means)) if means else math.nan


def bootstrap(
  statistic: Callable[..., float],
  *scan_sets: ScanSet,
  n_resamples: int = N_RESAMPLES,
  seed: int = 0,
) -> Estimate:
  """`statistic(*scan_sets)` with a 95 % percentile bootstrap interval over test scans.

  Each scan set is resampled on its own (two test sets: an unpaired difference); within a seed
  of a set every array is drawn with the same indices (paired). The interval is NaN when fewer
  than 95 % of the resamples give a finite statistic.
  """
  point = statistic(*scan_sets)
  if not np.isfinite(point):
    return Estimate(math.nan)
  rng = np.random.default_rng(seed)
  reps = []
  for _ in range(n_resamples):
    drawn = []
    for scan_set in scan_sets:
      one = []
      for arrays in scan_set:
        n = len(arrays[0])
        idx = rng.integers(n, size=n)
        one.append(tuple(np.asarray(a, dtype=float)[idx] for a in arrays))
      drawn.append(one)
    with np.errstate(invalid="ignore", divide="ignore"):
      reps.append(statistic(*drawn))
  reps = np.asarray(reps, dtype=float)
  ok = reps[np.isfinite(reps)]
  if ok.size < 0.95 * n_resamples:
    return Estimate(point)
  low, high = np.percentile(ok, [2.5, 97.5])
  return Estimate(float(point), float(low), float(high))


def bootstrap_mean(
  groups: Sequence[Sequence[float]], n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
  """Mean over groups (seeds) of each group's mean, with a 95 % percentile bootstrap interval.

  Each group's mean is over its scans (NaN entries skipped). Returns (mean, low, high), all NaN
  when a group has no finite value."""
  arrs = [np.asarray(g, dtype=float) for g in groups]
  arrs = [(a[np.isfinite(a)],) for a in arrs]
  if not arrs or any(a[0].size == 0 for a in arrs):
    return math.nan, math.nan, math.nan
  e = bootstrap(seed_mean, arrs, n_resamples=n_resamples, seed=seed)
  return e.value, e.low, e.high


def calcium_f1(per_scan_metrics: Sequence[Mapping], structure: str = "total") -> np.ndarray:
  """Per-scan F1 of `structure` where the scan has reference calcium of it, NaN elsewhere.

  The gates' reading: `metrics.scan_metrics` outputs in, float (n_scans,) out."""
  return np.array(
    [m[structure].f1 if m[structure].has_reference else math.nan for m in per_scan_metrics],
    dtype=float,
  )


@dataclasses.dataclass(frozen=True)
class CalciumFree:
  """The test scans without reference calcium: count, share without prediction, mean FP volume.

  How many there are, the share of them with no predicted voxel, and their mean FP volume
  (mm³/scan), over every seed's scans."""

  n_scans: int
  n_free: int
  clean_share: float
  fp_mm3: float

  def format(self) -> str:
    if not self.n_free:
      return f"0 of {self.n_scans} scans calcium-free"
    return (
      f"{self.n_free} of {self.n_scans} scans calcium-free: {self.clean_share:.2f} of them with "
      f"no predicted voxel, FP {self.fp_mm3:.1f} mm³/scan"
    )


def calcium_free(
  per_scan_groups: Sequence[Sequence[Mapping]], structure: str = "total"
) -> CalciumFree:
  """`CalciumFree` over the scans of every seed (`metrics.scan_metrics` outputs per seed)."""
  ms = [m[structure] for group in per_scan_groups for m in group]
  free = [m for m in ms if not m.has_reference]
  if not free:
    return CalciumFree(len(ms), 0, math.nan, math.nan)
  clean = float(np.mean([m.pred_mm3 == 0 for m in free]))
  return CalciumFree(len(ms), len(free), clean, float(np.mean([m.fp_mm3 for m in free])))


@dataclasses.dataclass(frozen=True)
class Gate:
  """One gate: `value` against `rule`, and whether it passed.

  `passed` is None for a reading that decides nothing (the set without FP reduction), False
  when a value is missing (NaN). `estimates` holds the numbers behind `value` ({name: (value,
  low, high)}), `calcium_free` the line on its test set's calcium-free scans.
  """

  name: str
  what: str
  value: str
  rule: str
  passed: bool | None
  estimates: dict = dataclasses.field(default_factory=dict)
  calcium_free: str = ""


def _ge(x: float, bound: float) -> bool:
  return bool(np.isfinite(x) and x >= bound)


def _difference(k_plus: int = 0, k_minus: int = 1) -> Callable[..., float]:
  """statistic: seed_mean of array k_plus minus seed_mean of array k_minus.

  That is for one paired set; for two sets, of the first set minus the second."""

  def stat(*sets: ScanSet) -> float:
    if len(sets) == 2:
      return seed_mean(sets[0]) - seed_mean(sets[1])
    return seed_mean(sets[0], k_plus) - seed_mean(sets[0], k_minus)

  return stat


def evaluate_gates(
  source_ncct: Sequence[Sequence[Mapping]],
  source_ccta: Sequence[Sequence[Mapping]],
  oracle_ccta: Sequence[Sequence[Mapping]] | None,
  decides: bool = True,
  n_resamples: int = N_RESAMPLES,
) -> list[Gate]:
  """G1-G3 of total coronary calcium, with 95 % bootstrap intervals over test scans.

  Args:
    source_ncct: per seed, the NCCT network's `metrics.scan_metrics` on the NCCT test scans.
    source_ccta: per seed, the NCCT network's on the CCTA test scans.
    oracle_ccta: per seed, the oracle's on the same CCTA test scans in the same order (None or
      empty: no oracle, G3 fails).
    decides: False for a reading (`Gate.passed` None).
  """
  ncct_f1 = [(calcium_f1(g),) for g in source_ncct]
  ncct_fp = [(np.array([m["total"].fp_mm3 for m in g], dtype=float),) for g in source_ncct]
  ccta_f1 = [(calcium_f1(g),) for g in source_ccta]
  boot = lambda stat, *sets: bootstrap(stat, *sets, n_resamples=n_resamples)
  g1_f1, g1_fp = boot(seed_mean, ncct_f1), boot(seed_mean, ncct_fp)
  g2_f1 = boot(seed_mean, ccta_f1)
  drop = boot(_difference(), ncct_f1, ccta_f1)
  g1_ok = _ge(g1_f1.value, G1_MIN_F1) and _ge(-g1_fp.value, -G1_MAX_FP_MM3)
  g2_ok = _ge(drop.value, G2_MIN_DROP) and _ge(drop.low, 1e-12)
  if oracle_ccta:
    paired = [(calcium_f1(o), s[0]) for o, s in zip(oracle_ccta, ccta_f1)]
    g3_f1 = boot(seed_mean, [(o,) for o, _ in paired])
    gain = boot(_difference(0, 1), paired)
  else:
    g3_f1 = gain = Estimate(math.nan)
  g3_ok = _ge(gain.value, G3_MIN_GAIN) and _ge(gain.low, 1e-12)
  result = (lambda ok: bool(ok)) if decides else (lambda ok: None)
  free_ncct = calcium_free(source_ncct).format()
  free_ccta = calcium_free(source_ccta).format()
  free_oracle = calcium_free(oracle_ccta).format() if oracle_ccta else ""
  return [
    Gate(
      "G1",
      "source at home: NCCT network on NCCT test",
      f"F1 {g1_f1.format()}, FP {g1_fp.format(1)} mm³/scan",
      f"F1 >= {G1_MIN_F1:.2f} and FP <= {G1_MAX_FP_MM3:.0f} mm³/scan",
      result(g1_ok),
      {"F1": dataclasses.astuple(g1_f1), "FP": dataclasses.astuple(g1_fp)},
      free_ncct,
    ),
    Gate(
      "G2",
      "the shift hurts: NCCT network on CCTA test",
      f"F1 {g2_f1.format()}; G1 - G2 = {drop.format()}",
      f"G1 - G2 >= {G2_MIN_DROP:.2f}, interval above 0",
      result(g2_ok),
      {"F1": dataclasses.astuple(g2_f1), "G1 - G2": dataclasses.astuple(drop)},
      free_ccta,
    ),
    Gate(
      "G3",
      "the target is learnable: CCTA oracle on CCTA test",
      f"F1 {g3_f1.format()}; G3 - G2 = {gain.format()} (paired by scan)",
      f"G3 - G2 >= {G3_MIN_GAIN:.2f}, interval above 0",
      result(g3_ok),
      {"F1": dataclasses.astuple(g3_f1), "G3 - G2": dataclasses.astuple(gain)},
      free_oracle,
    ),
  ]


def gates_markdown(gates: Sequence[Gate]) -> str:
  """A gate table: measured, rule, result and the test set's calcium-free scans.

  The result is pass / FAIL, or "reading" for one that decides nothing."""
  lines = [
    "| gate | what | measured | pass if | result | calcium-free test scans |",
    "|---|---|---|---|---|---|",
  ]
  for g in gates:
    result = "reading" if g.passed is None else ("pass" if g.passed else "FAIL")
    lines.append(
      f"| {g.name} | {g.what} | {g.value} | {g.rule} | {result} | {g.calcium_free or '-'} |"
    )
  return "\n".join(lines)


def gap_share(
  f1_adapted: float, f1_source: float, f1_oracle: float, min_gap: float = MIN_ORACLE_GAP
) -> float:
  """(F1_adapted - F1_source) / (F1_oracle - F1_source): the share of the oracle gap closed.

  NaN when the oracle gap < `min_gap` or any input is NaN."""
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


def _share_of_seeds(min_gap: float) -> Callable[[ScanSet], float]:
  """statistic: mean over seeds of each seed's gap share from its per-scan F1.

  Each seed's share is from its (adapted, source, oracle) per-scan F1; NaN if any seed's share
  is undefined."""

  def stat(scan_set: ScanSet) -> float:
    shares = [
      gap_share(*(seed_mean([arrays], k) for k in range(3)), min_gap) for arrays in scan_set
    ]
    return float(np.mean(shares)) if shares and all(np.isfinite(shares)) else math.nan

  return stat


def bootstrap_gap_share(
  adapted: Sequence[Sequence[float]],
  source: Sequence[Sequence[float]],
  oracle: Sequence[Sequence[float]],
  n_resamples: int = N_RESAMPLES,
  seed: int = 0,
  min_gap: float = MIN_ORACLE_GAP,
) -> GapShare:
  """Gap share of the mean over groups (seeds), with a 95 % percentile bootstrap interval.

  Args:
    adapted, source, oracle: per group (one per experiment seed), per-scan F1 of the same test
      scans in the same order (NaN for a scan the reading leaves out: skipped in the means).
    n_resamples: bootstrap resamples; each resamples every group's scans with replacement (the
      same draw for the three networks) and takes the mean over groups of the per-group shares.

  Returns:
    `GapShare` whose `share` is the mean over groups of each group's share (NaN if any group's
    share is undefined).
  """
  groups = [tuple(np.asarray(x, dtype=float) for x in aso) for aso in zip(adapted, source, oracle)]
  if not groups or any(not (a.shape == s.shape == o.shape) for a, s, o in groups):
    raise ValueError(
      "adapted, source and oracle need the same number of groups and scans per group"
    )
  n_scans = sum(a.size for a, _, _ in groups)
  stat = _share_of_seeds(min_gap)
  if not np.isfinite(stat(groups)):
    gaps = [seed_mean([(o,)]) - seed_mean([(s,)]) for _, s, o in groups]
    note = (
      "oracle F1 - source F1 = "
      + ", ".join(_fmt(g, 3) for g in gaps)
      + f", below {min_gap:.2f} or n/a"
    )
    return GapShare(math.nan, math.nan, math.nan, n_scans, note)
  e = bootstrap(stat, groups, n_resamples=n_resamples, seed=seed)
  if not np.isfinite(e.low):
    return GapShare(
      e.value, math.nan, math.nan, n_scans, "share undefined in over 5 % of the resamples"
    )
  return GapShare(e.value, e.low, e.high, n_scans)


def per_scan_values(
  per_scan_metrics: Sequence[Mapping], field: str, structure: str = "total"
) -> list[float]:
  """One measure of `structure` per scan from `cac_jax.evaluation.metrics.scan_metrics` outputs.

  E.g. `field` "f1" (NaN where the scan has neither reference nor predicted calcium),
  "f1_authors" (defined for every scan, as the authors' evaluation averages it) or "fp_mm3"."""
  return [float(getattr(m[structure], field)) for m in per_scan_metrics]
