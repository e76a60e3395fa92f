"""Evaluation metrics for coronary artery calcium (CAC) segmentation and scoring.

All functions are NumPy/SciPy only. Label maps are int arrays (z, y, x) of classes 0..6
(`cac_jax.labels`); the coronary classes are 1 LAD (incl. left main), 2 LCX, 3 RCA. Volumes are
in mm³ (voxel count × voxel volume from the (z, y, x) spacing in mm).

Structures evaluated per scan: "total" (all coronary calcium) and "LAD", "LCX", "RCA".

Volume-wise (per scan and structure):
  * per artery c: TP = ref == c and pred == c; FN = ref == c and pred != c;
    FP = pred == c and ref != c.
  * total: a voxel is TP if reference AND prediction are both coronary (any of 1..3), even if
    the artery differs (an artery mix-up is correct for the total but a FN for the true artery
    and a FP for the predicted one in the per-artery rows). FN = ref coronary, pred not coronary;
    FP = pred coronary, ref not coronary.
  * sensitivity = TP / (TP + FN); F1 = 2 TP / (2 TP + FP + FN) (volumes in mm³).
Lesion-wise (per scan and structure):
  * reference lesions are the 6-connected components of the reference mask (ref == c per artery,
    ref coronary for total). A reference lesion is *found* when any of its voxels is predicted as
    that structure (pred == c, or pred coronary for total), otherwise *missed*.
  * predicted lesions are the 6-connected components of the predicted mask; a predicted lesion is
    a *FP lesion* when it shares no voxel with the reference mask of the same structure (so a
    predicted LAD lesion on reference LCX calcium is a FP lesion for LAD and leaves the LCX lesion
    missed, mirroring the volume-wise convention).
  * lesion sensitivity = found / (found + missed); lesion F1 = 2 found / (2 found + FP + missed).
Undefined values (no epsilon tricks; they are NaN, never 0 or 1 by convention):
  * sensitivity (volume or lesion) is NaN when the scan has no reference calcium for the
    structure; such scans are excluded from the sensitivity mean and its n is reported separately
    ("n scans with reference calcium").
  * FP volume and FP lesions count normally in every scan (also without reference calcium).
  * F1 is NaN when TP + FP + FN = 0 (nothing in reference or prediction) and excluded from the
    mean; with an empty reference and FP > 0 it is 0 (the formula gives 0 / FP).
The authors' averaging (`sensitivity_authors`, `f1_authors`): their evaluation script computes
per scan (TP + 1e-5) / (TP + FN + 1e-5) and (2 TP + 1e-5) / (2 TP + FP + FN + 1e-5) in voxels
and averages over every test scan (utils/util.py:113-114, Evaluation_senF1_volumeWise.py:75 and
:92 of qurAI-amsterdam/CACscoringUsingDomainAdaptation at a8adf6d). So a scan without reference
calcium counts sensitivity 1, and F1 1 when nothing is predicted or (to 1e-5) 0 when anything
is. These two fields are those limits, defined for every scan; the paper's Table 2 numbers are
means of them, so comparisons with the paper (and the benchmark gates) use them.
Aggregation (`aggregate`): mean and sample SD (ddof = 1; NaN when fewer than 2 values) over the
scans where the value is defined, with the n used, as reported in the paper; plus pooled variants
(sums of TP/FN/FP volumes and lesion counts over all scans, then the same formulas).

Agreement of scores between reference and prediction:
  * `spearman(a, b)`: Spearman's rank correlation (scipy.stats.spearmanr); NaN with a note for
    constant input or fewer than 2 pairs. The p-value is exact for n <= `SPEARMAN_EXACT_MAX_N`
    (all n! pairings of the ranks, ties kept: the t approximation scipy uses is poor for
    small n) and scipy's otherwise; `SpearmanResult.p_method` says which.
  * `bland_altman(ref, pred)`: bias = mean(pred - ref) (constant bias, not regressed on the mean),
    heteroskedastic 95 % limits from an OLS fit |d| ≈ b + a·√m; limits(m) = bias ±
    1.96·√(π/2)·(b + a·√m). Needs ≥ 3 pairs and non-negative means (volumes, scores). With
    fewer than `BA_MIN_HETEROSKEDASTIC_N` scans, or when the fitted spread b + a·√m is negative
    somewhere in the observed range of m (the limits would cross: lower above upper), it falls
    back to constant limits bias ± 1.96·SD(d) and says so in `BlandAltman.note`.
  * `weighted_kappa` / `agatston_kappa`: linearly weighted Cohen's kappa on (Agatston risk)
    categories with the confusion matrix (rows reference, columns prediction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import itertools
import math

import numpy as np
from scipy import ndimage, stats

from cac_jax import labels as labels_lib
from cac_jax.data import scan as scan_lib

STRUCTURES = ("total", "LAD", "LCX", "RCA")
_STRUCTURE_CLASSES = {
  "total": labels_lib.CORONARY_CLASSES,
  "LAD": (labels_lib.LAD,),
  "LCX": (labels_lib.LCX,),
  "RCA": (labels_lib.RCA,),
}
# 6-connectivity (faces only) in 3D.
_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)

# Agatston risk categories: 0, 1-10, 11-100, 101-400, >400 (upper bounds inclusive).
AGATSTON_CATEGORY_NAMES = ("0", "1-10", "11-100", "101-400", ">400")
AGATSTON_CATEGORY_UPPER = (0.0, 10.0, 100.0, 400.0)


def _ratio(num: float, den: float) -> float:
  """num / den, NaN when den == 0 (undefined, never an epsilon)."""
  return float(num) / float(den) if den > 0 else math.nan


@dataclasses.dataclass(frozen=True)
class StructureMetrics:
  """Metrics of one structure (total or one artery) in one scan.

  Volumes in mm³, counts in voxels / lesions. NaN marks an undefined value (see module doc).
  """

  tp_mm3: float
  fn_mm3: float
  fp_mm3: float
  ref_mm3: float
  pred_mm3: float
  sensitivity: float
  f1: float
  ref_lesions: int
  found_lesions: int
  missed_lesions: int
  pred_lesions: int
  fp_lesions: int
  lesion_sensitivity: float
  lesion_f1: float

  @property
  def has_reference(self) -> bool:
    return self.ref_lesions > 0

  @property
  def sensitivity_authors(self) -> float:
    """Sensitivity as the authors' evaluation averages it: defined for every scan.

    1 when the scan has no reference calcium (see the module docstring)."""
    return 1.0 if self.tp_mm3 + self.fn_mm3 == 0 else self.sensitivity

  @property
  def f1_authors(self) -> float:
    """F1 as the authors' evaluation averages it: defined for every scan.

    1 when neither reference nor prediction holds calcium, 0 for predicted calcium without
    reference."""
    return 1.0 if self.tp_mm3 + self.fn_mm3 + self.fp_mm3 == 0 else self.f1


def _structure_metrics(
  ref_mask: np.ndarray, pred_mask: np.ndarray, voxel_mm3: float
) -> StructureMetrics:
  tp = int(np.count_nonzero(ref_mask & pred_mask))
  fn = int(np.count_nonzero(ref_mask & ~pred_mask))
  fp = int(np.count_nonzero(pred_mask & ~ref_mask))
  ref_lab, n_ref = ndimage.label(ref_mask, structure=_SIX_CONNECTED)
  pred_lab, n_pred = ndimage.label(pred_mask, structure=_SIX_CONNECTED)
  found_ids = np.unique(ref_lab[ref_mask & pred_mask])
  found = int(np.count_nonzero(found_ids))
  touching_ids = np.unique(pred_lab[pred_mask & ref_mask])
  fp_lesions = int(n_pred) - int(np.count_nonzero(touching_ids))
  missed = int(n_ref) - found
  return StructureMetrics(
    tp_mm3=tp * voxel_mm3,
    fn_mm3=fn * voxel_mm3,
    fp_mm3=fp * voxel_mm3,
    ref_mm3=(tp + fn) * voxel_mm3,
    pred_mm3=(tp + fp) * voxel_mm3,
    sensitivity=_ratio(tp, tp + fn),
    f1=_ratio(2 * tp, 2 * tp + fp + fn),
    ref_lesions=int(n_ref),
    found_lesions=found,
    missed_lesions=missed,
    pred_lesions=int(n_pred),
    fp_lesions=fp_lesions,
    lesion_sensitivity=_ratio(found, n_ref),
    lesion_f1=_ratio(2 * found, 2 * found + fp_lesions + missed),
  )


def drop_small_components(label_map: np.ndarray, max_voxels: int) -> np.ndarray:
  """`label_map` (z, y, x) without its 26-connected components of at most `max_voxels` voxels.

  The components are of nonzero voxels (any class together); 0 returns it unchanged.

  The authors' evaluation scores against references cleaned this way with `max_voxels` 2
  (`annotations_resampled_sl_2` in Evaluation_senF1_volumeWise.py:50 and
  Evaluation_senF1_lesion.py:44, made by utils/util.py:237-250 `remove_small_lesions`, whose
  skimage labelling is 26-connected in 3D): one- and two-voxel reference specks do not count.
  """
  label_map = np.asarray(label_map)
  if max_voxels <= 0 or not label_map.any():
    return label_map
  lab, n = ndimage.label(label_map > 0, structure=np.ones((3, 3, 3), bool))
  small = np.bincount(lab.ravel(), minlength=n + 1) <= max_voxels
  small[0] = False
  return np.where(small[lab], 0, label_map).astype(label_map.dtype)


def _calcium_box(reference: np.ndarray, prediction: np.ndarray) -> tuple[slice, ...]:
  """Bounding box (z, y, x slices) of the voxels where either class map is non-zero.

  One voxel at the origin when none is: the metrics need nothing outside it, and labelling
  lesions in a box instead of the whole scan is many times faster."""
  nz = (reference != 0) | (prediction != 0)
  box = []
  for axis in range(nz.ndim):
    hit = np.flatnonzero(nz.any(axis=tuple(a for a in range(nz.ndim) if a != axis)))
    box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 1))
  return tuple(box)


def scan_metrics(
  reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]
) -> dict[str, StructureMetrics]:
  """Volume- and lesion-wise metrics of one scan.

  Args:
    reference: int (z, y, x) reference classes 0..6.
    prediction: int (z, y, x) predicted classes 0..6, same shape.
    spacing: (z, y, x) voxel size in mm.

  Returns:
    {"total": ..., "LAD": ..., "LCX": ..., "RCA": ...} of `StructureMetrics`.
  """
  reference = np.asarray(reference)
  prediction = np.asarray(prediction)
  if reference.ndim != 3 or reference.shape != prediction.shape:
    raise ValueError(
      f"reference {reference.shape} and prediction {prediction.shape} must be 3D (z, y, x) "
      "arrays of the same shape"
    )
  voxel_mm3 = scan_lib.voxel_volume_mm3(spacing)
  box = _calcium_box(reference, prediction)  # counts and lesions are all inside it
  reference, prediction = reference[box], prediction[box]
  out = {}
  for name in STRUCTURES:
    classes = _STRUCTURE_CLASSES[name]
    out[name] = _structure_metrics(
      np.isin(reference, classes), np.isin(prediction, classes), voxel_mm3
    )
  return out


@dataclasses.dataclass(frozen=True)
class Summary:
  """mean and sample SD (ddof=1, NaN for n < 2) over the n scans where a value is defined."""

  mean: float
  sd: float
  n: int

  def format(self, digits: int = 2) -> str:
    if self.n == 0:
      return "n/a (n=0)"
    sd = "n/a" if math.isnan(self.sd) else f"{self.sd:.{digits}f}"
    return f"{self.mean:.{digits}f} ({sd})"


def summarize(values: Sequence[float]) -> Summary:
  """Mean (SD) over the finite entries of `values`; NaN entries (undefined) are excluded."""
  arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
  arr = arr[np.isfinite(arr)]
  if arr.size == 0:
    return Summary(math.nan, math.nan, 0)
  sd = float(np.std(arr, ddof=1)) if arr.size >= 2 else math.nan
  return Summary(float(np.mean(arr)), sd, int(arr.size))


PER_SCAN_FIELDS = (
  "sensitivity",
  "fp_mm3",
  "f1",
  "sensitivity_authors",
  "f1_authors",
  "lesion_sensitivity",
  "fp_lesions",
  "lesion_f1",
  "tp_mm3",
  "fn_mm3",
  "ref_mm3",
  "pred_mm3",
)


@dataclasses.dataclass(frozen=True)
class StructureSummary:
  """Aggregate over scans for one structure.

  per_scan: {field: Summary} for every field in PER_SCAN_FIELDS (mean (SD) over defined values).
  n_scans: scans evaluated; n_with_reference: scans with reference calcium of this structure
    (the n of the sensitivity means).
  pooled_*: the same formulas on TP/FN/FP volumes and lesion counts summed over all scans.
  """

  per_scan: dict[str, Summary]
  n_scans: int
  n_with_reference: int
  pooled_sensitivity: float
  pooled_f1: float
  pooled_lesion_sensitivity: float
  pooled_lesion_f1: float
  fp_lesions_total: int


def aggregate(per_scan: Sequence[Mapping[str, StructureMetrics]]) -> dict[str, StructureSummary]:
  """Aggregate `scan_metrics` outputs over scans (see module doc)."""
  out = {}
  for name in STRUCTURES:
    items = [m[name] for m in per_scan]
    summaries = {f: summarize([getattr(it, f) for it in items]) for f in PER_SCAN_FIELDS}
    tp = sum(it.tp_mm3 for it in items)
    fn = sum(it.fn_mm3 for it in items)
    fp = sum(it.fp_mm3 for it in items)
    found = sum(it.found_lesions for it in items)
    missed = sum(it.missed_lesions for it in items)
    fpl = sum(it.fp_lesions for it in items)
    out[name] = StructureSummary(
      per_scan=summaries,
      n_scans=len(items),
      n_with_reference=sum(1 for it in items if it.has_reference),
      pooled_sensitivity=_ratio(tp, tp + fn),
      pooled_f1=_ratio(2 * tp, 2 * tp + fp + fn),
      pooled_lesion_sensitivity=_ratio(found, found + missed),
      pooled_lesion_f1=_ratio(2 * found, 2 * found + fpl + missed),
      fp_lesions_total=int(fpl),
    )
  return out


@dataclasses.dataclass(frozen=True)
class SpearmanResult:
  """Spearman's rho and two-sided p-value; NaN with `note` when undefined.

  p_method: "exact" (permutation distribution), "t approximation" (scipy) or "" (undefined).
  """

  rho: float
  pvalue: float
  n: int
  note: str = ""
  p_method: str = ""


SPEARMAN_EXACT_MAX_N = 9


def _exact_spearman_p(a: np.ndarray, b: np.ndarray, rho: float) -> float:
  """Two-sided exact p: share of the n! pairings of b's ranks with a's whose |rho| >= |rho|."""
  ra, rb = stats.rankdata(a), stats.rankdata(b)
  ra = (ra - ra.mean()) / np.sqrt(((ra - ra.mean()) ** 2).sum())
  rb = (rb - rb.mean()) / np.sqrt(((rb - rb.mean()) ** 2).sum())
  perms = np.array(list(itertools.permutations(range(a.size))), dtype=np.int8)
  rhos = rb[perms] @ ra
  return float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))


def spearman(a: Sequence[float], b: Sequence[float]) -> SpearmanResult:
  """Spearman rank correlation of paired values (e.g. volumes or lesion counts per scan).

  Returns NaN (with a note) instead of raising for constant input or fewer than 2 pairs. The
  p-value is exact for n <= SPEARMAN_EXACT_MAX_N (see the module docstring).
  """
  a = np.asarray(a, dtype=np.float64).ravel()
  b = np.asarray(b, dtype=np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"spearman needs paired values; got {a.size} and {b.size}")
  n = int(a.size)
  if n < 2:
    return SpearmanResult(math.nan, math.nan, n, f"undefined: needs at least 2 pairs, got {n}")
  if np.all(a == a[0]) or np.all(b == b[0]):
    return SpearmanResult(math.nan, math.nan, n, "undefined: constant input (no rank variation)")
  res = stats.spearmanr(a, b)
  rho = float(res.statistic)
  if n <= SPEARMAN_EXACT_MAX_N:
    return SpearmanResult(rho, _exact_spearman_p(a, b, rho), n, p_method="exact")
  return SpearmanResult(rho, float(res.pvalue), n, p_method="t approximation")


_LOA_FACTOR = 1.96 * math.sqrt(math.pi / 2.0)
BA_MIN_HETEROSKEDASTIC_N = 10


@dataclasses.dataclass(frozen=True)
class BlandAltman:
  """Bland-Altman analysis with heteroskedastic (or, as a fallback, constant) limits.

  d = pred - ref, m = (pred + ref) / 2 (arrays (n,)). bias = mean(d). Heteroskedastic:
  |d| ≈ b + a·√m (OLS); the SD of d at m is estimated as √(π/2)·(b + a·√m) (for normal d,
  E|d - 0| = SD·√(2/π)), so the 95 % limits are bias ± 1.96·√(π/2)·(b + a·√m). Constant
  (`heteroskedastic` False; fewer than BA_MIN_HETEROSKEDASTIC_N scans or crossing limits):
  a = 0 and the limits are bias ± 1.96·SD(d) (ddof = 1), stored as b = SD(d)·√(2/π) so the
  same `spread` formula applies; `note` says why.
  """

  bias: float
  a: float
  b: float
  mean: np.ndarray
  diff: np.ndarray
  heteroskedastic: bool = True
  note: str = ""

  @property
  def n(self) -> int:
    return int(self.mean.size)

  def spread(self, m) -> np.ndarray:
    """Half-width of the 95 % limits at mean value(s) m (≥ 0)."""
    return _LOA_FACTOR * (self.b + self.a * np.sqrt(np.asarray(m, dtype=np.float64)))

  def lower(self, m) -> np.ndarray:
    return self.bias - self.spread(m)

  def upper(self, m) -> np.ndarray:
    return self.bias + self.spread(m)

  def limits(self, m) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) limits at mean value(s) m."""
    return self.lower(m), self.upper(m)

  def formula(self, digits: int = 3) -> str:
    """The limits as text, e.g. "-0.25 ± 1.96·√(π/2)·(1 + 0.5·√m)" or "-0.25 ± 1.96·12 (constant)"."""
    if not self.heteroskedastic:
      sd = self.b * math.sqrt(math.pi / 2.0)
      return f"{self.bias:.{digits}g} ± 1.96·{sd:.{digits}g} (constant)"
    sign = "-" if self.a < 0 else "+"
    return (
      f"{self.bias:.{digits}g} ± 1.96·√(π/2)·({self.b:.{digits}g} {sign} "
      f"{abs(self.a):.{digits}g}·√m)"
    )


