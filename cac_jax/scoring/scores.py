"""Calcium scores from a class map: volume, lesion count, Agatston, mass, risk, CAC-DRS.

Definitions (class maps int (z, y, x) 0..6, `cac_jax.labels`; HU (z, y, x); geometry from a
`Scan`):
  * Volume (mm³): number of voxels x voxel volume.
  * Lesion count: 6-connected 3D components of the class (for "total" coronary: of the union of
    LAD, LCX and RCA, so a lesion spanning two arteries counts once).
  * Agatston: per axial slice, 2D lesions = 4-connected in-slice components of the class (the
    in-plane counterpart of the 6-connected lesion used everywhere else); a 2D lesion counts
    when its area is >= 1 mm², with weight from its peak HU: 130-199 -> 1, 200-299 -> 2,
    300-399 -> 3, >= 400 -> 4 (< 130 -> 0). Score = sum(area x weight) x slice_increment / 3 mm,
    slice increment = the scan's z spacing. Total coronary Agatston = LAD + LCX + RCA.
    Agatston is defined for NCCT with 3 mm slices at 120 kVp (130 HU threshold):
    `agatston_standard` is True only for that protocol (domain NCCT, slice increment within
    `AGATSTON_SLICE_TOLERANCE_MM` of 3 mm, kVp 120 as read from DICOM), and False otherwise,
    with the reasons in `agatston_protocol_notes` (kVp unknown for NIfTI input, 1.5 mm slices,
    CCTA: the contrast-derived threshold and lumen blooming make it non-standard). The
    aortic valve gets an Agatston score too (valve calcium is scored the same way).
  * Mass: mass = c_HA x volume x mean HU (= c_HA x sum of HU x voxel volume). `calibration` is
    c_HA in mg/(mm³·HU) (from a calcium hydroxyapatite phantom); without it c_HA = 1 and the mass
    is in HU·mm³ and flagged `mass_calibrated: False`.
  * Risk category (total coronary Agatston, unrounded): "0" (= 0), "1-10" (0 < A <= 10),
    "11-100" (<= 100), "101-400" (<= 400), ">400".
  * CAC-DRS: A0 (= 0), A1 (0 < A < 100), A2 (100 <= A < 300), A3 (>= 300), plus N = number of
    coronary arteries with calcium, e.g. "A2/N2"; A0 has no N ("A0"). The arteries are left
    main, LAD, LCX and RCA when the labels separate the left main (N <= 4), else LAD incl.
    left main, LCX and RCA (N <= 3).
  * Left main: the network's LAD class includes the left main (as the paper's). When a label
    map separates it (reference maps with value 11, e.g. the phantoms'; `labels.left_main_mask`),
    `compute_scores(..., left_main=mask)` reports "LM" on its own and "LAD" without it;
    `left_main_separate` says which of the two a result is.
  * Aorta, aortic valve and mitral valve: volume, lesion count and mass; Agatston for the
    aortic valve only.
  * `mean_hu` of a class with no voxel is None (null in JSON), and so is its mass.

`compute_scores` returns plain Python numbers and strings (JSON-serialisable).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from cac_jax import labels as labels_lib
from cac_jax.data.scan import Scan
from cac_jax.labels import AORTA, AORTIC_VALVE, CLASS_NAMES, CORONARY_CLASSES, LAD, MITRAL_VALVE

CONNECTIVITY_6 = ndimage.generate_binary_structure(3, 1)
CONNECTIVITY_4_2D = ndimage.generate_binary_structure(2, 1)
_IN_SLICE_4 = np.stack([np.zeros((3, 3), bool), CONNECTIVITY_4_2D, np.zeros((3, 3), bool)])
AGATSTON_REFERENCE_SLICE_MM = 3.0
AGATSTON_MIN_AREA_MM2 = 1.0
AGATSTON_SLICE_TOLERANCE_MM = 0.25
AGATSTON_KVP = 120.0


def agatston_weight(peak_hu: float) -> int:
  """Agatston density weight of a 2D lesion from its peak HU."""
  if peak_hu >= 400:
    return 4
  if peak_hu >= 300:
    return 3
  if peak_hu >= 200:
    return 2
  if peak_hu >= 130:
    return 1
  return 0


def agatston(
  mask: np.ndarray, hu: np.ndarray, spacing, slice_increment_mm: float | None = None
) -> float:
  """Agatston score of a bool (z, y, x) calcium mask (see module docstring).

  Args:
    mask: bool (z, y, x).
    hu: HU (z, y, x).
    spacing: (z, y, x) mm.
    slice_increment_mm: defaults to spacing[0].
  """
  mask = np.asarray(mask, dtype=bool)
  return float(_agatston_sums(mask, hu, spacing, slice_increment_mm, mask.view(np.uint8))[1])


def _agatston_sums(mask, hu, spacing, slice_increment_mm, groups: np.ndarray) -> np.ndarray:
  """Agatston score of each group of 2D lesions: float64 (max group + 1,) with [0] = 0.

  `groups` int (z, y, x) gives each voxel of `mask` its group (1..).

  Each 2D lesion lies in one group (e.g. the 3D lesion that holds it); its term is added to
  its group's sum in array order, as a per-slice loop over one group alone adds them.
  """
  mask = np.asarray(mask, dtype=bool)
  hu = np.asarray(hu)
  groups = np.asarray(groups)
  inc = float(spacing[0] if slice_increment_mm is None else slice_increment_mm)
  pixel_area = float(spacing[1]) * float(spacing[2])
  sums = [0.0] * (max(int(groups.max()) if groups.size else 0, 1) + 1)
  # Every slice's 4-connected components at once (no link across slices), numbered in array
  # order: slice by slice, as a per-slice loop would visit them.
  lab, n = ndimage.label(mask, structure=_IN_SLICE_4)
  if n:
    at = lab[mask]
    areas = np.bincount(at, minlength=n + 1)[1:] * pixel_area
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, at, hu[mask].astype(np.float64))
    group_of = np.zeros(n + 1, np.int64)
    group_of[at] = groups[mask]
    for area, peak, g in zip(areas, peaks[1:], group_of[1:]):
      if area >= AGATSTON_MIN_AREA_MM2 - 1e-9:
        sums[g] += area * agatston_weight(float(peak))
  return np.array([float(v * inc / AGATSTON_REFERENCE_SLICE_MM) for v in sums])


def risk_category(total_agatston: float) -> str:
  """Agatston risk category: "0", "1-10", "11-100", "101-400" or ">400"."""
  a = float(total_agatston)
  if a <= 0:
    return "0"
  if a <= 10:
    return "1-10"
  if a <= 100:
    return "11-100"
  if a <= 400:
    return "101-400"
  return ">400"


def cac_drs(total_agatston: float, num_vessels: int) -> str:
  """CAC-DRS category, e.g. "A0", "A1/N1", "A3/N3"."""
  a = float(total_agatston)
  if a <= 0:
    return "A0"
  grade = 1 if a < 100 else 2 if a < 300 else 3
  return f"A{grade}/N{int(num_vessels)}"


def agatston_protocol_notes(scan: Scan, domain: str) -> list[str]:
  """Why this scan's Agatston score is not standard (empty list: it is).

  Standard = NCCT, slice increment 3 mm (+- `AGATSTON_SLICE_TOLERANCE_MM`), 120 kVp
  (`scan.meta["kvp"]`, read from DICOM; unknown for NIfTI and other formats).
  """
  notes = []
  if domain != "ncct":
    notes.append("Agatston is defined for non-contrast CT; in CCTA it is reported but not standard")
  inc = float(scan.spacing[0])
  if abs(inc - AGATSTON_REFERENCE_SLICE_MM) > AGATSTON_SLICE_TOLERANCE_MM:
    notes.append(
      f"Agatston is defined for {AGATSTON_REFERENCE_SLICE_MM:g} mm slices; this scan has "
      f"{inc:g} mm (the score is rescaled by the increment, but not standard)"
    )
  kvp = scan.meta.get("kvp")
  if kvp is None:
    notes.append(
      f"tube voltage unknown (no DICOM kVp): Agatston is defined at {AGATSTON_KVP:g} kVp"
    )
  elif abs(float(kvp) - AGATSTON_KVP) > 0.5:
    notes.append(
      f"Agatston is defined at {AGATSTON_KVP:g} kVp; this scan was acquired at {float(kvp):g} kVp"
    )
  return notes


def _count_lesions(mask: np.ndarray) -> int:
  return int(ndimage.label(mask, structure=CONNECTIVITY_6)[1]) if mask.any() else 0


def _region_scores(mask, hu, scan: Scan, c_ha: float, with_agatston: bool) -> dict[str, Any]:
  box = labels_lib.labelled_box(mask)  # its lesions lie in the box of its voxels
  mask, hu = mask[box], hu[box]
  n = int(mask.sum())
  vol = n * scan.voxel_volume_mm3
  mean_hu = float(hu[mask].astype(np.float64).mean()) if n else None
  out = {
    "volume_mm3": float(vol),
    "lesions": _count_lesions(mask),
    "mean_hu": mean_hu,
    "mass": float(c_ha * vol * mean_hu) if n else 0.0,
  }
  if with_agatston:
    out["agatston"] = agatston(mask, hu, scan.spacing)
  return out


def _split_left_main(
  classes: np.ndarray, left_main: np.ndarray | None
) -> list[tuple[str, np.ndarray]]:
  """(name, bool mask) of each coronary artery.

  LM, LAD, LCX, RCA when `left_main` (bool, LAD voxels labelled left main) is given and
  non-empty, else LAD (incl. left main), LCX, RCA."""
  arteries = [(CLASS_NAMES[c], classes == c) for c in CORONARY_CLASSES]
  if left_main is None or not np.any(left_main):
    return arteries
  left_main = np.asarray(left_main, dtype=bool)
  if left_main.shape != classes.shape or np.any(left_main & (classes != LAD)):
    raise ValueError("left_main must be a mask of LAD-class voxels on the class map's grid")
  lad = arteries[0][1] & ~left_main
  return [("LM", left_main), (CLASS_NAMES[LAD], lad)] + arteries[1:]


def _cropped(classes, hu, scan: Scan, left_main):
  """`classes`, `hu` and `left_main` in `labels.labelled_box(classes)`, and the box.

  Views: HU are taken as float64 where they are gathered, not copied as a volume."""
  classes = np.asarray(classes)
  if classes.shape != np.shape(hu) or classes.shape != scan.shape:
    raise ValueError(
      f"shapes differ: classes {classes.shape}, hu {np.shape(hu)}, scan {scan.shape}"
    )
  box = labels_lib.labelled_box(classes)
  lm = None if left_main is None else np.asarray(left_main)[box]
  return classes[box], np.asarray(hu)[box], lm, box


def compute_scores(
  classes: np.ndarray,
  hu: np.ndarray,
  scan: Scan,
  domain: str,
  calibration: float | None = None,
  left_main: np.ndarray | None = None,
) -> dict[str, Any]:
  """All scores for one scan.

  Args:
    classes: int (z, y, x) classes 0..6 after false-positive reduction.
    hu: HU (z, y, x) on the same grid (usually `scan.hu`).
    scan: geometry (spacing, voxel volume).
    domain: "ncct" or "ccta".
    calibration: c_HA in mg/(mm³·HU) for the mass score; None -> 1 (uncalibrated).
    left_main: optional bool (z, y, x) mask of the LAD-class voxels that are left main (from a
      reference label map, `labels.left_main_mask`); then "LM" is reported on its own.

  Returns:
    JSON-serialisable dict: {"domain", ["LM",] "LAD", "LCX", "RCA", "total" (each with volume_mm3,
    lesions, mean_hu, mass, agatston), "aorta", "aortic_valve" (with agatston),
    "mitral_valve" (volume_mm3, lesions, mean_hu, mass), "risk_category", "cac_drs",
    "num_vessels", "left_main_separate", "agatston_standard", "agatston_protocol_notes", "mass_calibrated",
    "mass_units", "calibration", "slice_increment_mm", "notes"}.
  """
  if domain not in ("ncct", "ccta"):
    raise ValueError(f"domain must be 'ncct' or 'ccta'; got {domain!r}")
  classes, hu, left_main, _ = _cropped(classes, hu, scan, left_main)
  c_ha = 1.0 if calibration is None else float(calibration)
  result: dict[str, Any] = {"domain": domain}
  arteries = _split_left_main(classes, left_main)
  num_vessels = 0
  for name, mask in arteries:
    r = _region_scores(mask, hu, scan, c_ha, True)
    num_vessels += int(r["volume_mm3"] > 0)
    result[name] = r
  total = _region_scores(np.isin(classes, CORONARY_CLASSES), hu, scan, c_ha, False)
  total["agatston"] = float(sum(result[name]["agatston"] for name, _ in arteries))
  result["total"] = total
  for cls in (AORTA, AORTIC_VALVE, MITRAL_VALVE):
    result[CLASS_NAMES[cls]] = _region_scores(classes == cls, hu, scan, c_ha, cls == AORTIC_VALVE)
  protocol_notes = agatston_protocol_notes(scan, domain)
  notes = list(protocol_notes)
  if calibration is None:
    notes.append("mass is uncalibrated (c_HA = 1): HU·mm³, not mg")
  separate = len(arteries) == 4
  if not separate:
    notes.append("LAD includes the left main (the labels do not separate it)")
  result.update(
    {
      "risk_category": risk_category(total["agatston"]),
      "cac_drs": cac_drs(total["agatston"], num_vessels),
      "num_vessels": num_vessels,
      "left_main_separate": separate,
      "agatston_standard": not protocol_notes,
      "agatston_protocol_notes": protocol_notes,
      "mass_calibrated": calibration is not None,
      "mass_units": "mg" if calibration is not None else "HU*mm3",
      "calibration": c_ha,
      "slice_increment_mm": float(scan.spacing[0]),
      "notes": notes,
    }
  )
  return result


LESION_FIELDS = (
  "id",
  "artery",
  "voxels",
  "volume_mm3",
  "peak_hu",
  "agatston",
  "mass",
  "centroid_x_mm",
  "centroid_y_mm",
  "centroid_z_mm",
)


def lesion_table(
  classes: np.ndarray,
  hu: np.ndarray,
  scan: Scan,
  calibration: float | None = None,
  left_main: np.ndarray | None = None,
) -> list[dict]:
  """One row per lesion: a 6-connected component of one class (the lesions `compute_scores` counts).

  Coronary arteries first (left main on its own when `left_main` is given, as in
  `compute_scores`), then aorta and valves, each in array order.

  Row fields (`LESION_FIELDS`): id (1..), artery (class name), voxels, volume_mm3, peak_hu,
  agatston (coronary classes and aortic valve; None for aorta and mitral valve; per-lesion
  values sum to the class's Agatston because an in-slice 2D lesion lies in one 3D lesion),
  mass (c_HA x volume x mean HU, units as in `compute_scores`), centroid_{x,y,z}_mm: the
  centroid in scanner (patient) LPS coordinates, as ITK-SNAP shows the cursor position
  (3D Slicer shows RAS: negate x and y).
  Values are rounded for reading (0.01 mm³, 0.1 HU, 0.01 Agatston, 0.1 mass, 0.1 mm).
  """
  classes, hu, left_main, box = _cropped(classes, hu, scan, left_main)
  offset = np.array([b.start for b in box])
  c_ha = 1.0 if calibration is None else float(calibration)
  rows: list[dict] = []
  structures = _split_left_main(classes, left_main)
  structures += [(CLASS_NAMES[c], classes == c) for c in (AORTA, AORTIC_VALVE, MITRAL_VALVE)]
  for name, mask in structures:
    if not mask.any():
      continue
    box = labels_lib.labelled_box(mask)  # the structure's lesions lie in the box of its voxels
    mask, hu_box = mask[box], hu[box]
    start = offset + np.array([b.start for b in box])
    lab, n = ndimage.label(mask, structure=CONNECTIVITY_6)
    per_lesion = _agatston_sums(mask, hu_box, scan.spacing, None, lab)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
      one = lab[sl] == i
      vals = hu_box[sl][one].astype(np.float64)
      vol = float(one.sum()) * scan.voxel_volume_mm3
      centre = start + np.array([s.start for s in sl]) + np.mean(np.nonzero(one), axis=1)
      x, y, z = scan.index_to_physical(centre)
      score = None
      if name not in (CLASS_NAMES[AORTA], CLASS_NAMES[MITRAL_VALVE]):
        score = round(float(per_lesion[i]), 2)
      rows.append(
        {
          "id": len(rows) + 1,
          "artery": name,
          "voxels": int(one.sum()),
          "volume_mm3": round(vol, 2),
          "peak_hu": round(float(vals.max()), 1),
          "agatston": score,
          "mass": round(c_ha * vol * float(vals.mean()), 1),
          "centroid_x_mm": round(float(x), 1),
          "centroid_y_mm": round(float(y), 1),
          "centroid_z_mm": round(float(z), 1),
        }
      )
  return rows
