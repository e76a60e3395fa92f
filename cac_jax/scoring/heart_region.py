"""An automatic heart region from the scan itself, for users without a heart mask.

Classical image processing only (NumPy/SciPy; no trained model, nothing downloaded). The
result stands in for a heart mask: the pipeline dilates it by `scoring.heart_dilation_mm` and
restricts candidates and the FP-reduction heart filter to it, as with a real mask. It is made
for recall of coronary calcium (which lies on the heart's surface), not for a tight heart
outline.

Steps, on a coarse copy of the scan (block means to about `COARSE_MM` per axis, so a 512² x
300 clinical scan costs about as much as a phantom):
  1. Lungs: 3D components of air-like voxels (< -400 HU) of at least `MIN_LUNG_ML` whose mean
     HU is above -950 (lung parenchyma is about -850; air outside the body and bowel gas are
     about -1000, so a component made of them is not a lung).
  2. Mediastinum: per axial slice, voxels that have lung on both sides along the row (x) and
     are neither lung nor air. This holds the heart, great vessels, spine and oesophagus.
  3. Spine cut: the spine is the most posterior bony column (> 130 HU in at least half of the
     lung slices of a (y, x) position, area >= 300 mm², behind the middle of the lungs' y
     extent, so that the sternum is not taken for it when the field of view cuts the spine
     off). The heart lies in front of it, so within the column's x extent (+- `dilation_mm`)
     the region stops `dilation_mm` in front of its anterior edge: after the pipeline's
     dilation it reaches the spine but does not enter the vertebral bodies. In CCTA a
     contrast-filled descending aorta is a "bony" column too and may be taken with (or, in
     a field of view without the spine, for) the spine; the cut then lies in front of it.
  4. Heart: the mediastinum opened with a ball of `OPEN_RADIUS_MM` (the heart is a thick blob;
     the upper mediastinum, the strip in front of the spine and the gaps between lung lobes
     are thin), its largest 3D component, plus the mediastinum within `RECONSTRUCT_MM` of it
     (the opening rounds off the heart's posterior corners, where the atrioventricular
     grooves run), filled per slice.
  5. A blob of less than `MIN_HEART_ML` or less than `MIN_HEART_HEIGHT_MM` tall along z is
     "no heart" (an adult heart is about 500-800 mL and 80-120 mm tall; the tissue between the
     lung bases of an upper-abdominal scan is a blob too, but a flat one): the result is empty
     and the pipeline reports no coronary score, with a warning.

Conventions: arrays (z, y, x); `Scan` geometry in canonical LPS orientation (+y posterior),
which is what `cac_jax.data.volume_io.read_scan` returns. Nothing here prints.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from cac_jax.data.scan import Scan
from cac_jax.scoring import postprocess

COARSE_MM = 3.0
AIR_HU = -400.0
LUNG_MIN_MEAN_HU = -950.0
MIN_LUNG_ML = 20.0
BONE_HU = 130.0
SPINE_MIN_AREA_MM2 = 300.0
SPINE_MIN_FRACTION = 0.5
OPEN_RADIUS_MM = 25.0
RECONSTRUCT_MM = 10.0
MIN_HEART_ML = 150.0
MIN_HEART_HEIGHT_MM = 50.0
# Above this the region surely holds more than the heart and its surroundings (phantoms of
# configs/demo.py: 980-2020 mL; the shared real CT: 910 mL): found, but with a warning.
MAX_PLAUSIBLE_ML = 2500.0


@dataclasses.dataclass(frozen=True)
class AutoHeart:
  """The automatic heart region of one scan.

  Attributes:
    mask: bool (z, y, x) on the scan's grid: the heart estimate, not yet dilated (empty when
      no heart was found).
    found: whether a heart was found.
    volume_ml: volume of `mask` in mL (cm³).
    notes: what was found or why not (for the report's warnings).
  """

  mask: np.ndarray
  found: bool
  volume_ml: float
  notes: tuple[str, ...]


def _factors(spacing) -> tuple[int, int, int]:
  return tuple(max(1, int(round(COARSE_MM / float(s)))) for s in spacing)


def _block_mean(a: np.ndarray, f) -> np.ndarray:
  """Mean over f[0] x f[1] x f[2] blocks (edge-padded), float32."""
  pad = [(0, (-n) % k) for n, k in zip(a.shape, f)]
  a = np.pad(a.astype(np.float32, copy=False), pad, mode="edge")
  z, y, x = (n // k for n, k in zip(a.shape, f))
  return a.reshape(z, f[0], y, f[1], x, f[2]).mean(axis=(1, 3, 5))


def _upsample(mask: np.ndarray, f, shape) -> np.ndarray:
  out = mask
  for ax, k in enumerate(f):
    out = np.repeat(out, k, axis=ax)
  return out[: shape[0], : shape[1], : shape[2]]


def _between(m: np.ndarray, axis: int) -> np.ndarray:
  """True where a True of `m` lies on both sides along `axis` (inclusive)."""
  fwd = np.maximum.accumulate(m, axis=axis)
  bwd = np.flip(np.maximum.accumulate(np.flip(m, axis=axis), axis=axis), axis=axis)
  return fwd & bwd


def _ball_open(mask: np.ndarray, spacing, radius_mm: float) -> np.ndarray:
  """Morphological opening by a Euclidean ball (via two distance transforms)."""
  if not mask.any():
    return mask
  inside = ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm
  if not inside.any():
    return inside
  return ndimage.distance_transform_edt(~inside, sampling=spacing) <= radius_mm


def _lungs(hu: np.ndarray, spacing) -> np.ndarray:
  air = hu < AIR_HU
  lab, n = ndimage.label(air)
  if n == 0:
    return air
  idx = np.arange(1, n + 1)
  counts = np.bincount(lab.ravel(), minlength=n + 1)[1:]
  means = ndimage.mean(hu, lab, idx)
  ml = counts * float(np.prod(spacing)) / 1000.0
  keep = np.zeros(n + 1, bool)
  keep[1:] = (ml >= MIN_LUNG_ML) & (np.asarray(means) > LUNG_MIN_MEAN_HU)
  return keep[lab]


def _spine_column(hu: np.ndarray, lungs: np.ndarray, spacing) -> tuple[int, int, int] | None:
  """The spine (most posterior bony column) in coarse indices, or None.

  Returns (y of the anterior edge, first x, last x)."""
  slices = lungs.any(axis=(1, 2))
  if not slices.any():
    return None
  bone = ndimage.binary_opening(hu[slices] > BONE_HU, structure=np.ones((1, 2, 2), bool))
  column = bone.mean(axis=0) >= SPINE_MIN_FRACTION
  lab, n = ndimage.label(column)
  if n == 0:
    return None
  area = np.bincount(lab.ravel(), minlength=n + 1)[1:] * spacing[1] * spacing[2]
  ys = ndimage.center_of_mass(column, lab, np.arange(1, n + 1))
  lung_y = float(
    np.mean(np.nonzero(lungs.any(axis=(0, 2)))[0])
  )  # sternum and its cartilage are anterior
  cands = [
    (c[0], i + 1) for i, c in enumerate(ys) if area[i] >= SPINE_MIN_AREA_MM2 and c[0] > lung_y
  ]
  if not cands:
    return None
  _, best = max(cands)
  rows, cols = np.nonzero(lab == best)
  return int(np.percentile(rows, 5)), int(cols.min()), int(cols.max())


def find_heart(scan: Scan, dilation_mm: float) -> AutoHeart:
  """The automatic heart region of `scan` (see the module docstring).

  Args:
    scan: HU (z, y, x) in canonical LPS orientation, any spacing.
    dilation_mm: the dilation the caller will apply (the spine cut leaves room for it).

  Returns:
    An `AutoHeart`; `found` False (and an empty mask) when no lungs, no mediastinum or no
    blob of at least `MIN_HEART_ML` and `MIN_HEART_HEIGHT_MM` was found.
  """
  f = _factors(scan.spacing)
  sp = tuple(float(s) * k for s, k in zip(scan.spacing, f))
  hu = _block_mean(scan.hu, f)
  empty = np.zeros(scan.shape, bool)
  lungs = _lungs(hu, sp)
  if not lungs.any():
    return AutoHeart(
      empty,
      False,
      0.0,
      (
        "automatic heart region: no lungs in the field of view, "
        "so no heart region (no heart in view?)",
      ),
    )
  medi = _between(lungs, 2) & ~lungs & (hu >= AIR_HU)
  notes = []
  spine = _spine_column(hu, lungs, sp)
  if spine is not None:
    y_front, x0, x1 = spine
    cut = y_front - int(np.ceil(dilation_mm / sp[1]))
    margin = int(np.ceil(dilation_mm / sp[2]))
    medi[:, max(cut, 0) :, max(x0 - margin, 0) : x1 + margin + 1] = False
  else:
    notes.append("automatic heart region: spine not found, region not cut in front of it")
  blob = _ball_open(medi, sp, OPEN_RADIUS_MM) & medi
  lab, n = ndimage.label(blob)
  if n == 0:
    return AutoHeart(
      empty,
      False,
      0.0,
      ("automatic heart region: no mediastinal blob between the lungs (no heart in view?)",),
    )
  sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
  heart = lab == 1 + int(np.argmax(sizes))
  if RECONSTRUCT_MM > 0:  # give back the mediastinum the opening rounded off near the blob
    heart |= medi & (ndimage.distance_transform_edt(~heart, sampling=sp) <= RECONSTRUCT_MM)
  heart = np.stack([ndimage.binary_fill_holes(s) for s in heart])
  volume_ml = float(heart.sum() * np.prod(sp) / 1000.0)
  height_mm = float(heart.any(axis=(1, 2)).sum() * sp[0])
  if volume_ml < MIN_HEART_ML or height_mm < MIN_HEART_HEIGHT_MM:
    return AutoHeart(
      empty,
      False,
      volume_ml,
      (
        f"automatic heart region: the largest mediastinal blob ({volume_ml:.0f} mL, {height_mm:.0f} mm "
        f"tall) is smaller than a heart (>= {MIN_HEART_ML:.0f} mL, >= {MIN_HEART_HEIGHT_MM:.0f} mm): "
        "no heart in view?",
      ),
    )
  mask = _upsample(heart, f, scan.shape)
  volume_ml = float(mask.sum() * scan.voxel_volume_mm3 / 1000.0)
  if volume_ml > MAX_PLAUSIBLE_ML:
    notes.append(
      f"automatic heart region is {volume_ml:.0f} mL (> {MAX_PLAUSIBLE_ML:.0f} mL): it probably holds "
      "non-cardiac tissue; check overlay.png or give a heart mask"
    )
  return AutoHeart(mask, True, volume_ml, tuple(notes))


def dice(a: np.ndarray, b: np.ndarray) -> float:
  """Dice overlap of two bool masks (1.0 when both are empty)."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  total = int(a.sum()) + int(b.sum())
  return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def measure(
  scan: Scan,
  heart_mask: np.ndarray,
  coronary: np.ndarray | None,
  dilation_mm: float,
  bone: np.ndarray | None = None,
) -> dict:
  """How the automatic region of `scan` compares with a reference heart mask.

  Args:
    scan: the scan.
    heart_mask: bool (z, y, x) reference heart mask on the scan's grid.
    coronary: bool (z, y, x) reference coronary calcium, optional.
    dilation_mm: the dilation scoring applies to both regions.
    bone: bool (z, y, x) bone (e.g. a phantom's tissue map), optional.

  Returns:
    {"found", "dice" (undilated region vs mask), "volume_ratio" (dilated automatic region /
    dilated reference region, as scoring uses them), "coronary_voxels", "coronary_inside"
    (reference coronary voxels inside the dilated automatic region), "bone_ml",
    "bone_ml_reference" (bone inside the dilated automatic / reference region, mL: candidates
    the network must call background)}.
  """
  found = find_heart(scan, dilation_mm)
  region = postprocess.heart_region(found.mask, scan.spacing, dilation_mm)
  reference = postprocess.heart_region(heart_mask, scan.spacing, dilation_mm)
  out = {
    "found": found.found,
    "dice": dice(found.mask, heart_mask),
    "volume_ratio": float(region.sum()) / max(int(reference.sum()), 1),
  }
  if coronary is not None:
    out.update(coronary_voxels=int(coronary.sum()), coronary_inside=int((coronary & region).sum()))
  if bone is not None:
    ml = scan.voxel_volume_mm3 / 1000.0
    out.update(
      bone_ml=float((bone & region).sum() * ml),
      bone_ml_reference=float((bone & reference).sum() * ml),
    )
  return out