def bland_altman(
  ref: Sequence[float], pred: Sequence[float], min_heteroskedastic_n: int = BA_MIN_HETEROSKEDASTIC_N
) -> BlandAltman:
  """Bland-Altman analysis of paired non-negative values (volumes in mm³, scores).

  Raises ValueError for fewer than 3 pairs, non-finite or negative means. If all √m are equal
  the slope is undefined: a = 0 and b = mean(|d|). Falls back to constant limits (see the
  module docstring) for fewer than `min_heteroskedastic_n` pairs or crossing limits.
  """
  ref = np.asarray(ref, dtype=np.float64).ravel()
  pred = np.asarray(pred, dtype=np.float64).ravel()
  if ref.shape != pred.shape:
    raise ValueError(f"bland_altman needs paired values; got {ref.size} and {pred.size}")
  if ref.size < 3:
    raise ValueError(f"Bland-Altman analysis needs at least 3 scans; got {ref.size}")
  if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(pred))):
    raise ValueError("Bland-Altman values must be finite")
  d = pred - ref
  m = (pred + ref) / 2.0
  if np.any(m < 0):
    raise ValueError("Bland-Altman heteroskedastic limits need non-negative means (√m)")
  x = np.sqrt(m)
  y = np.abs(d)
  if np.all(x == x[0]):
    a, b = 0.0, float(np.mean(y))
  else:
    design = np.stack([np.ones_like(x), x], axis=1)
    (b, a), *_ = np.linalg.lstsq(design, y, rcond=None)
  why = ""
  if d.size < min_heteroskedastic_n:
    why = f"constant limits: {d.size} scans are too few to fit heteroskedastic limits (< {min_heteroskedastic_n})"
  elif min(b + a * x.min(), b + a * x.max()) < 0:
    why = "constant limits: the fitted heteroskedastic limits cross within the observed range"
  if why:
    sd = float(np.std(d, ddof=1))
    return BlandAltman(
      bias=float(np.mean(d)),
      a=0.0,
      b=sd * math.sqrt(2.0 / math.pi),
      mean=m,
      diff=d,
      heteroskedastic=False,
      note=why,
    )
  return BlandAltman(bias=float(np.mean(d)), a=float(a), b=float(b), mean=m, diff=d)


