"""Calcium classes and the reference label encoding of the public CAC data sets.

Network classes (0..6):
  0 background, 1 LAD (incl. left main), 2 LCX, 3 RCA, 4 thoracic aorta, 5 aortic valve,
  6 mitral valve.
Reference label values in label-map files:
  0 background, 8 LAD (and left main where it is not labelled apart), 9 LCX, 10 RCA,
  15 thoracic aorta (52, 54-57 are aorta too), 53 aortic valve, 58 mitral valve;
  11 left main, where an annotation separates it (this project's extension of the encoding;
  the phantoms write it). The network has no left-main class (the paper's LAD includes it), so
  11 maps to the LAD class; `left_main_mask` keeps it apart for reporting (`scores`).
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("background", "LAD", "LCX", "RCA", "aorta", "aortic_valve", "mitral_valve")
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND, LAD, LCX, RCA, AORTA, AORTIC_VALVE, MITRAL_VALVE = range(NUM_CLASSES)
CORONARY_CLASSES = (LAD, LCX, RCA)

LEFT_MAIN_REFERENCE = 11
# reference value -> class
REFERENCE_TO_CLASS = {
  0: 0,
  8: 1,
  9: 2,
  10: 3,
  LEFT_MAIN_REFERENCE: 1,
  15: 4,
  52: 4,
  54: 4,
  55: 4,
  56: 4,
  57: 4,
  53: 5,
  58: 6,
}
# class -> canonical reference value (used when writing)
CLASS_TO_REFERENCE = (0, 8, 9, 10, 15, 53, 58)
# Display colours and names of classes 1..6 (figures and viewer colour tables).
CLASS_COLOURS = {
  LAD: "#e41a1c",
  LCX: "#4daf4a",
  RCA: "#377eb8",
  AORTA: "#ffd92f",
  AORTIC_VALVE: "#f781bf",
  MITRAL_VALVE: "#00e5ee",
}
CLASS_DISPLAY_NAMES = {
  LAD: "LAD",
  LCX: "LCX",
  RCA: "RCA",
  AORTA: "aorta",
  AORTIC_VALVE: "aortic valve",
  MITRAL_VALVE: "mitral valve",
}
LEFT_MAIN_COLOUR = "#984ea3"


def _viewer_entries() -> list[tuple[int, str, str]]:
  """(reference value, display name, colour) of every written label value but background."""
  entries = [
    (CLASS_TO_REFERENCE[c], name, CLASS_COLOURS[c]) for c, name in CLASS_DISPLAY_NAMES.items()
  ]
  return entries[:1] + [(LEFT_MAIN_REFERENCE, "left main", LEFT_MAIN_COLOUR)] + entries[1:]


def reference_to_classes(label_map: np.ndarray) -> np.ndarray:
  """Map a reference-encoded label map (any int shape) to classes 0..6 (int32).

  Raises ValueError naming every value that is not part of the encoding.
  """
  label_map = np.asarray(label_map)
  if label_map.dtype.kind == "f":
    if not np.all(np.isfinite(label_map)) or np.any(label_map != np.round(label_map)):
      raise ValueError("label map holds non-integer values; expected reference label codes")
    label_map = label_map.astype(np.int64)
  values = np.unique(label_map)
  unknown = sorted(int(v) for v in values if int(v) not in REFERENCE_TO_CLASS)
  if unknown:
    raise ValueError(
      f"label map holds unknown label values {unknown}; known values are "
      f"{sorted(REFERENCE_TO_CLASS)} (0 bg, 8 LAD, 9 LCX, 10 RCA, 11 left main, 15/52/54-57 aorta, "
      "53 aortic valve, 58 mitral valve)"
    )
  lut = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.int32)
  for ref, cls in REFERENCE_TO_CLASS.items():
    if ref < lut.size:
      lut[ref] = cls
  if values.size and values.min() < 0:
    raise ValueError(f"label map holds negative values {sorted(int(v) for v in values if v < 0)}")
  return lut[label_map]


def left_main_mask(label_map: np.ndarray) -> np.ndarray | None:
  """Bool (z, y, x): the voxels a reference label map marks as left main (value 11), or None.

  None when the map does not label the left main apart (then the LAD class includes it)."""
  mask = np.asarray(label_map) == LEFT_MAIN_REFERENCE
  return mask if mask.any() else None


def classes_to_reference(classes: np.ndarray, left_main: np.ndarray | None = None) -> np.ndarray:
  """Map classes 0..6 to reference label values (uint8). Raises on values outside 0..6.

  left_main: optional bool mask (same shape) of LAD-class voxels written as left main (11).
  """
  classes = np.asarray(classes)
  bad = np.unique(classes[(classes < 0) | (classes >= NUM_CLASSES)])
  if bad.size:
    raise ValueError(f"class map holds values {bad.tolist()} outside 0..{NUM_CLASSES - 1}")
  out = np.asarray(CLASS_TO_REFERENCE, dtype=np.uint8)[classes]
  if left_main is not None:
    left_main = np.asarray(left_main, dtype=bool)
    if np.any(left_main & (classes != LAD)):
      raise ValueError("left-main voxels must carry the LAD class")
    out[left_main] = LEFT_MAIN_REFERENCE
  return out


def _rgb(hex_colour: str) -> tuple[int, int, int]:
  return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def itksnap_label_description() -> str:
  """ITK-SNAP label description for the written reference-encoded label maps.

  For Segmentation > Import Label Descriptions: value, RGB, opacity, visibility and name of
  each class."""
  lines = [
    "################################################",
    "# ITK-SnAP Label Description File",
    "# Columns = Index R G B A VIS MSH LABEL",
    "################################################",
    '    0     0    0    0        0  0  0    "Clear Label"',
  ]
  for value, name, colour in _viewer_entries():
    r, g, b = _rgb(colour)
    lines.append(f'{value:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{name}"')
  return "\n".join(lines) + "\n"


def slicer_colour_table() -> str:
  """3D Slicer colour table (.ctbl: `value name R G B A` per line) for the same label maps.

  Load it as a colour node and pick it for the label map's display."""
  lines = ["# cac_jax calcium classes (reference label values)", "0 background 0 0 0 0"]
  for value, name, colour in _viewer_entries():
    r, g, b = _rgb(colour)
    lines.append(f"{value} {name.replace(' ', '_')} {r} {g} {b} 255")
  return "\n".join(lines) + "\n"


def labelled_box(classes: np.ndarray) -> tuple[slice, slice, slice]:
  """The bounding box (z, y, x slices) of the voxels with a class (> 0).

  One voxel at the origin when there are none. Every score and lesion of `classes` lies inside
  it, so scoring the box gives the whole map's results while touching only its voxels."""
  labelled = np.asarray(classes) > 0
  box = []
  for axis in range(labelled.ndim):
    hit = np.flatnonzero(labelled.any(axis=tuple(a for a in range(labelled.ndim) if a != axis)))
    box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 1))
  return tuple(box)
