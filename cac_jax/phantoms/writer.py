"""Writes phantom cases as a data set (NIfTI files + manifest.csv; see docs/architecture.md)."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import SimpleITK as sitk

from cac_jax import atomic
from cac_jax import labels as L
from cac_jax.data.scan import Case
from cac_jax.phantoms import generate

MANIFEST_COLUMNS = ("id", "image", "label", "heart_mask", "aorta_mask", "domain", "split")


# Written beside manifest.csv: a data set made by this generator (`train.data.manifest_streams`
# records models trained on it as phantoms-only).
PHANTOM_MARKER = "phantoms.json"


def _write_array(array_zyx: np.ndarray, case: Case, path: str) -> None:
  """Atomic NIfTI write of a (z, y, x) array on the case's grid."""
  img = sitk.GetImageFromArray(array_zyx)
  img.SetSpacing(tuple(float(s) for s in case.scan.spacing[::-1]))
  img.SetOrigin(tuple(float(v) for v in case.scan.origin))
  img.SetDirection(tuple(float(v) for v in case.scan.direction))
  atomic.write_with(path, lambda tmp: sitk.WriteImage(img, tmp, True), suffix=".nii.gz")


def write_case(case: Case, output_dir: str) -> dict:
  """Writes image (int16 HU), labels (reference encoding, left main as 11), heart and aorta masks; returns the row."""
  rel = {
    "image": f"images/{case.case_id}.nii.gz",
    "label": f"labels/{case.case_id}.nii.gz",
    "heart_mask": f"heart/{case.case_id}.nii.gz",
    "aorta_mask": f"aorta/{case.case_id}.nii.gz",
  }
  for sub in ("images", "labels", "heart", "aorta"):
    os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
  hu = np.clip(np.round(case.scan.hu), -1024, 3071).astype(np.int16)
  _write_array(hu, case, os.path.join(output_dir, rel["image"]))
  _write_array(
    L.classes_to_reference(case.labels, case.left_main),
    case,
    os.path.join(output_dir, rel["label"]),
  )
  _write_array(case.heart_mask.astype(np.uint8), case, os.path.join(output_dir, rel["heart_mask"]))
  _write_array(case.aorta_mask.astype(np.uint8), case, os.path.join(output_dir, rel["aorta_mask"]))
  return {"id": case.case_id, **rel, "domain": case.domain}


def merge_manifest(path: str, rows: list[dict]) -> str:
  """Adds/replaces rows (by id) in manifest.csv, keeping existing rows; atomic."""
  existing = []
  if os.path.exists(path):
    with open(path, newline="", encoding="utf-8") as f:
      existing = list(csv.DictReader(f))
  new_ids = {r["id"] for r in rows}
  merged = [r for r in existing if r.get("id") not in new_ids] + list(rows)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
  w.writeheader()
  for r in merged:
    w.writerow({k: r.get(k, "") for k in MANIFEST_COLUMNS})
  atomic.write_text(path, buf.getvalue())
  return path


def write_dataset(
  output_dir: str,
  domain: str,
  num_cases: int,
  seed: int,
  config,
  split: str = "train",
  progress=None,
) -> str:
  """Generates cases with seeds seed..seed+num_cases-1 and writes them; returns the manifest path.

  Args:
    output_dir: data-set folder (created); an existing manifest.csv is merged, not replaced.
    domain: "chest_ncct", "cardiac_ncct" or "ccta".
    num_cases: number of cases.
    seed: seed of the first case.
    config: project config.
    split: value of the manifest's split column.
    progress: optional callable(case_id) called after each case (launch scripts log with it).
  """
  os.makedirs(output_dir, exist_ok=True)
  rows = []
  for k in range(int(num_cases)):
    case = generate.generate_case(domain, int(seed) + k, config)
    row = write_case(case, output_dir)
    row["split"] = split
    rows.append(row)
    if progress is not None:
      progress(case.case_id)
  marker = os.path.join(output_dir, PHANTOM_MARKER)
  if not os.path.exists(marker):  # training on this folder is recorded as phantoms-only
    atomic.write_text(
      marker, '{"generator": "cac_jax.phantoms", "note": "synthetic phantoms, no patient data"}\n'
    )
  return merge_manifest(os.path.join(output_dir, "manifest.csv"), rows)
