"""Batch policies for training: which voxels source and critic batches are centred on.

The patches around the chosen voxels come from `cac_jax.data.patches` (three orthogonal views,
label windows, HU normalisation); this module decides the centres and assembles the batches.

Batch policies (`PatchSampler`, counts from config.sampling):
  * source batch, in this order within the batch:
      - `source_threshold` patches at voxels >= the case's calcium threshold (130 HU for NCCT,
        see `case_threshold`; with `fixed_threshold` 130 HU in every domain, so CCTA contrast
        lumen too, as the reference draws), over the whole volume (bone and calcium are the
        hard cases), or only inside the dilated heart with `bright_in_heart` (where scoring
        classifies); with `source_threshold_in_heart` = k, the first k of them inside the
        dilated heart (noise peaks in blood and myocardium, the candidates the heart filter
        keeps) and the rest over the whole volume (bone stays a negative for scoring without
        the heart filter);
      - `source_uniform` patches at uniform voxels of the case's sampling region (the heart
        mask dilated by `heart_dilation_mm` when a non-empty heart mask is present and
        `uniform_in_heart` is set, else the whole volume);
      - `source_labelled` patches at labelled calcium voxels (classes 1..6). Policy
        "class_balanced" (default): a class is drawn uniformly among the classes present in
        any labelled case, then a case uniformly among the cases holding that class, then a
        voxel of that class uniformly; this keeps rare arteries (LCX, RCA) and valves in
        every few batches. Policy "uniform": a case uniformly among cases with any labelled
        calcium, then one of its labelled voxels uniformly.
    Only cases with a label map take part in source batches.
  * critic batch (also the target batch of the generator step), policy `critic_policy`:
      - "reference" (default; the authors' `get_a_batch_of_cropped_slices_iterator`,
        `dataset/CalciumDataset.py:335-387`, called with T=130 for both domains in
        `trainGAN_adv_cls_MMD.py:161-162`, `:210-211`, `:239`): every patch first draws an
        axial slice uniformly from all slices of all cases, then the first `critic_batch // 2`
        patches a voxel >= 130 HU (config.scoring.ncct_threshold) of that slice, the rest a
        uniform voxel of that slice (air included). The same fixed 130 HU in CCTA, so bright
        CCTA patches are mostly contrast lumen, blood pool and bone. A slice without a voxel
        >= 130 HU gives a uniform voxel of that slice (the reference would fail there).
      - "scan_threshold": `critic_batch // 2` patches at
        voxels >= the case's scoring threshold (the aortic-ROI threshold in CCTA; 130 HU with
        `fixed_threshold`), over the whole volume or inside the dilated heart with `critic_bright_in_heart` (default
        `bright_in_heart`), the rest uniform in the sampling region; cases drawn uniformly.
  Cases are drawn uniformly (except for the class-balanced draw above and the slice draw of
  the reference critic policy).

Fallbacks (never raise): a case with no voxel >= its threshold gives a uniform voxel
instead; if no labelled case holds any calcium voxel, labelled patches are uniform voxels of
labelled cases; an empty heart mask means the whole volume. Every fallback that applies is
recorded once, at construction, in `PatchSampler.fallbacks` (case_id -> list of reasons).

Reproducibility: batch `i` of a stream is drawn from
`np.random.default_rng([seed, stream, i])`, independent of every other batch. Direct calls
(`source_batch()`) count i = 0, 1, ... per stream; the prefetching iterators
(`source_batches(start=0)`) yield batches start, start + 1, ... of the same stream, so a fresh
sampler's iterator yields exactly what its direct calls would, whatever the thread timing.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import ml_collections
import numpy as np
from scipy import ndimage

from cac_jax import labels as labels_lib
from cac_jax.data import patches, threshold
from cac_jax.data.prefetch import PrefetchIterator
from cac_jax.data.scan import Case

_SOURCE_STREAM = 0
_CRITIC_STREAM = 1
LABELLED_POLICIES = ("class_balanced", "uniform")
CRITIC_POLICIES = ("reference", "scan_threshold")


# ---------------------------------------------------------------------------------------------
# Thresholds


def case_threshold(case: Case, config: ml_collections.ConfigDict) -> float:
  """Calcium threshold (HU) of a case, used to pick "bright" patch centres (see `threshold_and_note`)."""
  return threshold_and_note(case, config)[0]


def threshold_and_note(case: Case, config: ml_collections.ConfigDict) -> tuple[float, str | None]:
  """(calcium threshold in HU, fallback note or None) of a case.

  `case.scan.meta["calcium_threshold_hu"]` if given (phantoms know theirs); else the threshold
  scoring uses (`cac_jax.data.threshold.choose_threshold`: 130 HU for NCCT, the ascending-aorta ROI's
  mean + 3 SD for CCTA), so the bright patches of training are the candidates that scoring
  classifies. A CCTA without an aorta cannot be scored, but training still needs its patches:
  the NCCT threshold, with a note.
  """
  meta_thr = case.scan.meta.get("calcium_threshold_hu") if case.scan.meta else None
  if meta_thr is not None:
    return float(meta_thr), None
  try:
    return threshold.choose_threshold(case.scan, case.domain, case.aorta_mask, config)[1], None
  except threshold.NoAortaError as e:
    default = float(config.scoring.ncct_threshold)
    return default, f"CCTA without an aorta ROI ({e}): bright patches at {default:.0f} HU"


def _index_dtype(n: int):
  return np.int32 if n < np.iinfo(np.int32).max else np.int64


def _dilate_box(mask: np.ndarray, spacing: Sequence[float], radius_mm: float) -> np.ndarray:
  """Dilate a bool mask by a (z, y, x) box of half-size `radius_mm` (separable, fast)."""
  out = mask.astype(np.uint8)
  for axis, s in enumerate(spacing):
    r = int(round(radius_mm / float(s)))
    if r > 0:
      out = ndimage.maximum_filter1d(out, size=2 * r + 1, axis=axis, mode="constant")
  return out.astype(bool)


@dataclasses.dataclass
class _CaseIndex:
  """Per-case precomputed candidate voxels (flat indices into the C-ordered volume)."""

  case: Case
  hu: np.ndarray  # C-contiguous float32 (z, y, x)
  labels: np.ndarray | None  # C-contiguous int32 or None
  threshold: float
  bright: np.ndarray  # flat indices with HU >= threshold (may be empty)
  region: np.ndarray | None  # flat indices of the uniform-sampling region; None = whole
  bright_in_region: (
    np.ndarray
  )  # bright voxels inside the region (== bright when region is None or unused)
  bright_fixed: (
    np.ndarray
  )  # flat indices with HU >= the fixed reference threshold (sorted, so by slice)
  by_class: dict  # class -> flat indices of labelled voxels of that class (classes 1..6)
  labelled_all: np.ndarray  # flat indices of all labelled calcium voxels


# ---------------------------------------------------------------------------------------------
# The sampler


class PatchSampler:
  """Draws source and critic batches of three-view patches from a list of cases.

  Args:
    cases: `Case`s at working spacing (HU float32). Cases with labels feed source batches; all
      cases feed critic batches (build one sampler per domain for adaptation).
    config: full config (uses model, data, sampling, scoring sections).
    seed: base seed; batch i of a stream comes from default_rng([seed, stream, i]).
    labelled_policy: "class_balanced" (default) or "uniform" (see module docstring).
    uniform_in_heart: uniform centres inside the heart mask dilated by `heart_dilation_mm`
      when the case has a non-empty heart mask (else the whole volume).
    heart_dilation_mm: box dilation of the heart mask; default config.scoring.heart_dilation_mm.
    bright_in_heart: draw the source batches' ">= threshold" patches only inside that dilated
      heart when the case has one (default config.sampling.bright_in_heart, False).
    critic_bright_in_heart: the same for critic batches of the "scan_threshold" policy
      (default: `bright_in_heart`). Adaptation keeps its labelled source batches like source
      training (bright negatives over the whole volume, so the network keeps seeing bone as
      background).
    critic_policy: "reference" or "scan_threshold" (module docstring); default
      `config.adapt.critic_patches` ("reference" when absent).

  Batches: source `{"views": (3, B, P, P, 1) f32, "labels": (3, B, o, o) i32}` with
  B = source_threshold + source_uniform + source_labelled; critic `{"views": ...}` with
  B = critic_batch. `with_info=True` adds "case_index" (B,) and "centres" (B, 3) int arrays.
  """

  def __init__(
    self,
    cases: Sequence[Case],
    config: ml_collections.ConfigDict,
    seed: int,
    *,
    labelled_policy: str = "class_balanced",
    uniform_in_heart: bool = True,
    heart_dilation_mm: float | None = None,
    bright_in_heart: bool | None = None,
    critic_bright_in_heart: bool | None = None,
    critic_policy: str | None = None,
  ):
    if not cases:
      raise ValueError("PatchSampler needs at least one case")
    if labelled_policy not in LABELLED_POLICIES:
      raise ValueError(
        f"labelled_policy must be one of {LABELLED_POLICIES}; got {labelled_policy!r}"
      )
    if critic_policy is None:
      critic_policy = (
        config.adapt.get("critic_patches", "reference") if "adapt" in config else "reference"
      )
    if critic_policy not in CRITIC_POLICIES:
      raise ValueError(f"critic_policy must be one of {CRITIC_POLICIES}; got {critic_policy!r}")
    self.critic_policy = critic_policy
    self.reference_threshold = float(config.scoring.ncct_threshold)
    self.config = config
    self.seed = int(seed)
    self.labelled_policy = labelled_policy
    self.uniform_in_heart = bool(uniform_in_heart)
    self.heart_dilation_mm = float(
      config.scoring.heart_dilation_mm if heart_dilation_mm is None else heart_dilation_mm
    )
    self.patches = patches.PatchExtractor(config)
    s = config.sampling
    self.n_threshold, self.n_uniform, self.n_labelled = (
      int(s.source_threshold),
      int(s.source_uniform),
      int(s.source_labelled),
    )
    self.n_critic = int(s.critic_batch)
    self.fixed_threshold = bool(s.get("fixed_threshold", False))
    self.n_threshold_in_heart = min(int(s.get("source_threshold_in_heart", 0)), self.n_threshold)
    self.bright_in_heart = bool(
      s.get("bright_in_heart", False) if bright_in_heart is None else bright_in_heart
    )
    self.critic_bright_in_heart = (
      self.bright_in_heart if critic_bright_in_heart is None else bool(critic_bright_in_heart)
    )
    self.prefetch = int(s.prefetch)
    self.fallbacks: dict[str, list[str]] = {}
    self._cases = [self._index_case(c) for c in cases]
    self.thresholds = [ci.threshold for ci in self._cases]
    self._volumes = [ci.hu for ci in self._cases]  # what the patch extractor reads, per case
    self._label_maps = [ci.labels for ci in self._cases]
    self._labelled_cases = [i for i, ci in enumerate(self._cases) if ci.labels is not None]
    self._calcium_cases = [i for i in self._labelled_cases if self._cases[i].labelled_all.size]
    self._class_cases = {
      c: [i for i in self._labelled_cases if c in self._cases[i].by_class]
      for c in range(1, labels_lib.NUM_CLASSES)
    }
    self._class_cases = {c: v for c, v in self._class_cases.items() if v}
    if self._labelled_cases and not self._calcium_cases and self.n_labelled:
      for i in self._labelled_cases:
        self._note(i, "no labelled calcium in any case: labelled patches are uniform voxels")
    # First pooled slice index of each case (the reference critic policy draws slices).
    self._slice_starts = np.cumsum([0] + [ci.hu.shape[0] for ci in self._cases])
    self._counters = {_SOURCE_STREAM: 0, _CRITIC_STREAM: 0}
    self._prefetchers: list[PrefetchIterator] = []

  # -- construction ---------------------------------------------------------------------------

  def _note(self, i_or_case, reason: str):
    cid = i_or_case.case_id if isinstance(i_or_case, Case) else self._cases[i_or_case].case.case_id
    self.fallbacks.setdefault(cid, []).append(reason)

  def _index_case(self, case: Case) -> _CaseIndex:
    hu = np.ascontiguousarray(case.scan.hu, dtype=np.float32)
    n = hu.size
    idt = _index_dtype(n)
    if self.fixed_threshold:
      thr, note = self.reference_threshold, None
    else:
      thr, note = threshold_and_note(case, self.config)
    if note:
      self._note(case, note)
    bright = np.flatnonzero(hu.reshape(-1) >= thr).astype(idt)
    if not bright.size:
      self._note(case, f"no voxel >= {thr:.1f} HU: threshold patches are uniform voxels")
    region = None
    if self.uniform_in_heart and case.heart_mask is not None:
      heart = np.asarray(case.heart_mask).astype(bool)
      if heart.shape != hu.shape:
        raise ValueError(f"case {case.case_id}: heart mask shape {heart.shape} != scan {hu.shape}")
      if heart.any():
        region = np.flatnonzero(
          _dilate_box(heart, case.scan.spacing, self.heart_dilation_mm).reshape(-1)
        ).astype(idt)
      else:
        self._note(case, "empty heart mask: uniform patches over the whole volume")
    labels = None
    by_class: dict = {}
    labelled_all = np.zeros(0, idt)
    if case.labels is not None:
      labels = np.ascontiguousarray(case.labels, dtype=np.int32)
      if labels.shape != hu.shape:
        raise ValueError(f"case {case.case_id}: labels shape {labels.shape} != scan {hu.shape}")
      flat = labels.reshape(-1)
      labelled_all = np.flatnonzero(flat > 0).astype(idt)
      cls = flat[labelled_all]
      order = np.argsort(cls, kind="stable")
      cls_sorted = cls[order]
      for c in np.unique(cls_sorted):
        lo, hi = np.searchsorted(cls_sorted, [c, c + 1])
        by_class[int(c)] = labelled_all[order[lo:hi]]
    # Only needed when bright patches are restricted to the region (intersect1d sorts every bright voxel).
    in_heart = self.bright_in_heart or self.critic_bright_in_heart or self.n_threshold_in_heart
    in_region = (
      np.intersect1d(bright, region, assume_unique=True)
      if in_heart and region is not None
      else bright
    )
    bright_fixed = bright
    if self.critic_policy == "reference" and thr != self.reference_threshold:
      bright_fixed = np.flatnonzero(hu.reshape(-1) >= self.reference_threshold).astype(idt)
    if self.critic_policy == "reference" and not bright_fixed.size:
      self._note(
        case,
        f"no voxel >= {self.reference_threshold:.0f} HU: bright critic patches are uniform in their slice",
      )
    return _CaseIndex(
      case=case,
      hu=hu,
      labels=labels,
      threshold=thr,
      bright=bright,
      region=region,
      bright_in_region=in_region,
      bright_fixed=bright_fixed,
      by_class=by_class,
      labelled_all=labelled_all,
    )

  # -- centre draws ---------------------------------------------------------------------------

  def _uniform(self, rng: np.random.Generator, i: int) -> int:
    ci = self._cases[i]
    if ci.region is not None:
      return int(ci.region[rng.integers(ci.region.size)])
    return int(rng.integers(ci.hu.size))

  def _bright(self, rng: np.random.Generator, i: int, in_heart: bool) -> int:
    ci = self._cases[i]
    pool = ci.bright_in_region if in_heart and ci.bright_in_region.size else ci.bright
    if pool.size:
      return int(pool[rng.integers(pool.size)])
    return self._uniform(rng, i)

  def _labelled(self, rng: np.random.Generator, pool: Sequence[int]) -> tuple[int, int]:
    if not self._calcium_cases:
      i = pool[rng.integers(len(pool))]
      return i, self._uniform(rng, i)
    if self.labelled_policy == "class_balanced":
      classes = sorted(self._class_cases)
      c = classes[rng.integers(len(classes))]
      cands = self._class_cases[c]
      i = cands[rng.integers(len(cands))]
      vox = self._cases[i].by_class[c]
    else:
      i = self._calcium_cases[rng.integers(len(self._calcium_cases))]
      vox = self._cases[i].labelled_all
    return i, int(vox[rng.integers(vox.size)])

  def _draw(
    self,
    rng: np.random.Generator,
    pool: Sequence[int],
    n_bright: int,
    n_uniform: int,
    n_labelled: int,
    bright_in_heart: bool,
    n_bright_in_heart: int = 0,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Centres of bright, uniform and labelled patches from the cases in `pool`.

    `n_bright` bright (the first `n_bright_in_heart` of them inside the dilated heart, the rest
    per `bright_in_heart`), `n_uniform` uniform and `n_labelled` labelled patches: (case index
    (B,), centres (B, 3) z, y, x)."""
    case_idx, flat_idx = [], []
    for k in range(n_bright):
      i = pool[rng.integers(len(pool))]
      case_idx.append(i)
      flat_idx.append(self._bright(rng, i, bright_in_heart or k < n_bright_in_heart))
    for _ in range(n_uniform):
      i = pool[rng.integers(len(pool))]
      case_idx.append(i)
      flat_idx.append(self._uniform(rng, i))
    for _ in range(n_labelled):
      i, f = self._labelled(rng, pool)
      case_idx.append(i)
      flat_idx.append(f)
    case_idx = np.asarray(case_idx, dtype=np.int64)
    centres = np.zeros((len(flat_idx), 3), dtype=np.int64)
    for k, (i, f) in enumerate(zip(case_idx, flat_idx)):
      centres[k] = np.unravel_index(f, self._cases[i].hu.shape)
    return case_idx, centres

  def _draw_reference(
    self, rng: np.random.Generator, n_bright: int, n_uniform: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """The reference critic draw: per patch a slice from all cases' slices, then a voxel in it.

    The slice is drawn uniformly; the voxel is >= the fixed threshold of that slice (first
    `n_bright`) or a uniform one."""
    case_idx = np.zeros(n_bright + n_uniform, np.int64)
    centres = np.zeros((n_bright + n_uniform, 3), np.int64)
    for k in range(n_bright + n_uniform):
      pooled = int(rng.integers(self._slice_starts[-1]))
      i = int(np.searchsorted(self._slice_starts, pooled, side="right")) - 1
      ci = self._cases[i]
      z = pooled - int(self._slice_starts[i])
      _, ny, nx = ci.hu.shape
      lo, hi = np.searchsorted(ci.bright_fixed, [z * ny * nx, (z + 1) * ny * nx])
      if k < n_bright and hi > lo:
        f = int(ci.bright_fixed[lo + rng.integers(hi - lo)])
      else:
        f = z * ny * nx + int(rng.integers(ny * nx))
      case_idx[k] = i
      centres[k] = np.unravel_index(f, ci.hu.shape)
    return case_idx, centres

  # -- batches --------------------------------------------------------------------------------

  def _views(self, case_idx: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return self.patches.views(self._volumes, case_idx, centres)

  def _labels(self, case_idx: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return self.patches.labels(self._label_maps, case_idx, centres)

  def _rng(self, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, stream, int(index)])

  def _next_index(self, stream: int, index: int | None) -> int:
    if index is None:
      index = self._counters[stream]
      self._counters[stream] += 1
    return int(index)

  def make_source_batch(self, index: int, with_info: bool = False) -> dict:
    """Source batch number `index` (pure function of seed and index)."""
    if not self._labelled_cases:
      raise ValueError("source batches need cases with labels; none of the cases has a label map")
    rng = self._rng(_SOURCE_STREAM, index)
    case_idx, centres = self._draw(
      rng,
      self._labelled_cases,
      self.n_threshold,
      self.n_uniform,
      self.n_labelled,
      self.bright_in_heart,
      self.n_threshold_in_heart,
    )
    batch = {"views": self._views(case_idx, centres), "labels": self._labels(case_idx, centres)}
    if with_info:
      batch.update(case_index=case_idx, centres=centres)
    return batch

  def make_critic_batch(self, index: int, with_info: bool = False) -> dict:
    """Critic batch number `index` (pure function of seed and index)."""
    rng = self._rng(_CRITIC_STREAM, index)
    n_bright = self.n_critic // 2
    if self.critic_policy == "reference":
      case_idx, centres = self._draw_reference(rng, n_bright, self.n_critic - n_bright)
    else:
      case_idx, centres = self._draw(
        rng,
        range(len(self._cases)),
        n_bright,
        self.n_critic - n_bright,
        0,
        self.critic_bright_in_heart,
      )
    batch = {"views": self._views(case_idx, centres)}
    if with_info:
      batch.update(case_index=case_idx, centres=centres)
    return batch

  def source_batch(self, index: int | None = None, *, with_info: bool = False) -> dict:
    """The next source batch (or batch `index`): {"views", "labels"}."""
    return self.make_source_batch(self._next_index(_SOURCE_STREAM, index), with_info)

  def critic_batch(self, index: int | None = None, *, with_info: bool = False) -> dict:
    """The next critic batch (or batch `index`): {"views"}."""
    return self.make_critic_batch(self._next_index(_CRITIC_STREAM, index), with_info)

  def _prefetcher(self, make, start: int, stop: int | None) -> PrefetchIterator:
    self._prefetchers = [p for p in self._prefetchers if p.alive]
    p = PrefetchIterator(make, start=start, depth=self.prefetch, stop=stop)
    self._prefetchers.append(p)
    return p

  def source_batches(self, start: int = 0, stop: int | None = None) -> PrefetchIterator:
    """Prefetching iterator over source batches start, start + 1, ... (endless if stop=None)."""
    return self._prefetcher(self.make_source_batch, start, stop)

  def critic_batches(self, start: int = 0, stop: int | None = None) -> PrefetchIterator:
    """Prefetching iterator over critic batches start, start + 1, ... (endless if stop=None)."""
    return self._prefetcher(self.make_critic_batch, start, stop)

  @property
  def case_ids(self) -> list[str]:
    return [ci.case.case_id for ci in self._cases]

  def close(self):
    """Stop every prefetching thread started by this sampler."""
    for p in self._prefetchers:
      p.close()
    self._prefetchers = []

  def __enter__(self) -> PatchSampler:
    return self

  def __exit__(self, *exc):
    self.close()
