"""File-level scoring used by `launch.score`: read inputs, score, write outputs.

Keeps the launch script thin; everything here returns values and never prints.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

from cac_jax import atomic, checkpoints
from cac_jax.data import manifest, volume_io
from cac_jax.scoring import dicom_seg, domain_check, pipeline, postprocess

ARTERIES = ("LAD", "LCX", "RCA")
CSV_FIELDS = (
  "id",
  "domain",
  "threshold_hu",
  "num_candidates",
  "heart_region",
  "coronary_score",
  *(f"{a}_{k}" for a in ARTERIES for k in ("mm3", "agatston", "mass", "lesions")),
  "total_mm3",
  "total_agatston",
  "total_mass",
  "total_lesions",
  "risk_category",
  "cac_drs",
  "agatston_standard",
  "aorta_mm3",
  "aortic_valve_mm3",
  "aortic_valve_agatston",
  "mitral_valve_mm3",
  "warnings",
)
AUTO, NONE = "auto", "none"
# File names of a TotalSegmentator output folder (`TotalSegmentator -i ct.nii.gz -o DIR`).
TOTALSEG_HEART, TOTALSEG_AORTA = "heart.nii.gz", "aorta.nii.gz"


def _fp_settings(config, fp: dict | None) -> postprocess.FPReductionSettings:
  return postprocess.FPReductionSettings.from_config(config.scoring, **(fp or {}))


def load_model(checkpoint: str) -> tuple[dict, Any, dict]:
  """(params, config, provenance) of an exported checkpoint (`checkpoints.provenance`)."""
  params, config = checkpoints.load_inference(checkpoint)
  params = domain_check.attach(params, checkpoint, config)
  return params, config, checkpoints.provenance(checkpoint, config)


def provenance_warnings(prov: dict) -> list[str]:
  """Warnings a report must carry about the model itself (phantom-only or unknown training)."""
  data = prov.get("training_data", {})
  if data.get("phantoms_only"):
    return [
      f"this checkpoint was trained only on phantoms ({data.get('description')}): its numbers are "
      "not clinical"
    ]
  if data.get("description") == "not recorded":
    return [
      "this checkpoint does not record its training data (exported without provenance.json): "
      "treat its numbers as research output"
    ]
  return []


def masks_from_dir(masks_dir: str) -> tuple[str, str | None]:
  """(heart, aorta or None) mask paths in a TotalSegmentator output folder.

  Raises FileNotFoundError when the folder has no heart.nii.gz.
  """
  heart = os.path.join(masks_dir, TOTALSEG_HEART)
  if not os.path.isfile(heart):
    raise FileNotFoundError(
      f"{masks_dir}: no {TOTALSEG_HEART} (expected a TotalSegmentator output folder)"
    )
  aorta = os.path.join(masks_dir, TOTALSEG_AORTA)
  return heart, aorta if os.path.isfile(aorta) else None


def score_file(
  image: str,
  checkpoint: str,
  output_dir: str,
  *,
  heart_mask: str | None = AUTO,
  aorta_mask: str | None = None,
  masks_dir: str | None = None,
  domain: str = "auto",
  overwrite: bool = False,
  calibration: float | None = None,
  fp: dict | None = None,
  loaded=None,
  series: str | None = None,
  record_input_path: bool = False,
) -> dict[str, Any]:
  """Score one scan file and write its outputs into output_dir; returns the report dict.

  heart_mask: a mask file, "auto" (find the heart region in the scan, `cac_jax.scoring.heart_region`)
  or "none"/None (no heart region: every candidate is classified). masks_dir: a
  TotalSegmentator output folder whose heart.nii.gz (and aorta.nii.gz, unless `aorta_mask` is
  given) are used instead. loaded: `load_model`'s result (or `checkpoints.load_inference`'s
  (params, config)), to score many scans with one load. A DICOM folder also gets a DICOM
  SEG and SR (`cac_jax.scoring.dicom_seg`) referencing the series scored.
  Outputs are checked before any work so an existing result is never half-replaced (the
  caller claims output_dir with `atomic.claim_dir`). The input path is stored in scores.json
  only with `record_input_path` (a file or folder name can carry a patient's name). `series`
  picks a DICOM series of a folder by UID.
  """
  pipeline.check_outputs_free(output_dir, overwrite)
  if (
    loaded is not None and len(loaded) == 2
  ):  # (params, config) as checkpoints.load_inference returns
    loaded = (*loaded, checkpoints.provenance(checkpoint, loaded[1]))
  params, config, prov = loaded or load_model(checkpoint)
  params = domain_check.attach(params, checkpoint, config)  # every scores.json says
  if masks_dir:
    heart_mask, dir_aorta = masks_from_dir(masks_dir)
    aorta_mask = aorta_mask or dir_aorta
  scan = volume_io.read_scan(image, series=series)
  heart = None
  if heart_mask and heart_mask not in (AUTO, NONE):
    heart = volume_io.read_mask(heart_mask, scan) > 0
  aorta = volume_io.read_mask(aorta_mask, scan) > 0 if aorta_mask else None
  result = pipeline.score_scan(
    scan,
    params,
    config,
    domain=domain,
    heart_mask=heart,
    aorta_mask=aorta,
    fp_settings=_fp_settings(config, fp),
    calibration=calibration,
    auto_heart=heart_mask == AUTO,
  )
  result.report["input"]["image"] = os.path.abspath(str(image)) if record_input_path else None
  if heart is not None and record_input_path:
    result.report["heart_region"]["file"] = os.path.abspath(str(heart_mask))
  result.report["provenance"] = prov
  result.report["warnings"] = provenance_warnings(prov) + result.report["warnings"]
  extra = {}
  if os.path.isdir(image):  # DICOM input: also a DICOM SEG and SR referencing the source series
    extra, notes = dicom_seg.writers(
      volume_io.source_array(result.classes, scan),
      result.report["scores"],
      volume_io.dicom_series_files(image, series),
    )
    result.report["warnings"] += notes
  pipeline.write_outputs(result, scan, output_dir, overwrite=overwrite, extra=extra)
  return result.report


def summary_line(name: str, report: dict) -> str:
  """One human-readable line: domain, threshold, volumes per artery, Agatston and category."""
  s = report["scores"]
  if not report.get("coronary_score", True):
    return f"{name}: no coronary score (no heart in view); see the warnings"
  vols = ", ".join(f"{a} {s[a]['volume_mm3']:.1f}" for a in ARTERIES)
  thr = report.get("threshold", {}).get("threshold_hu")
  thr_s = f"{thr:.0f} HU" if thr is not None else "n/a"
  n_warn = len(report.get("warnings", []))
  return (
    f"{name}: domain {report.get('domain')}, threshold {thr_s}, coronary calcium {s['total']['volume_mm3']:.1f} mm³ "
    f"({vols}), Agatston {s['total'].get('agatston', 0.0):.0f}, category {s.get('risk_category')}, {s.get('cac_drs')}"
    + (
      f" [{n_warn} warning{'s' if n_warn > 1 else ''}: see above and scores.json]" if n_warn else ""
    )
  )


def _r(x, nd: int):
  return None if x is None else round(float(x), nd)


def csv_row(case_id: str, report: dict) -> dict[str, Any]:
  """One scores.csv row: per-artery volume (mm³, 0.01), Agatston (0.01), mass (0.1), lesions."""
  s = report["scores"]
  scored = report.get("coronary_score", True)
  row = {
    "id": case_id,
    "domain": report.get("domain"),
    "threshold_hu": _r(report.get("threshold", {}).get("threshold_hu"), 1),
    "num_candidates": report.get("num_candidates", 0),
    "heart_region": report.get("heart_region", {}).get("source"),
    "coronary_score": scored,
  }
  for a in ARTERIES + ("total",):
    row.update(
      {
        f"{a}_mm3": _r(s[a]["volume_mm3"], 2),
        f"{a}_agatston": _r(s[a].get("agatston"), 2),
        f"{a}_mass": _r(s[a]["mass"], 1),
        f"{a}_lesions": s[a]["lesions"],
      }
    )
  row.update(
    {
      "risk_category": s.get("risk_category") if scored else None,
      "cac_drs": s.get("cac_drs") if scored else None,
      "agatston_standard": s.get("agatston_standard"),
      **{
        f"{k}_mm3": _r(s.get(k, {}).get("volume_mm3"), 2)
        for k in ("aorta", "aortic_valve", "mitral_valve")
      },
      "aortic_valve_agatston": _r(s.get("aortic_valve", {}).get("agatston"), 2),
      "warnings": " | ".join(report.get("warnings", [])),
    }
  )
  return row


def score_manifest(
  manifest_csv: str,
  checkpoint: str,
  output_dir: str,
  *,
  split: str | None = None,
  domain: str = "auto",
  overwrite: bool = False,
  calibration: float | None = None,
  fp: dict | None = None,
  progress: bool = False,
  heart_default: str | None = AUTO,
  record_input_path: bool = False,
) -> str:
  """Score every (selected) row of a manifest into output_dir/<id>/; writes output_dir/scores.csv.

  domain "auto" uses each row's manifest domain; rows without a heart mask use
  `heart_default` ("auto" or "none", as `score_file`'s heart_mask). Returns the CSV path.
  """
  rows = manifest.read_manifest(manifest_csv, split=split)
  if not rows:
    raise ValueError(
      f"{manifest_csv}: no rows" + (f" with split {split!r} (--split)" if split else "")
    )
  csv_path = os.path.join(output_dir, "scores.csv")
  if os.path.exists(csv_path) and not overwrite:
    raise pipeline.OutputExistsError(f"{csv_path} exists (pass --overwrite to replace it)")
  loaded = load_model(checkpoint)
  it = rows
  if progress:
    it = tqdm(rows, desc="scoring", unit="scan")
  out_rows = []
  for row in it:
    report = score_file(
      row.image,
      checkpoint,
      os.path.join(output_dir, row.id),
      heart_mask=row.heart_mask or heart_default,
      aorta_mask=row.aorta_mask,
      domain=row.domain if domain == "auto" else domain,
      overwrite=overwrite,
      calibration=calibration,
      fp=fp,
      loaded=loaded,
      record_input_path=record_input_path,
    )
    out_rows.append(csv_row(row.id, report))
  os.makedirs(output_dir, exist_ok=True)
  atomic.write_csv(csv_path, CSV_FIELDS, out_rows)
  return csv_path
