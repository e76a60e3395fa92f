"""File-level scoring used by `launch.score`: read inputs, score, write outputs.

Keeps the launch script thin; everything here returns values and never prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Any

from tqdm import tqdm

from cac_jax import atomic, checkpoints
from cac_jax.data import manifest, volume_io
from cac_jax.scoring import dicom_seg, domain_check, outputs, pipeline, postprocess

ARTERIES = ("LAD", "LCX", "RCA")
CSV_FIELDS = (
  "id",
  "status",  # "ok" or "error" (then `error` holds the reason)
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
  "error",
)
AUTO, NONE = "auto", "none"
# A failed case's one-line reason, in its folder (so any shard's scores.csv lists it).
ERROR_FILE = "error.txt"
# Lock file in a batch's output folder: the rebuilds of scores.csv by several shards take turns.
SCORES_LOCK = ".scores.csv.lock"
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
  outputs.check_outputs_free(output_dir, overwrite)
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
  result.report["request"] = request_record(
    prov, domain, fp, calibration, heart_mask, aorta_mask, masks_dir
  )
  result.report["warnings"] = provenance_warnings(prov) + result.report["warnings"]
  extra = {}
  if os.path.isdir(image):  # DICOM input: also a DICOM SEG and SR referencing the source series
    extra, notes = dicom_seg.writers(
      volume_io.source_array(result.classes, scan),
      result.report["scores"],
      volume_io.dicom_series_files(image, series),
    )
    result.report["warnings"] += notes
  outputs.write_outputs(result, scan, output_dir, overwrite=overwrite, extra=extra)
  return result.report


def request_record(
  prov: dict,
  domain: str,
  fp: dict | None,
  calibration: float | None,
  heart_mask: str | None,
  aorta_mask: str | None,
  masks_dir: str | None = None,
) -> dict[str, Any]:
  """What a scan was scored with, as scores.json records it under "request".

  The checkpoint's content hash and the options that change the result (mask files as "file",
  not their paths). A re-run of a batch skips a case only when this record is the same."""

  def kind(mask: str | None) -> str | None:
    return mask if mask in (None, AUTO, NONE) else "file"

  return {
    "checkpoint_sha256": prov.get("checkpoint_sha256"),
    "domain": domain,
    "fp_reduction": dict(sorted((fp or {}).items())),
    "calibration": calibration,
    "heart_mask": "masks_dir" if masks_dir else kind(heart_mask),
    "aorta_mask": kind(aorta_mask),
  }


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
    "status": "ok",
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
      "error": None,
    }
  )
  return row


def parse_shard(text: str) -> tuple[int, int]:
  """(K, N) of a shard given as "K/N": K counts from 1 to N. Raises ValueError naming the rule."""
  parts = text.split("/")
  try:
    k, n = (int(p) for p in parts) if len(parts) == 2 else (0, 0)
  except ValueError:
    k, n = 0, 0
  if not 1 <= k <= n:
    raise ValueError(f"--shard {text!r}: give K/N with 1 <= K <= N (e.g. 1/4 ... 4/4)")
  return k, n


def shard_of(case_id: str, n: int) -> int:
  """The shard (1..n) a case belongs to: a stable hash of its id (SHA-256).

  So a case keeps its shard whatever the manifest's row order or other rows, on every
  machine."""
  digest = hashlib.sha256(case_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % n + 1


@dataclasses.dataclass
class BatchResult:
  """What a manifest run did: the CSV, and the cases scored, skipped, busy and failed.

  The CSV it wrote, the cases scored now, those skipped (complete outputs with the same
  request from an earlier run), those another run was scoring at that moment (`busy`, left to
  it) and those that failed ({id: reason})."""

  csv_path: str
  scored: list[str]
  skipped: list[str]
  failed: dict[str, str]
  busy: list[str] = dataclasses.field(default_factory=list)
  shard: str | None = None

  def summary(self) -> str:
    text = f"shard {self.shard}: " if self.shard else ""
    text += f"{len(self.scored)} scored, {len(self.skipped)} skipped (already scored), "
    if self.busy:
      text += f"{len(self.busy)} left to another run scoring them, "
    text += f"{len(self.failed)} failed"
    if self.failed:
      text += ": " + "; ".join(f"{k}: {v}" for k, v in self.failed.items())
    return text


def finished_report(case_dir: str) -> dict | None:
  """The scores.json of a complete case folder (written last of its outputs), else None."""
  path = os.path.join(case_dir, "scores.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _differences(stored: dict | None, wanted: dict) -> list[str]:
  if stored is None:
    return ["no request record (scored by an older version)"]
  return [f"{k} {stored.get(k)!r} -> {wanted[k]!r}" for k in wanted if stored.get(k) != wanted[k]]


def _one_line(e: BaseException) -> str:
  text = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
  known = isinstance(e, ValueError | OSError | MemoryError | checkpoints.CheckpointError)
  return text if known and text else f"{type(e).__name__}: {text}"


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
  fail_fast: bool = False,
  shard: tuple[int, int] | None = None,
) -> BatchResult:
  """Score every (selected) row of a manifest into output_dir/<id>/; write output_dir/scores.csv.

  scores.csv has a row per case.

  A batch survives its cases: a case that fails is recorded (status "error" and the one-line
  reason in scores.csv and in <id>/error.txt) and the others are scored; `fail_fast` stops at
  the first failure instead. A re-run resumes: a case whose complete outputs exist
  (scores.json, moved into place last) and were made with the same request (`request_record`:
  checkpoint hash, options) is skipped; a different request is refused before anything is
  scored, naming the difference (`overwrite` re-scores everything). domain "auto" uses each
  row's manifest domain; rows without a heart mask use `heart_default` ("auto" or "none").

  shard (K, N): score only the rows whose `shard_of` is K; N such runs (claiming the folder
  with `atomic.claim_dir(shared=True)`) fill one output folder together. Each case folder is
  locked while it is scored, so overlapping runs never score one case twice at once.
  scores.csv is rebuilt at the end of each run, atomically and one run at a time, from every
  selected row's folder, whichever run scored it: the same file whichever shard ends last.
  """
  rows = manifest.read_manifest(manifest_csv, split=split)
  if not rows:
    raise ValueError(
      f"{manifest_csv}: no rows" + (f" with split {split!r} (--split)" if split else "")
    )
  loaded = load_model(checkpoint)

  def request(row) -> dict:
    return request_record(
      loaded[2],
      row.domain if domain == "auto" else domain,
      fp,
      calibration,
      row.heart_mask or heart_default,
      row.aorta_mask,
    )

  if not overwrite:
    _refuse_other_requests(rows, output_dir, request)
  mine = [r for r in rows if shard is None or shard_of(r.id, shard[1]) == shard[0]]
  result = BatchResult(
    os.path.join(output_dir, "scores.csv"),
    [],
    [],
    {},
    shard=None if shard is None else f"{shard[0]}/{shard[1]}",
  )
  it = tqdm(mine, desc="scoring", unit="scan") if progress else mine

  def skip(case_id: str) -> None:
    result.skipped.append(case_id)
    if progress:  # the bar says so too
      it.set_postfix_str(f"{len(result.skipped)} skipped (already scored)")

  for row in it:
    case_dir = os.path.join(output_dir, row.id)
    if not overwrite and finished_report(case_dir) is not None:
      skip(row.id)
      continue
    with atomic.lock_dir(case_dir) as free:
      if not free:
        result.busy.append(row.id)
      elif not overwrite and finished_report(case_dir) is not None:  # done meanwhile
        skip(row.id)
      else:
        options = dict(
          heart_mask=row.heart_mask or heart_default,
          aorta_mask=row.aorta_mask,
          domain=row.domain if domain == "auto" else domain,
          calibration=calibration,
          fp=fp,
          loaded=loaded,
          record_input_path=record_input_path,
        )
        _score_case(row, checkpoint, case_dir, result, fail_fast, options)
  with atomic.locked_file(os.path.join(output_dir, SCORES_LOCK)):
    reports, failed = _finished(rows, output_dir, request)
    for case_id, reason in result.failed.items():  # this run's word beats older outputs
      reports.pop(case_id, None)
      failed[case_id] = reason
    write_scores_csv(result.csv_path, rows, reports, failed)
  return result


def _refuse_other_requests(rows, output_dir: str, request) -> None:
  """Raise OutputExistsError if a finished case of `rows` was scored with another request."""
  for row in rows:
    stored = finished_report(os.path.join(output_dir, row.id))
    diff = [] if stored is None else _differences(stored.get("request"), request(row))
    if diff:
      raise outputs.OutputExistsError(
        f"{os.path.join(output_dir, row.id)} was scored with other settings ("
        + "; ".join(diff)
        + "): pass --overwrite to re-score every case, or use another --output_dir"
      )


def _score_case(row, checkpoint, case_dir, result, fail_fast, options: dict) -> None:
  """Score one manifest row into its (locked) folder, recording it in `result`."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(case_dir, ERROR_FILE))
  try:
    # overwrite: a folder without scores.json holds no result; --overwrite: all
    score_file(row.image, checkpoint, case_dir, overwrite=True, **options)
    result.scored.append(row.id)
  except Exception as e:  # pylint: disable=broad-except  (one case never stops the batch)
    if fail_fast:
      with contextlib.suppress(OSError):
        os.rmdir(case_dir)  # only if empty
      raise
    result.failed[row.id] = _one_line(e)
    atomic.write_text(os.path.join(case_dir, ERROR_FILE), result.failed[row.id] + "\n")


