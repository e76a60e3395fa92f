"""Writing one scan's outputs, all or nothing.

The files: labels on the input's grid, their colour tables, lesions.csv, overlay.png and
scores.json.

`write_outputs` takes a `pipeline.ScoringResult` and the scan it came from; the files are
checked complete and moved into place together, scores.json last (`atomic.write_set`), so a
folder with scores.json holds a whole result.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from cac_jax import atomic
from cac_jax import labels as labels_lib
from cac_jax.data.scan import Scan
from cac_jax.scoring import scores

OUTPUT_FILES = (
  "calcium_labels.nii.gz",
  "calcium_labels.itksnap.txt",
  "calcium_labels.slicer.ctbl",
  "lesions.csv",
  "scores.json",
  "overlay.png",
)
DICOM_OUTPUT_FILES = (
  "calcium_seg.dcm",
  "calcium_sr.dcm",
)  # DICOM input only (`cac_jax.scoring.dicom_seg`)


class OutputExistsError(FileExistsError):
  """Raised when outputs exist and overwriting was not asked for."""


def check_outputs_free(output_dir: str, overwrite: bool) -> None:
  """Raise OutputExistsError if any output file exists in output_dir and not `overwrite`.

  Outputs without scores.json (moved into place last by `write_outputs`) are the remains of
  a run killed while moving its files into place, not a result: they are replaced.
  """
  existing = [
    f for f in OUTPUT_FILES + DICOM_OUTPUT_FILES if os.path.exists(os.path.join(output_dir, f))
  ]
  if existing and "scores.json" in existing and not overwrite:
    raise OutputExistsError(
      f"outputs already exist in {output_dir}: {', '.join(existing)} "
      "(pass --overwrite to replace them)"
    )


def write_outputs(
  result,
  scan: Scan,
  output_dir: str,
  *,
  overwrite: bool = False,
  extra: dict[str, Any] | None = None,
) -> dict[str, str]:
  """Write one scan's `pipeline.ScoringResult` into output_dir; returns {name: path}.

  All or nothing (`atomic.write_set`): each file is checked complete, then moved into place,
  scores.json last.

  calcium_labels.nii.gz: reference-encoded labels on the input's grid; beside it
  calcium_labels.itksnap.txt (ITK-SNAP label descriptions) and calcium_labels.slicer.ctbl
  (3D Slicer colour table) with the class names and colours; lesions.csv
  (`scores.lesion_table`); overlay.png; `extra` {name: write(path)} files (e.g. the DICOM SEG
  and SR of `cac_jax.scoring.dicom_seg.writers`); scores.json (the report).
  """
  from cac_jax.data import volume_io
  from cac_jax.scoring import overlay  # matplotlib: imported only when an overlay is drawn

  os.makedirs(output_dir, exist_ok=True)
  check_outputs_free(output_dir, overwrite)
  atomic.remove_stale(output_dir)  # leftovers of a killed run (the caller holds the folder)
  text = json.dumps(result.report, indent=2, default=_json_default)
  s = result.report["scores"]
  calibration = s.get("calibration") if s.get("mass_calibrated") else None
  return atomic.write_set(
    output_dir,
    {
      "calcium_labels.nii.gz": lambda p: volume_io.write_like(
        labels_lib.classes_to_reference(result.classes), scan, p
      ),
      "overlay.png": lambda p: overlay.overlay_png(
        scan.hu,
        result.classes,
        p,
        scan.spacing,
        title=overlay_title(result.report),
        z_positions_mm=_z_positions_mm(scan),
        region=result.heart,
      ),
      "calcium_labels.itksnap.txt": lambda p: atomic.write_text(
        p, labels_lib.itksnap_label_description()
      ),
      "calcium_labels.slicer.ctbl": lambda p: atomic.write_text(
        p, labels_lib.slicer_colour_table()
      ),
      "lesions.csv": lambda p: atomic.write_csv(
        p, scores.LESION_FIELDS, scores.lesion_table(result.classes, scan.hu, scan, calibration)
      ),
      **(extra or {}),
      "scores.json": lambda p: atomic.write_text(p, text),
    },
    last="scores.json",
  )


def _z_positions_mm(scan: Scan) -> np.ndarray:
  """Scanner (patient) z position in mm of each axial slice (the slice's first voxel)."""
  zyx = np.zeros((scan.shape[0], 3))
  zyx[:, 0] = np.arange(scan.shape[0])
  return scan.index_to_physical(zyx)[:, 2]


def overlay_title(report: dict) -> str:
  """ "<image>: total Agatston A (category), threshold T HU, window -200..800 HU"."""
  from cac_jax.scoring import overlay  # matplotlib: imported only when an overlay is drawn

  s = report["scores"]
  thr = report.get("threshold", {}).get("threshold_hu")
  image = report.get("input", {}).get("image")  # None unless the input path may be recorded
  name = os.path.basename(image) if image else "scan"
  score = (
    f"total Agatston {s['total']['agatston']:.0f} ({s['risk_category']})"
    if report.get("coronary_score", True)
    else "no coronary score"
  )
  return (
    f"{name}: {score}, threshold {'n/a' if thr is None else f'{thr:.0f} HU'}, "
    f"window {overlay.HU_WINDOW[0]:.0f}..{overlay.HU_WINDOW[1]:.0f} HU"
  )


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, tuple):
    return list(o)
  raise TypeError(f"not JSON serialisable: {type(o)}")