def agatston_category(scores) -> np.ndarray:
  """Agatston risk category index 0..4 for scores: 0, (0, 10], (10, 100], (100, 400], > 400.

  Scores are continuous (e.g. 0.4 is in category 1, "1-10"); negative scores raise ValueError.
  """
  scores = np.asarray(scores, dtype=np.float64)
  if np.any(~np.isfinite(scores)) or np.any(scores < 0):
    raise ValueError("Agatston scores must be finite and non-negative")
  return np.searchsorted(np.asarray(AGATSTON_CATEGORY_UPPER), scores, side="left").astype(np.int64)


@dataclasses.dataclass(frozen=True)
class KappaResult:
  """Linearly weighted kappa and the confusion matrix (rows reference, columns prediction)."""

  kappa: float
  confusion: np.ndarray
  note: str = ""


def confusion_matrix(ref_categories, pred_categories, n_categories: int) -> np.ndarray:
  """(n_categories, n_categories) int64 counts: rows reference, columns prediction."""
  r = np.asarray(ref_categories, dtype=np.int64).ravel()
  p = np.asarray(pred_categories, dtype=np.int64).ravel()
  if r.shape != p.shape:
    raise ValueError(f"need paired categories; got {r.size} and {p.size}")
  for arr in (r, p):
    if arr.size and (arr.min() < 0 or arr.max() >= n_categories):
      raise ValueError(f"categories must lie in 0..{n_categories - 1}")
  cm = np.zeros((n_categories, n_categories), dtype=np.int64)
  np.add.at(cm, (r, p), 1)
  return cm


