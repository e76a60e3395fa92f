"""Calcium HU thresholds: fixed for NCCT, patient-specific (ascending-aorta lumen) for CCTA.

NCCT uses a fixed threshold (`config.scoring.ncct_threshold`, the standard 130 HU). In CCTA
the lumen is contrast-filled, so calcium is defined as voxels brighter than the lumen:
threshold = mean + 3 SD of the HU in a box of about 14 x 14 x 18 mm (y, x, z) inside the
ascending-aorta lumen at the level of the left coronary origin.

Conventions: arrays are (z, y, x), geometry from a `cac_jax.data.scan.Scan` in canonical LPS
orientation (identity direction): +x = patient left, +y = posterior, +z = superior. For a
non-identity direction matrix the anatomical tests ("anterior", "right", "lower") use the
direction cosines, so a scan in another orientation still works.

Ascending aorta from a mask (`source="mask"`):
  1. Erode the mask by `erode_mm` (default 3 mm, by a Euclidean distance transform with the
     scan's spacing) so the wall and wall calcium are excluded.
  2. Cut the arch: find the highest slice below the arch where the eroded mask has two or
     more in-slice components; slices above it are removed, the rest is labelled in 3D
     (26-connectivity) and the most anterior (by centroid) of the components holding at
     least 10 % of the remaining volume is the ascending aorta. A mask with a single
     component (e.g. an ascending-aorta-only mask) is used whole.
  3. Level: the box's lower face sits on the lowest slice of the ascending part (the aortic
     root just above the valve), so the box covers the sinuses where the coronary arteries
     arise (the ostia are about 10-15 mm above the annulus); the box is centred in-plane on the
     lumen centroid over those slices. Only voxels that are both in the box and in the eroded
     ascending lumen are used.
  4. Robust statistics: voxels more than 3.5 robust SD (1.4826 MAD) from the median are
     dropped before mean and SD are taken, so wall calcium or streaks that survive the
     erosion cannot inflate the threshold.

Automatic detection (`source="auto"`): per axial slice, voxels in 150..700 HU are opened (by a
`open_mm` disk, via distance transforms) and split into components; a component is a
candidate lumen cross-section when its largest inscribed circle has a diameter of 18..45 mm
and it is round (inscribed radius / equivalent-disk radius >= 0.7). Candidates are linked
across neighbouring slices into chains (centre shift < 40 % of the radius, gaps of one slice
allowed). Chains of at least 15 mm length in the anterior part of the body (centroid in the
front 55 % of the body's antero-posterior extent, which removes the descending aorta and the
spine region) are scored by radius x sqrt(length), with a penalty for lying to the patient's
left of the body centre (pulmonary trunk) and for small radius (superior vena cava); the best
chain is taken as the ascending aorta and the ROI is placed as in step 3 on that chain's
lumen. `NoAortaError` is raised when nothing qualifies.

Coarse search, native statistics (`find_ascending_aorta_coarse`, what scoring and sampling
use): the search above runs on a copy of the scan no finer than `SEARCH_SPACING_MM` (linear
resampling; the paper's ROI is about 35 x 36 x 44 voxels, the search needs no 0.3 mm voxels),
its lumen is mapped back to the scan's own grid by nearest neighbour and eroded there, and the
domain decision and the ROI statistics use the scan's own voxels. On a scan no finer than that
grid it is the search itself. The lumen is found once per scan (`choose_threshold`) and shared
by the domain decision and the threshold.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage

from cac_jax.data.scan import Scan

# Mean lumen HU above which a scan is taken as contrast-enhanced.
CONTRAST_LUMEN_HU = 150.0
# Finest grid (z, y, x) mm the automatic aorta search runs on (coarser axes are kept): the
# shared real CT's own grid, on which the search was tuned.
SEARCH_SPACING_MM = (1.5, 1.5, 1.5)
# Slices without a candidate a chain bridges on that grid (3 mm): interpolation onto it can
# drop a cross-section that the finer grid showed round.
SEARCH_MAX_GAP = 2


class NoAortaError(RuntimeError):
  """No ascending aorta found (no usable mask and automatic detection failed)."""


@dataclasses.dataclass(frozen=True)
class AortaROI:
  """The lumen region whose HU statistics give the CCTA calcium threshold.

  Attributes:
    centre: (z, y, x) voxel index of the box centre.
    box: (z, y, x) slices of the box in the scan array.
    mean_hu: robust mean HU of the lumen voxels in the box.
    sd_hu: robust SD (HU) of those voxels.
    threshold_hu: mean_hu + 3 * sd_hu.
    source: "mask" (from an aorta mask) or "auto" (automatic detection).
    num_voxels: number of voxels used for the statistics (after outlier removal).
    voxels: bool (z, y, x) mask, on the scan grid, of the voxels used.
  """

  centre: tuple[int, int, int]
  box: tuple[slice, slice, slice]
  mean_hu: float
  sd_hu: float
  threshold_hu: float
  source: str
  num_voxels: int = 0
  voxels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)


def _axis_signs(scan: Scan) -> tuple[float, float, float]:
  """Signs (z, y, x) telling whether increasing array index goes superior, posterior, left.

  For each array axis, the sign of the dominant LPS component of its direction cosine
  (+1: index increases towards S for z, towards P for y, towards L for x, as in LPS identity).
  """
  d = scan.direction_matrix
  # column k = physical direction of ITK index axis k (x, y, z)
  sx = float(np.sign(d[0, 0]) or 1.0)
  sy = float(np.sign(d[1, 1]) or 1.0)
  sz = float(np.sign(d[2, 2]) or 1.0)
  return sz, sy, sx


def _robust_stats(values: np.ndarray) -> tuple[float, float, np.ndarray]:
  """Mean and SD after dropping values further than 3.5 robust SD from the median."""
  values = np.asarray(values, dtype=np.float64)
  med = np.median(values)
  mad = 1.4826 * np.median(np.abs(values - med))
  if mad > 0:
    keep = np.abs(values - med) <= 3.5 * mad
  else:
    keep = np.ones(values.shape, dtype=bool)
  kept = values[keep]
  return float(kept.mean()), float(kept.std()), keep


def _roi_from_lumen(scan: Scan, lumen: np.ndarray, roi_size_mm, source: str) -> AortaROI:
  """Place the box on the lowest slices of an (eroded) ascending-aorta lumen mask."""
  sz, _, _ = _axis_signs(scan)
  zs = np.flatnonzero(lumen.any(axis=(1, 2)))
  if zs.size == 0:
    raise NoAortaError("the ascending-aorta lumen is empty after erosion")
  half = [max(1, int(round(s / sp / 2.0))) for s, sp in zip(roi_size_mm, scan.spacing)]
  nz = 2 * half[0] + 1
  # lowest slice = most inferior: smallest z index when z goes superior.
  if sz > 0:
    z_lo = int(zs.min())
    z0, z1 = z_lo, min(z_lo + nz, lumen.shape[0])
  else:
    z_hi = int(zs.max())
    z0, z1 = max(z_hi - nz + 1, 0), z_hi + 1
  sub = lumen[z0:z1]
  if not sub.any():
    raise NoAortaError("no lumen voxels at the ROI level")
  _, cy, cx = [float(c) for c in ndimage.center_of_mass(sub)]
  cy_i, cx_i = int(round(cy)), int(round(cx))
  cz = (z0 + z1 - 1) // 2
  box = (
    slice(z0, z1),
    slice(max(cy_i - half[1], 0), cy_i + half[1] + 1),
    slice(max(cx_i - half[2], 0), cx_i + half[2] + 1),
  )
  used = lumen[box]
  if used.sum() < 10:
    raise NoAortaError(f"only {int(used.sum())} lumen voxels in the aortic ROI")
  vals = scan.hu[box][used]
  mean, sd, keep = _robust_stats(vals)
  idx = np.nonzero(used)
  voxels = np.zeros(lumen.shape, dtype=bool)
  voxels[tuple(i[keep] + b.start for i, b in zip(idx, box))] = True
  return AortaROI(
    centre=(cz, cy_i, cx_i),
    box=box,
    mean_hu=mean,
    sd_hu=sd,
    threshold_hu=mean + 3.0 * sd,
    source=source,
    num_voxels=int(keep.sum()),
    voxels=voxels,
  )


def _erode_mm(mask: np.ndarray, spacing, mm: float) -> np.ndarray:
  """Voxels of `mask` farther than `mm` (mm) from its outside (the volume border counts as outside).

  The distance transform runs on the mask's bounding box padded by one background voxel: exact,
  since the nearest background voxel of an inside voxel is never farther than that padding.
  """
  if mm <= 0:
    return mask.copy()
  out = np.zeros(mask.shape, dtype=bool)
  bb = ndimage.find_objects(mask.astype(np.uint8))
  if not bb or bb[0] is None:
    return out
  padded = np.pad(mask[bb[0]], 1)
  out[bb[0]] = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1] > mm
  return out


def ascending_aorta_from_mask(
  scan: Scan, aorta_mask: np.ndarray, erode_mm: float = 3.0
) -> np.ndarray:
  """The eroded ascending-aorta lumen (bool (z, y, x)) from a whole- or ascending-aorta mask.

  See the module docstring (steps 1-2). Falls back to smaller erosions when `erode_mm` would
  remove everything. Raises NoAortaError for an empty mask.
  """
  mask = np.asarray(aorta_mask) > 0
  if mask.shape != scan.shape:
    raise ValueError(f"aorta mask shape {mask.shape} differs from scan shape {scan.shape}")
  if not mask.any():
    raise NoAortaError("the aorta mask is empty")
  eroded = None
  for mm in (erode_mm, erode_mm / 2, 0.0):
    eroded = _erode_mm(mask, scan.spacing, mm)
    if eroded.sum() >= 20:
      break
  sz, sy, _ = _axis_signs(scan)
  zs = np.flatnonzero(eroded.any(axis=(1, 2)))
  if zs.size == 0:
    raise NoAortaError("the aorta mask is empty after erosion")
  two = [z for z in zs if ndimage.label(eroded[z])[1] >= 2]
  work = eroded.copy()
  if two:
    # cut the arch: drop slices above the highest two-component slice
    top = max(two) if sz > 0 else min(two)
    if sz > 0:
      work[top + 1 :] = False
    else:
      work[:top] = False
  lab, n = ndimage.label(work, structure=np.ones((3, 3, 3), bool))
  if n <= 1:
    return work
  sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
  big = [i + 1 for i in range(n) if sizes[i] >= 0.1 * sizes.max()]
  ys = {i: ndimage.center_of_mass(lab == i)[1] for i in big}
  # anterior = smallest y when y increases posteriorly
  best = min(big, key=lambda i: sy * ys[i])
  return lab == best


def _disk_opening_2d(m: np.ndarray, spacing_yx, r_mm: float) -> np.ndarray:
  """Binary opening by a disk of radius r_mm (via two distance transforms)."""
  if not m.any():
    return m
  inner = ndimage.distance_transform_edt(np.pad(m, 1), sampling=spacing_yx)[1:-1, 1:-1] > r_mm
  if not inner.any():
    return inner
  return ndimage.distance_transform_edt(~inner, sampling=spacing_yx) <= r_mm


@dataclasses.dataclass
class _Candidate:
  z: int
  cy: float  # mm
  cx: float  # mm
  radius: float  # inscribed radius, mm
  mask: np.ndarray  # 2D bool of the opened component


def _slice_candidates(scan: Scan, z: int, hu_range, diameter_mm, open_mm, min_roundness):
  sp = scan.spacing[1:]
  s = scan.hu[z]
  m = (s >= hu_range[0]) & (s <= hu_range[1])
  m = ndimage.binary_fill_holes(_disk_opening_2d(m, sp, open_mm))
  lab, n = ndimage.label(m)
  out = []
  if n == 0:
    return out
  dist = ndimage.distance_transform_edt(np.pad(m, 1), sampling=sp)[1:-1, 1:-1]
  areas = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1)) * sp[0] * sp[1]
  rmax = ndimage.maximum(dist, lab, index=np.arange(1, n + 1))
  for i in range(n):
    r = float(rmax[i])
    if not diameter_mm[0] <= 2 * r <= diameter_mm[1]:
      continue
    r_eq = np.sqrt(areas[i] / np.pi)
    if r / r_eq < min_roundness:
      continue
    comp = lab == i + 1
    cy, cx = ndimage.center_of_mass(comp)
    out.append(_Candidate(z, cy * sp[0], cx * sp[1], r, comp))
  return out


def _body_extent_y(scan: Scan, z: int) -> tuple[float, float] | None:
  body = scan.hu[z] > -300
  ys = np.flatnonzero(body.any(axis=1))
  if ys.size == 0:
    return None
  return float(ys.min()), float(ys.max())


def find_ascending_aorta(
  scan: Scan,
  hu_range=(150.0, 700.0),
  diameter_mm=(18.0, 45.0),
  open_mm: float = 3.0,
  min_roundness: float = 0.7,
  min_length_mm: float = 15.0,
) -> np.ndarray:
  """Automatic ascending-aorta lumen (bool (z, y, x), eroded by 3 mm); see module docstring.

  The search runs on every slice of `scan` at its own resolution (`find_ascending_aorta_coarse`
  runs it on a coarse copy). Raises NoAortaError when no round, bright, tubular anterior
  structure is found.
  """
  return _eroded_lumen(
    scan,
    _chain_lumen(scan, hu_range, diameter_mm, open_mm, min_roundness, min_length_mm),
  )


def _eroded_lumen(scan: Scan, lumen: np.ndarray) -> np.ndarray:
  """The chain's lumen eroded by 3 mm (wall and wall calcium out).

  Whole when the erosion would leave fewer than 20 voxels."""
  eroded = _erode_mm(lumen, scan.spacing, 3.0)
  return eroded if eroded.sum() >= 20 else lumen


def _chain_lumen(
  scan: Scan, hu_range, diameter_mm, open_mm, min_roundness, min_length_mm, max_gap=1
) -> np.ndarray:
  """The best chain's cross-sections, not eroded (bool (z, y, x)); see `find_ascending_aorta`.

  `max_gap`: slices without a candidate a chain may bridge.
  """
  sz, sy, sx = _axis_signs(scan)
  spz = scan.spacing[0]
  chains: list[list[_Candidate]] = []
  open_chains: list[list[_Candidate]] = []
  for z in range(scan.shape[0]):
    cands = _slice_candidates(scan, z, hu_range, diameter_mm, open_mm, min_roundness)
    used = set()
    still_open = []
    for ch in open_chains:
      last = ch[-1]
      if z - last.z > max_gap + 1:
        chains.append(ch)
        continue
      best, best_d = None, None
      for j, c in enumerate(cands):
        if j in used:
          continue
        d = np.hypot(c.cy - last.cy, c.cx - last.cx)
        if d < 0.4 * max(last.radius, c.radius) and (best_d is None or d < best_d):
          best, best_d = j, d
      if best is not None:
        used.add(best)
        ch.append(cands[best])
      still_open.append(ch)
    for j, c in enumerate(cands):
      if j not in used:
        still_open.append([c])
    open_chains = still_open
  chains.extend(open_chains)

  scored = []
  for ch in chains:
    length = (ch[-1].z - ch[0].z + 1) * spz
    if length < min_length_mm:
      continue
    rel_y, rel_x = [], []
    for c in ch:
      ext = _body_extent_y(scan, c.z)
      if ext is None:
        continue
      y0, y1 = ext
      ry = (c.cy / scan.spacing[1] - y0) / max(y1 - y0, 1.0)
      rel_y.append(ry if sy > 0 else 1.0 - ry)
      body_x = np.flatnonzero((scan.hu[c.z] > -300).any(axis=0))
      rx = (c.cx / scan.spacing[2] - body_x.min()) / max(body_x.max() - body_x.min(), 1.0)
      rel_x.append(rx if sx > 0 else 1.0 - rx)  # 0 = patient right, 1 = left
    if not rel_y or np.mean(rel_y) > 0.55:
      continue
    radius = float(np.median([c.radius for c in ch]))
    score = radius * np.sqrt(length)
    mx = float(np.mean(rel_x))
    if mx > 0.55:  # left of the centre: pulmonary trunk territory
      score *= 0.5
    if radius < 11.0:  # small vessel (e.g. superior vena cava)
      score *= 0.5
    scored.append((score, ch))
  if not scored:
    raise NoAortaError(
      "no ascending aorta found: no round, contrast-filled (150-700 HU), 18-45 mm wide, "
      f">= {min_length_mm:g} mm long structure in the anterior chest"
    )
  _, best = max(scored, key=lambda t: t[0])
  lumen = np.zeros(scan.shape, dtype=bool)
  for prev, c in zip([None] + best[:-1], best):
    if prev is not None:
      # bridge gap slices: the previous cross-section, restricted to the HU range there
      for z in range(prev.z + 1, c.z):
        lumen[z] = prev.mask & (scan.hu[z] >= hu_range[0]) & (scan.hu[z] <= hu_range[1])
    lumen[c.z] = c.mask
  return lumen


def search_spacing(spacing) -> tuple[float, float, float]:
  """The grid (z, y, x) mm the automatic aorta search of a scan with `spacing` runs on."""
  return tuple(max(float(s), c) for s, c in zip(spacing, SEARCH_SPACING_MM))


def find_ascending_aorta_coarse(scan: Scan, search: Scan | None = None) -> np.ndarray:
  """`find_ascending_aorta` searched on the `search_spacing` grid, the lumen on `scan`'s grid.

  The search's lumen (not eroded) is mapped to `scan`'s voxels by nearest neighbour and eroded
  by 3 mm there, so statistics taken on it use the scan's own voxels. `search`: the scan
  already resampled (linear) to `search_spacing(scan.spacing)`, when the caller has it.
  Returns bool (z, y, x) on `scan`'s grid; raises NoAortaError as the search does.
  """
  from cac_jax.data import preprocess  # SimpleITK: this module stays numpy/scipy otherwise

  spacing = search_spacing(scan.spacing)
  if np.allclose(spacing, scan.spacing, rtol=1e-6, atol=0):
    return find_ascending_aorta(scan)
  if search is None or not np.allclose(search.spacing, spacing, rtol=1e-6, atol=0):
    search = preprocess.resample(scan, spacing, order=1)
  coarse = _chain_lumen(search, (150.0, 700.0), (18.0, 45.0), 3.0, 0.7, 15.0, SEARCH_MAX_GAP)
  lumen = preprocess.resample_labels(coarse.astype(np.uint8), search, scan) > 0
  return _eroded_lumen(scan, lumen)


def aorta_lumen(
  scan: Scan, aorta_mask: np.ndarray | None = None, search: Scan | None = None
) -> tuple[np.ndarray, str]:
  """The ascending-aorta lumen of a scan, bool (z, y, x), and where it came from.

  "mask" (`ascending_aorta_from_mask`; an all-zero mask counts as none) or "auto"
  (`find_ascending_aorta_coarse`, `search` as there). Raises NoAortaError."""
  if aorta_mask is not None and np.any(aorta_mask):
    return ascending_aorta_from_mask(scan, aorta_mask), "mask"
  return find_ascending_aorta_coarse(scan, search), "auto"


def ccta_threshold(scan: Scan, aorta_mask: np.ndarray | None = None, *, roi_size_mm) -> AortaROI:
  """Patient-specific CCTA calcium threshold (mean + 3 SD of the ascending-aorta lumen).

  Args:
    scan: the CCTA scan.
    aorta_mask: optional (z, y, x) aorta mask (whole or ascending aorta) on the scan grid.
    roi_size_mm: ROI box size (z, y, x) in mm (config `scoring.roi_size_mm`).

  Returns:
    `AortaROI` with `source` "mask" or "auto".

  Raises:
    NoAortaError: when neither the mask nor automatic detection yields a lumen (the caller
      turns this into a warning and an all-zero result). An empty mask (all zero) is treated
      as no mask (automatic detection).
  """
  lumen, source = aorta_lumen(scan, aorta_mask)
  return _roi_from_lumen(scan, lumen, roi_size_mm, source)


def decide_domain(scan: Scan, aorta_mask: np.ndarray | None = None) -> tuple[str, str]:
  """Decide whether a scan is NCCT or CCTA from the aortic lumen HU.

  Returns:
    ("ccta" | "ncct", human-readable reason).
  """
  try:
    lumen, source = aorta_lumen(scan, aorta_mask)
  except NoAortaError as e:
    return _domain_without_lumen(e)
  return _domain_from_lumen(scan, lumen, source)


def _domain_without_lumen(e: NoAortaError) -> tuple[str, str]:
  return "ncct", f"no contrast-filled aorta found ({e}); assuming non-contrast CT"


def _domain_from_lumen(scan: Scan, lumen: np.ndarray, source: str) -> tuple[str, str]:
  how = {"mask": "aorta mask", "auto": "automatic aorta detection"}[source]
  mean, _, _ = _robust_stats(scan.hu[lumen])
  if mean > CONTRAST_LUMEN_HU:
    return "ccta", f"aortic lumen mean {mean:.0f} HU > {CONTRAST_LUMEN_HU:.0f} HU ({how})"
  return "ncct", f"aortic lumen mean {mean:.0f} HU <= {CONTRAST_LUMEN_HU:.0f} HU ({how})"


def roi_report(roi: AortaROI) -> dict[str, Any]:
  """The ROI's description for a scoring report (JSON-serialisable)."""
  return {
    "method": f"aorta lumen ROI mean+3SD ({roi.source})",
    "roi_centre_zyx": list(roi.centre),
    "roi_box_zyx": [[s.start, s.stop] for s in roi.box],
    "roi_num_voxels": int(roi.num_voxels),
    "mean_hu": float(roi.mean_hu),
    "sd_hu": float(roi.sd_hu),
    "threshold_hu": float(roi.threshold_hu),
  }


