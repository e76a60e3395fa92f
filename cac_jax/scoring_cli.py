"""File-level scoring used by `launch.score`: read inputs, score, write outputs.

Keeps the launch script thin; everything here returns values and never prints.
"""

from __future__ import annotations

import csv
import io as _io
import os
from typing import Any, Optional

from cac_jax import atomic, checkpoints, io, manifest, pipeline, postprocess

CSV_FIELDS = ("id", "domain", "threshold_hu", "num_candidates", "LAD_mm3", "LCX_mm3", "RCA_mm3", "total_mm3",
              "total_agatston", "risk_category", "cac_drs", "aorta_mm3", "aortic_valve_mm3", "mitral_valve_mm3",
              "warnings")


def _fp_settings(config, fp: Optional[dict]) -> postprocess.FPReductionSettings:
  return postprocess.FPReductionSettings.from_config(config.scoring, **(fp or {}))


def score_file(image: str, checkpoint: str, output_dir: str, *, heart_mask: Optional[str] = None,
               aorta_mask: Optional[str] = None, domain: str = "auto", overwrite: bool = False,
               calibration: Optional[float] = None, fp: Optional[dict] = None, loaded=None,
               series: Optional[str] = None, record_input_path: bool = False) -> dict[str, Any]:
  """Score one scan file and write its outputs into output_dir; returns the report dict.

  Outputs are checked before any work so an existing result is never half-replaced (the
  caller claims output_dir with `atomic.claim_dir`). The input path is stored in scores.json
  only with `record_input_path` (a file or folder name can carry a patient's name). `series`
  picks a DICOM series of a folder by UID.
  """
  pipeline.check_outputs_free(output_dir, overwrite)
  params, config = loaded or checkpoints.load_inference(checkpoint)
  scan = io.read_scan(image, series=series)
  heart = io.read_mask(heart_mask, scan) > 0 if heart_mask else None
  aorta = io.read_mask(aorta_mask, scan) > 0 if aorta_mask else None
  result = pipeline.score_scan(scan, params, config, domain=domain, heart_mask=heart, aorta_mask=aorta,
                               fp_settings=_fp_settings(config, fp), calibration=calibration)
  result.report["input"]["image"] = os.path.abspath(str(image)) if record_input_path else None
  pipeline.write_outputs(result, scan, output_dir, overwrite=overwrite)
  return result.report


def summary_line(name: str, report: dict) -> str:
  """One human-readable line: domain, threshold, volumes per artery, Agatston and category."""
  s = report["scores"]
  vols = ", ".join(f"{a} {s[a]['volume_mm3']:.1f}" for a in ("LAD", "LCX", "RCA"))
  thr = report.get("threshold", {}).get("threshold_hu")
  thr_s = f"{thr:.0f} HU" if thr is not None else "n/a"
  return (f"{name}: domain {report.get('domain')}, threshold {thr_s}, coronary calcium {s['total']['volume_mm3']:.1f} mm³ "
          f"({vols}), Agatston {s['total'].get('agatston', 0.0):.0f}, category {s.get('risk_category')}, {s.get('cac_drs')}")


def csv_row(case_id: str, report: dict) -> dict[str, Any]:
  s = report["scores"]
  return {"id": case_id, "domain": report.get("domain"),
          "threshold_hu": report.get("threshold", {}).get("threshold_hu"),
          "num_candidates": report.get("num_candidates", 0),
          **{f"{a}_mm3": s[a]["volume_mm3"] for a in ("LAD", "LCX", "RCA", "total")},
          "total_agatston": s["total"].get("agatston"), "risk_category": s.get("risk_category"),
          "cac_drs": s.get("cac_drs"),
          **{f"{k}_mm3": s.get(k, {}).get("volume_mm3") for k in ("aorta", "aortic_valve", "mitral_valve")},
          "warnings": " | ".join(report.get("warnings", []))}


def score_manifest(manifest_csv: str, checkpoint: str, output_dir: str, *, split: Optional[str] = None,
                   domain: str = "auto", overwrite: bool = False, calibration: Optional[float] = None,
                   fp: Optional[dict] = None, progress: bool = False, record_input_path: bool = False) -> str:
  """Score every (selected) row of a manifest into output_dir/<id>/; writes output_dir/scores.csv.

  domain "auto" uses each row's manifest domain. Returns the CSV path.
  """
  rows = manifest.read_manifest(manifest_csv, split=split)
  if not rows:
    raise ValueError(f"{manifest_csv}: no rows" + (f" with split {split!r} (--split)" if split else ""))
  csv_path = os.path.join(output_dir, "scores.csv")
  if os.path.exists(csv_path) and not overwrite:
    raise pipeline.OutputExistsError(f"{csv_path} exists (pass --overwrite to replace it)")
  loaded = checkpoints.load_inference(checkpoint)
  it = rows
  if progress:
    from tqdm import tqdm
    it = tqdm(rows, desc="scoring", unit="scan")
  out_rows = []
  for row in it:
    report = score_file(row.image, checkpoint, os.path.join(output_dir, row.id), heart_mask=row.heart_mask,
                        aorta_mask=row.aorta_mask, domain=row.domain if domain == "auto" else domain,
                        overwrite=overwrite, calibration=calibration, fp=fp, loaded=loaded,
                        record_input_path=record_input_path)
    out_rows.append(csv_row(row.id, report))
  buf = _io.StringIO()
  w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
  w.writeheader()
  w.writerows(out_rows)
  os.makedirs(output_dir, exist_ok=True)
  atomic.write_text(csv_path, buf.getvalue())
  return csv_path