def _finished(rows, output_dir: str, request) -> tuple[dict, dict[str, str]]:
  """({id: report}, {id: reason}) of the rows' folders.

  Reports made with this run's request, and the recorded reasons of failed cases without one."""
  reports, failed = {}, {}
  for row in rows:
    case_dir = os.path.join(output_dir, row.id)
    report = finished_report(case_dir)
    if report is not None and not _differences(report.get("request"), request(row)):
      reports[row.id] = report
    elif os.path.isfile(os.path.join(case_dir, ERROR_FILE)):
      with open(os.path.join(case_dir, ERROR_FILE), encoding="utf-8") as f:
        failed[row.id] = f.read().strip()
  return reports, failed


def write_scores_csv(csv_path: str, rows, reports: dict, failed: dict[str, str]) -> None:
  """scores.csv over the manifest's `rows`, written atomically.

  A row per finished case (`reports`: {id: report}), status "error" with the reason for a
  failed one."""
  out = []
  for row in rows:
    if reports.get(row.id) is not None:
      out.append(csv_row(row.id, reports[row.id]))
    elif row.id in failed:
      out.append({"id": row.id, "status": "error", "error": failed[row.id]})
  os.makedirs(os.path.dirname(csv_path) or ".", exist_ok=True)
  atomic.write_csv(csv_path, CSV_FIELDS, out)