def choose_threshold(
  scan: Scan, domain: str, aorta_mask: np.ndarray | None, config, search: Scan | None = None
) -> tuple[str, float, dict, list[str]]:
  """The calcium threshold policy shared by scoring and training's patch sampling.

  Decides the domain when it is "auto" (`decide_domain`), then the threshold: the fixed
  `config.scoring.ncct_threshold` (HU) for NCCT, the aorta-lumen mean + 3 SD in a
  `config.scoring.roi_size_mm` box (`ccta_threshold`) for CCTA.

  The aorta's lumen is found once (`aorta_lumen`; `search` as in `find_ascending_aorta_coarse`)
  and shared by both. Returns (domain, threshold_hu, info dict for a report, notes).
  Raises NoAortaError when a CCTA threshold cannot be found: what to do then is the caller's
  (scoring reports an all-zero result, sampling falls back to the NCCT threshold).
  """
  info: dict[str, Any] = {}
  notes: list[str] = []
  found: list = []

  def lumen() -> tuple[np.ndarray, str]:
    if not found:
      try:
        found.append(aorta_lumen(scan, aorta_mask, search))
      except NoAortaError as e:
        found.append(e)
    if isinstance(found[0], NoAortaError):
      raise found[0]
    return found[0]

  if domain == "auto":
    try:
      domain, reason = _domain_from_lumen(scan, *lumen())
    except NoAortaError as e:
      domain, reason = _domain_without_lumen(e)
    info["domain_decision"] = reason
    notes.append(f"domain auto-detected as {domain}: {reason}")
  if domain not in ("ncct", "ccta"):
    raise ValueError(f"domain must be 'ncct', 'ccta' or 'auto'; got {domain!r}")
  if domain == "ncct":
    thr = float(config.scoring.ncct_threshold)
    info["threshold"] = {"method": "fixed NCCT threshold", "threshold_hu": thr}
  else:
    asc, source = lumen()
    roi = _roi_from_lumen(scan, asc, tuple(config.scoring.roi_size_mm), source)
    thr = float(roi.threshold_hu)
    info["threshold"] = roi_report(roi)
  return domain, thr, info, notes
