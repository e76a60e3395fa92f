"""False-positive reduction of voxel-wise calcium detections.

Three switchable steps (see `FPReductionSettings`, used for the ablation):
  1. Region growing (`grow_lesions`): each detected voxel is grown to its 6-connected
     component of voxels at or above the calcium threshold; the whole component gets the
     majority class of the detected voxels in it.
  2. Size limits (`size_filter`): lesions (6-connected components of calcium of any class)
     smaller than `min_mm3` or larger than `max_mm3` are removed.
  3. Heart filter (`heart_filter`): lesions with no voxel within `dilation_mm` of the heart
     mask are removed.

Calcium is by definition at or above the threshold, so detections below it are always removed
(also when region growing is switched off). Steps 2 and 3 act on the same lesions and commute.

The limits and the dilation have no default here: their one default is the config's
`scoring` block (`min_lesion_mm3`, `max_lesion_mm3`, `heart_dilation_mm`, configs/paper.py),
read by `FPReductionSettings.from_config`.

Conventions: class maps are int (z, y, x) arrays with classes 0..6 (`cac_jax.labels`), `hu` is a
float (z, y, x) array in HU, spacing (z, y, x) in mm. Nothing here prints; a missing heart
mask gives a `UserWarning`.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import warnings

import numpy as np
from scipy import ndimage

from cac_jax import labels as labels_lib
from cac_jax.data.scan import Scan
from cac_jax.labels import NUM_CLASSES

# 6-connectivity (faces only) in 3D.
CONNECTIVITY_6 = ndimage.generate_binary_structure(3, 1)


HEART_FILTER_MODES = ("lesion", "voxel")


@dataclasses.dataclass(frozen=True)
class FPReductionSettings:
  """Which false-positive reduction steps to run, and their parameters.

  Attributes:
    region_growing: grow detections to connected above-threshold regions.
    size_limits: drop lesions outside [min_mm3, max_mm3].
    heart_filter: remove calcium farther than dilation_mm from the heart mask.
    heart_filter_mode: "lesion" keeps or drops whole lesions by whether any voxel lies in the
      dilated heart (a lesion on the region's edge keeps its whole volume); "voxel" zeroes
      every voxel outside it, as the reference's FP reduction does (`mask[heart == 0] = 0`,
      Post_processing_FPreduction.ipynb, cells 3 and 5), so an edge lesion is cut.
    aorta_threshold: CCTA only: candidates are the voxels at or above the aortic-lumen
      threshold (mean + 3 SD). Off: the NCCT 130 HU, so the contrast lumen is classified
      too. The authors score CCTA this way without FP reduction: their test script thresholds
      the network's output at 130 HU unless `--use_aorta_T` is given (TestNet_transf.py:51,
      127-130; its README command does not give it; validation also uses 130,
      utils/GAN_validation.py:19, :121), and the lumen threshold is the first step of their FP
      reduction (Post_processing_FPreduction.ipynb, cell 1: `mask[image < imT] = 0` with
      `imT = get_T(...)` = mean + 3 SD, utils/util.py:85-96). NCCT is unaffected.
    min_mm3: smallest kept lesion volume (mm³; config `scoring.min_lesion_mm3`).
    max_mm3: largest kept lesion volume (mm³; config `scoring.max_lesion_mm3`).
    dilation_mm: heart-mask dilation radius (mm; config `scoring.heart_dilation_mm`).
  """

  region_growing: bool = True
  size_limits: bool = True
  heart_filter: bool = True
  aorta_threshold: bool = True
  min_mm3: float = dataclasses.field(kw_only=True)
  max_mm3: float = dataclasses.field(kw_only=True)
  dilation_mm: float = dataclasses.field(kw_only=True)
  heart_filter_mode: str = dataclasses.field(kw_only=True)

  def __post_init__(self):
    if self.heart_filter_mode not in HEART_FILTER_MODES:
      raise ValueError(
        f"heart_filter_mode {self.heart_filter_mode!r}: expected one of {HEART_FILTER_MODES}"
      )

  @classmethod
  def from_config(cls, scoring, **overrides) -> FPReductionSettings:
    """The settings of a `config.scoring` ConfigDict.

    It reads min/max_lesion_mm3, heart_dilation_mm and heart_filter (an export written before
    `heart_filter` existed filters by lesion)."""
    kw = dict(
      min_mm3=float(scoring.min_lesion_mm3),
      max_mm3=float(scoring.max_lesion_mm3),
      dilation_mm=float(scoring.heart_dilation_mm),
      heart_filter_mode=str(scoring.get("heart_filter", "lesion")),
    )
    kw.update(overrides)
    return cls(**kw)


def label_lesions(classes: np.ndarray) -> tuple[np.ndarray, int]:
  """6-connected components of calcium (classes > 0, any class): (labels, count).

  Labels are uint16 while the count fits, int32 beyond (`_label_compact`): index with them,
  do not add to them.
  """
  return _label_compact(np.asarray(classes) > 0)


def grow_lesions(detected_classes: np.ndarray, hu: np.ndarray, threshold_hu: float) -> np.ndarray:
  """Region growing of detections within the above-threshold voxels.

  Args:
    detected_classes: int (z, y, x) classes 0..6 from the network.
    hu: (z, y, x) HU.
    threshold_hu: calcium threshold (130 for NCCT, lumen mean + 3 SD for CCTA).

  Returns:
    uint8 (z, y, x) classes: every 6-connected component of `hu >= threshold_hu` that holds
    at least one detected (class > 0) voxel, labelled with the majority class of the detected
    voxels in it; ties go to the lowest class index (so a coronary class wins over aorta or
    valves). Detected voxels below the threshold are dropped.
  """
  detected_classes = np.asarray(detected_classes)
  if detected_classes.shape != np.shape(hu):
    raise ValueError(f"classes shape {detected_classes.shape} differs from hu shape {np.shape(hu)}")
  above = np.asarray(hu) >= threshold_hu
  lab, n = _label_compact(above)
  out = np.zeros(detected_classes.shape, dtype=np.uint8)
  if n == 0:
    return out
  det = (detected_classes > 0) & above
  counts = np.zeros((n + 1, NUM_CLASSES), dtype=np.int64)
  np.add.at(counts, (lab[det], detected_classes[det].astype(np.int64)), 1)
  lut = np.zeros(n + 1, dtype=np.uint8)
  has = counts[:, 1:].sum(axis=1) > 0
  lut[has] = 1 + np.argmax(counts[has, 1:], axis=1)  # argmax: first (lowest class) on ties
  lut[0] = 0
  return lut[lab]


def _label_compact(mask: np.ndarray) -> tuple[np.ndarray, int]:
  """6-connected components of `mask`: (labels, count), uint16 labels while the count fits.

  Region growing labels every voxel above the threshold of the scan's own grid: at 512 x 512 x
  600 uint16 labels take 315 MB where int32 take 630 MB, and a scan rarely has 65,535
  components above the calcium threshold; when it has more, int32 as before.
  """
  try:
    lab, n = ndimage.label(mask, structure=CONNECTIVITY_6, output=np.uint16)
  except RuntimeError:  # scipy: "insufficient bit-depth in requested output type"
    lab, n = ndimage.label(mask, structure=CONNECTIVITY_6)
  return lab, int(n)


def _lesion_volumes(lab: np.ndarray, n: int, spacing) -> np.ndarray:
  counts = np.bincount(lab.ravel(), minlength=n + 1)
  return counts * float(np.prod(spacing))


def size_filter(
  classes: np.ndarray, spacing: Sequence[float], min_mm3: float, max_mm3: float
) -> np.ndarray:
  """Drop 6-connected lesions whose volume (voxels x voxel volume, mm³) is < min or > max."""
  classes = np.asarray(classes)
  lab, n = label_lesions(classes)
  if n == 0:
    return classes.copy()
  keep = _within_size(_lesion_volumes(lab, n, spacing), min_mm3, max_mm3)
  keep[0] = False
  return np.where(keep[lab], classes, 0).astype(classes.dtype)


def _within_size(vol: np.ndarray, min_mm3: float, max_mm3: float) -> np.ndarray:
  """Bool per lesion: volume (mm³) within [min_mm3, max_mm3], up to float round-off."""
  eps = 1e-9 * max(1.0, float(max_mm3))
  return (vol >= min_mm3 - eps) & (vol <= max_mm3 + eps)


def heart_region(
  heart_mask: np.ndarray, spacing: Sequence[float], dilation_mm: float
) -> np.ndarray:
  """The heart mask dilated by a `dilation_mm` ball in physical units (bool (z, y, x)).

  Exact Euclidean distances with anisotropic spacing (distance transform of the complement),
  computed in the heart's bounding box grown by the dilation: it holds every heart voxel, so
  distances inside it are the whole scan's, and every voxel outside it is farther away.
  """
  heart = np.asarray(heart_mask) > 0
  if not heart.any():
    return heart
  box = []
  for axis, s in enumerate(spacing):
    hit = np.flatnonzero(heart.any(axis=tuple(a for a in range(heart.ndim) if a != axis)))
    grow = int(np.ceil(dilation_mm / float(s))) + 1
    box.append(slice(max(int(hit[0]) - grow, 0), int(hit[-1]) + 1 + grow))
  box = tuple(box)
  dist = ndimage.distance_transform_edt(~heart[box], sampling=tuple(float(s) for s in spacing))
  out = np.zeros_like(heart)
  out[box] = dist <= dilation_mm + 1e-6
  return out


def heart_filter(
  classes: np.ndarray,
  heart_mask: np.ndarray | None,
  spacing: Sequence[float],
  dilation_mm: float,
  region: np.ndarray | None = None,
) -> np.ndarray:
  """Drop lesions with no voxel inside the heart mask dilated by `dilation_mm`.

  `region`, when given, is that dilated mask already computed (`heart_region(heart_mask,
  spacing, dilation_mm)`, bool (z, y, x)): scoring has it from choosing where the network
  runs, and a distance transform of the whole scan is not cheap. Without a heart mask (None or
  empty) a UserWarning is issued and `classes` is returned unchanged.
  """
  classes = np.asarray(classes)
  if heart_mask is None or not np.any(heart_mask):
    warnings.warn(
      "no heart mask: the heart filter of the false-positive reduction is skipped",
      UserWarning,
      stacklevel=2,
    )
    return classes.copy()
  if np.shape(heart_mask) != classes.shape:
    raise ValueError(
      f"heart mask shape {np.shape(heart_mask)} differs from classes shape {classes.shape}"
    )
  if region is None:
    region = heart_region(heart_mask, spacing, dilation_mm)
  return _touching(classes, region)


def _touching(classes: np.ndarray, region: np.ndarray) -> np.ndarray:
  """`classes` without the lesions that have no voxel in `region` (bool, same shape)."""
  lab, n = label_lesions(classes)
  if n == 0:
    return classes.copy()
  keep = np.zeros(n + 1, dtype=bool)
  keep[np.unique(lab[region & (lab > 0)])] = True
  keep[0] = False
  return np.where(keep[lab], classes, 0).astype(classes.dtype)


def reduce_false_positives(
  classes: np.ndarray,
  hu: np.ndarray,
  threshold_hu: float,
  scan_or_spacing: Scan | Sequence[float],
  heart_mask: np.ndarray | None,
  settings: FPReductionSettings,
  heart_region_mask: np.ndarray | None = None,
) -> np.ndarray:
  """Run the enabled false-positive reduction steps; returns uint8 classes (z, y, x).

  Args:
    classes: network classes 0..6 (z, y, x).
    hu: HU (z, y, x).
    threshold_hu: calcium threshold in HU.
    scan_or_spacing: a `Scan` or a (z, y, x) spacing in mm.
    heart_mask: heart mask on the same grid, or None.
    settings: which steps to run, with their limits (`FPReductionSettings.from_config`).
    heart_region_mask: optional `heart_region(heart_mask, spacing, settings.dilation_mm)`,
      computed already (saves the heart filter a distance transform).
  """
  spacing = scan_or_spacing.spacing if isinstance(scan_or_spacing, Scan) else tuple(scan_or_spacing)
  hu = np.asarray(hu)
  if settings.region_growing:
    out = grow_lesions(classes, hu, threshold_hu)
  else:
    out = np.where(hu >= threshold_hu, np.asarray(classes), 0).astype(np.uint8)
  # Lesions lie in the box of the labelled voxels: the size limits and the heart filter label
  # only that box (the same lesions as the whole map's, outside it everything is 0).
  # Both steps keep or drop whole lesions, so one labelling serves both (the lesions left by the
  # size limits are the same components of the map they leave).
  box = labels_lib.labelled_box(out)
  inner = out[box]
  region = None
  if settings.heart_filter:
    if heart_mask is None or not np.any(heart_mask):
      heart_filter(inner, None, spacing, settings.dilation_mm)  # warns; keeps every lesion
    else:
      region = heart_region_mask
      if region is None:
        region = heart_region(heart_mask, spacing, settings.dilation_mm)
      region = np.asarray(region)[box]
      if settings.heart_filter_mode == "voxel":
        inner[~region] = 0  # `inner` is a view: `out` changes with it
        region = None
  if not settings.size_limits and region is None:
    return out
  lab, n = label_lesions(inner)
  if n == 0:
    return out
  keep = np.ones(n + 1, dtype=bool)
  if settings.size_limits:
    keep &= _within_size(_lesion_volumes(lab, n, spacing), settings.min_mm3, settings.max_mm3)
  if region is not None:
    touching = np.zeros(n + 1, dtype=bool)
    touching[np.unique(lab[region & (lab > 0)])] = True
    keep &= touching
  keep[0] = False
  inner[~keep[lab]] = 0
  return out
