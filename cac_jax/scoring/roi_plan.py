"""ROI planning for whole-scan inference: which slice boxes the view towers run on.

Per view, each slice with candidates gets boxes around its candidates (`split_boxes`), and
the boxes are padded to a few shapes (`choose_shapes`, sizes from `bucket_ladder`), so that
jit compiles a bounded number of tower shapes per scan. `plan_rois` does both for a scan;
`cac_jax.scoring.infer` runs the towers on the plan.

Coordinates are voxel indices (z, y, x); a view's (slice, row, col) order is `PERMS[view]`.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from cac_jax import models

# View order as in `models.VIEWS`: axes permutation bringing (slice, row, col) to the front.
# axial: slices z, rows y, cols x; coronal: slices y, (z, x); sagittal: slices x, (z, y).
PERMS = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


def _round_up(n: int, q: int) -> int:
  return int(-(-n // q) * q)


def bucket_ladder(limit: int, bucket: int = 16, ratio: float = 1.25) -> np.ndarray:
  """Allowed ROI sizes: multiples of `bucket` growing by >= `ratio`, up to >= `limit`."""
  out = [bucket]
  while out[-1] < limit:
    out.append(max(out[-1] + bucket, _round_up(int(math.ceil(out[-1] * ratio)), bucket)))
  return np.asarray(out)


MAX_CELLS = 64  # split_boxes: most grid cells merged greedily per slice


def _box_cost(r0, r1, c0, c1, margin: int):
  """Padded input pixels of boxes with inclusive row/col bounds (arrays or ints)."""
  return (r1 - r0 + 1 + margin) * (c1 - c0 + 1 + margin)


def split_boxes(
  rows: np.ndarray, cols: np.ndarray, margin: int, cell: int | None = None
) -> list[np.ndarray]:
  """Group one slice's candidate pixels into boxes minimising sum((h + margin) * (w + margin)).

  Candidates are first binned into `cell`-sized grid cells (one box each), then the pair of
  boxes whose union saves the most padded pixels is merged until no merge saves any. The
  greedy merge costs O(cells^3), so the cell size is doubled until at most `MAX_CELLS` cells
  remain: a slice full of scattered candidates is planned in bounded work (coarser boxes),
  and the plan of a whole scan stays linear in its number of candidate slices.
  Returns a list of index arrays into `rows`/`cols` (one per box).
  """
  rows, cols = np.asarray(rows, int), np.asarray(cols, int)
  cell = cell or max(4, margin // 4)
  while True:
    keys = (rows // cell) * (1 << 20) + cols // cell
    uniq, inv = np.unique(keys, return_inverse=True)
    if len(uniq) <= MAX_CELLS:
      break
    cell *= 2
  inv = inv.reshape(-1)
  if len(uniq) == 1:
    return [np.arange(len(rows))]
  k = len(uniq)
  lo_r = np.full(k, np.iinfo(int).max)
  hi_r = np.full(k, -1)
  lo_c = np.full(k, np.iinfo(int).max)
  hi_c = np.full(k, -1)
  np.minimum.at(lo_r, inv, rows)
  np.maximum.at(hi_r, inv, rows)
  np.minimum.at(lo_c, inv, cols)
  np.maximum.at(hi_c, inv, cols)
  label = np.arange(k)  # box of each cell
  alive = np.ones(k, bool)
  # saving[i, j]: padded pixels saved by merging boxes i and j. Kept for all k x k pairs and
  # updated in the merged box's row and column only (a merge changes nothing else); dead boxes
  # and the diagonal are below any real saving, so the first largest entry in row-major order
  # is the pair the full recomputation over the live boxes would pick (integer arithmetic).
  dead = np.iinfo(np.int64).min // 4
  single = _box_cost(lo_r, hi_r, lo_c, hi_c, margin)
  saving = (
    single[:, None]
    + single[None, :]
    - _box_cost(
      np.minimum.outer(lo_r, lo_r),
      np.maximum.outer(hi_r, hi_r),
      np.minimum.outer(lo_c, lo_c),
      np.maximum.outer(hi_c, hi_c),
      margin,
    )
  )
  np.fill_diagonal(saving, dead)
  for _ in range(k - 1):
    i, j = np.unravel_index(np.argmax(saving), saving.shape)
    if saving[i, j] < 0:
      break
    lo_r[i], hi_r[i] = min(lo_r[i], lo_r[j]), max(hi_r[i], hi_r[j])
    lo_c[i], hi_c[i] = min(lo_c[i], lo_c[j]), max(hi_c[i], hi_c[j])
    single[i] = _box_cost(lo_r[i], hi_r[i], lo_c[i], hi_c[i], margin)
    row = (
      single[i]
      + single
      - _box_cost(
        np.minimum(lo_r[i], lo_r),
        np.maximum(hi_r[i], hi_r),
        np.minimum(lo_c[i], lo_c),
        np.maximum(hi_c[i], hi_c),
        margin,
      )
    )
    row[~alive] = dead
    row[i] = dead
    saving[i, :], saving[:, i] = row, row
    saving[j, :], saving[:, j] = dead, dead
    alive[j] = False
    label[label == j] = i
  box_of = label[inv]
  return [np.flatnonzero(box_of == b) for b in np.unique(box_of)]


def choose_shapes(
  needs: np.ndarray, margin: int, *, bucket: int = 16, max_shapes: int = 4, min_gain: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
  """Pick at most `max_shapes` ROI output shapes covering every (h, w) in `needs` (M, 2).

  Sizes come from `bucket_ladder`; the first shape covers all needs, then shapes are added
  greedily while one saves >= `min_gain` of the total padded input pixels
  sum((H + margin) * (W + margin)). Returns (shapes (K, 2), assignment (M,) into shapes).
  """
  needs = np.asarray(needs, int).reshape(-1, 2)
  if len(needs) == 0:
    return np.zeros((0, 2), int), np.zeros((0,), int)
  ladder = bucket_ladder(int(needs.max()), bucket)
  snapped = ladder[np.searchsorted(ladder, needs)]  # (M, 2) smallest ladder size >= need
  options = np.unique(snapped, axis=0)  # (O, 2)
  cost = (options[:, 0] + margin) * (options[:, 1] + margin)  # (O,)
  covers = (options[None, :, 0] >= needs[:, None, 0]) & (
    options[None, :, 1] >= needs[:, None, 1]
  )  # (M, O)
  chosen = [
    int(np.argmax((options[:, 0] >= snapped[:, 0].max()) & (options[:, 1] >= snapped[:, 1].max())))
  ]
  if not covers[:, chosen[0]].all():  # the max of each axis came from different slices
    options = np.vstack([options, snapped.max(axis=0)])
    cost = np.append(cost, (options[-1, 0] + margin) * (options[-1, 1] + margin))
    covers = np.hstack([covers, np.ones((len(needs), 1), bool)])
    chosen = [len(options) - 1]
  per = np.where(covers, cost[None, :], np.inf)  # (M, O) cost of each need under each option
  current = per[:, chosen[0]].copy()
  while len(chosen) < max_shapes:
    gains = np.maximum(current[:, None] - per, 0).sum(axis=0)  # (O,)
    best = int(np.argmax(gains))
    if gains[best] < min_gain * current.sum() or gains[best] <= 0:
      break
    chosen.append(best)
    current = np.minimum(current, per[:, best])
  sub = per[:, chosen]
  return options[chosen], np.argmin(sub, axis=1)


def plan_rois(
  coords: np.ndarray,
  half: int,
  *,
  split: bool = True,
  bucket: int = 16,
  max_shapes: int = 4,
  min_gain: float = 0.05,
  cache=None,
) -> tuple[list, np.ndarray, np.ndarray, dict]:
  """Tower ROIs for candidate voxels `coords` (N, 3) (z, y, x) with receptive-field half-width `half`.

  Per orientation and slice: boxes around that slice's candidates (one bounding box, or several
  where separate clusters are cheaper with their own margins), then at most `max_shapes` padded
  ROI shapes (`choose_shapes`). Returns (rois [(view index, slice, row0, col0, candidate indices,
  h, w)], shapes (K, 2), shape index per ROI, {view: slices with candidates}). With `cache`
  (an object with `plan_key` and `plan`, such as `infer.InferenceCache`) the last plan is kept
  there, keyed by the candidates and arguments; None plans afresh.
  """
  coords = np.ascontiguousarray(coords)
  key = (
    hashlib.sha1(coords.tobytes()).hexdigest(),
    coords.shape,
    half,
    split,
    bucket,
    max_shapes,
    min_gain,
  )
  if cache is not None and cache.plan_key == key:
    return cache.plan
  n = coords.shape[0]
  rois, n_slices = [], {}
  for v_i, view in enumerate(models.VIEWS):
    c = coords[:, PERMS[view]]  # (N, 3): slice, row, col
    order = np.argsort(c[:, 0], kind="stable")
    sl, starts = np.unique(c[order, 0], return_index=True)
    ends = np.append(starts[1:], n)
    for s, a, e in zip(sl, starts, ends):
      idx = order[a:e]
      boxes = split_boxes(c[idx, 1], c[idx, 2], 2 * half) if split else [np.arange(len(idx))]
      for members in boxes:
        sub = idx[members]
        r0, c0 = int(c[sub, 1].min()), int(c[sub, 2].min())
        rois.append(
          (v_i, int(s), r0, c0, sub, int(c[sub, 1].max()) - r0 + 1, int(c[sub, 2].max()) - c0 + 1)
        )
    n_slices[view] = len(sl)
  needs = np.array([(r[5], r[6]) for r in rois])
  shapes, assign = choose_shapes(
    needs, 2 * half, bucket=bucket, max_shapes=max_shapes, min_gain=min_gain
  )
  plan = (rois, shapes, assign, n_slices)
  if cache is not None:
    cache.plan_key, cache.plan = key, plan
  return plan