def weighted_kappa(ref_categories, pred_categories, n_categories: int) -> KappaResult:
  """Linearly weighted Cohen's kappa.

  With agreement weights w_ij = 1 - |i - j| / (k - 1), observed p_o = Σ w_ij O_ij / N and
  expected p_e = Σ w_ij r_i c_j / N² (r, c the row/column totals): κ = (p_o - p_e) / (1 - p_e).
  NaN (with a note) when N = 0 or p_e = 1 (both raters put every scan in one same category).
  """
  if n_categories < 2:
    raise ValueError("weighted kappa needs at least 2 categories")
  cm = confusion_matrix(ref_categories, pred_categories, n_categories)
  n = cm.sum()
  if n == 0:
    return KappaResult(math.nan, cm, "undefined: no scans")
  idx = np.arange(n_categories)
  w = 1.0 - np.abs(idx[:, None] - idx[None, :]) / (n_categories - 1)
  obs = cm / n
  exp = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / float(n) ** 2
  po = float(np.sum(w * obs))
  pe = float(np.sum(w * exp))
  if math.isclose(pe, 1.0, rel_tol=0, abs_tol=1e-12):
    return KappaResult(math.nan, cm, "undefined: expected agreement is 1 (single category)")
  return KappaResult((po - pe) / (1.0 - pe), cm)


def agatston_kappa(ref_scores, pred_scores) -> KappaResult:
  """Linearly weighted kappa on the 5 Agatston risk categories of paired scores."""
  return weighted_kappa(
    agatston_category(ref_scores), agatston_category(pred_scores), len(AGATSTON_CATEGORY_NAMES)
  )
