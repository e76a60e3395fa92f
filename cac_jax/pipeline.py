"""Scoring one scan end to end: read -> threshold -> candidates -> dense inference ->
false-positive reduction -> scores -> outputs on the input's own grid.

`score_scan` is pure computation on arrays (returns a `ScoringResult`);
`write_outputs` writes calcium_labels.nii.gz, scores.json and overlay.png atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import warnings
from typing import Any, Optional

import ml_collections
import numpy as np

import cac_jax
from cac_jax import atomic
from cac_jax import labels as labels_lib
from cac_jax import postprocess, scores, threshold
from cac_jax.scan import Scan

OUTPUT_FILES = ("calcium_labels.nii.gz", "scores.json", "overlay.png")
# Refusal limits, checked before any inference. Voxels at or above the calcium threshold are
# bone, calcium and contrast: 7 % of the shared real contrast CT (a tight chest crop) at its
# CCTA threshold, 23 % even at the NCCT 130 HU. Far more means the values are not HU (raw
# stored values, another modality), and planning inference over them would take very long.
MAX_CANDIDATE_FRACTION = 0.4
# Largest native or working grid scored (voxels): 2**28 float32 voxels = 1 GiB per copy, and
# scoring holds several volume-sized arrays (distance transforms, labels).
MAX_GRID_VOXELS = 1 << 28


class ImplausibleScanError(ValueError):
  """The scan cannot be scored sensibly (not CT-like, or too large a grid); says why."""


class OutputExistsError(FileExistsError):
  """Raised when outputs exist and overwriting was not asked for."""


@dataclasses.dataclass
class ScoringResult:
  """Everything the scoring of one scan produced.

  classes: int32 (z, y, x) classes 0..6 on the scan's (canonical) grid after FP reduction.
  raw_classes: the same before FP reduction (for the ablation).
  report: JSON-serialisable dict (scores, threshold, ROI, domain decision, settings, warnings).
  """

  classes: np.ndarray
  raw_classes: np.ndarray
  report: dict[str, Any]


def candidate_mask(hu: np.ndarray, threshold_hu: float, region: Optional[np.ndarray]) -> np.ndarray:
  """Candidate voxels: HU >= threshold, restricted to `region` (bool (z,y,x)) when given."""
  cand = hu >= threshold_hu
  if region is not None:
    cand &= region
  return cand


def _versions() -> dict[str, str]:
  import flax
  import jax
  return {"cac_jax": cac_jax.__version__, "jax": jax.__version__, "flax": flax.__version__,
          "numpy": np.__version__, "python": platform.python_version()}


def _roi_report(roi: threshold.AortaROI) -> dict[str, Any]:
  return {"method": f"aorta lumen ROI mean+3SD ({roi.source})", "roi_centre_zyx": list(roi.centre),
          "roi_box_zyx": [[s.start, s.stop] for s in roi.box], "roi_num_voxels": int(roi.num_voxels),
          "mean_hu": float(roi.mean_hu), "sd_hu": float(roi.sd_hu), "threshold_hu": float(roi.threshold_hu)}


def choose_threshold(scan: Scan, domain: str, aorta_mask: Optional[np.ndarray], config) -> tuple[str, float, dict, list[str]]:
  """Decide the domain (when 'auto') and the calcium threshold in HU.

  Returns (domain, threshold_hu, info dict for the report, notes).
  Raises threshold.NoAortaError when a CCTA threshold cannot be found.
  """
  info: dict[str, Any] = {}
  notes: list[str] = []
  if domain == "auto":
    domain, reason = threshold.decide_domain(scan, aorta_mask)
    info["domain_decision"] = reason
    notes.append(f"domain auto-detected as {domain}: {reason}")
  if domain not in ("ncct", "ccta"):
    raise ValueError(f"domain must be 'ncct', 'ccta' or 'auto'; got {domain!r}")
  if domain == "ncct":
    thr = float(config.scoring.ncct_threshold)
    info["threshold"] = {"method": "fixed NCCT threshold", "threshold_hu": thr}
  else:
    roi = threshold.ccta_threshold(scan, aorta_mask, tuple(config.scoring.roi_size_mm))
    thr = float(roi.threshold_hu)
    info["threshold"] = _roi_report(roi)
  return domain, thr, info, notes


def _empty_result(scan: Scan, domain: str, report: dict, notes: list[str], why: str) -> ScoringResult:
  zeros = np.zeros(scan.shape, np.int32)
  notes.append(why)
  report.update(domain=domain, scores=scores.compute_scores(zeros, scan.hu, scan, domain), warnings=notes)
  return ScoringResult(zeros, zeros, report)


def detect(scan: Scan, params, config: ml_collections.ConfigDict, threshold_hu: float,
           region: Optional[np.ndarray]) -> np.ndarray:
  """Network classes at candidate voxels, on the scan's own grid.

  The network runs at `config.data.working_spacing` (the scan is resampled when its spacing
  differs); its classes are mapped back to the scan's grid by nearest neighbour and kept at
  the scan's own candidate voxels (HU >= threshold inside `region`), so volumes and Agatston
  are measured at the scan's native resolution.

  Returns int32 (z, y, x) classes 0..6, 0 outside candidates.
  """
  from cac_jax import infer, preprocess  # jax import deferred: numpy-only callers stay light
  native_cand = candidate_mask(scan.hu, threshold_hu, region)
  if not native_cand.any():
    return np.zeros(scan.shape, np.int32)
  working = preprocess.resample(scan, tuple(config.data.working_spacing), order=1)
  if working.shape == scan.shape and np.allclose(working.spacing, scan.spacing):
    return infer.predict_classes(params, config, scan.hu, native_cand).astype(np.int32)
  w_region = None if region is None else preprocess.resample_labels(region.astype(np.uint8), scan, working) > 0
  w_cand = candidate_mask(working.hu, threshold_hu, w_region)
  # Candidates near the threshold may vanish under interpolation: also keep any working voxel
  # that is the nearest neighbour of a native candidate.
  w_cand |= preprocess.resample_labels(native_cand.astype(np.uint8), scan, working) > 0
  w_classes = infer.predict_classes(params, config, working.hu, w_cand)
  back = preprocess.resample_labels(w_classes.astype(np.int32), working, scan)
  return np.where(native_cand, back, 0).astype(np.int32)


def score_scan(scan: Scan, params, config: ml_collections.ConfigDict, *, domain: str = "auto",
               heart_mask: Optional[np.ndarray] = None, aorta_mask: Optional[np.ndarray] = None,
               fp_settings: Optional[postprocess.FPReductionSettings] = None,
               calibration: Optional[float] = None) -> ScoringResult:
  """Score one scan.

  Args:
    scan: HU volume (z, y, x) in canonical orientation, any spacing.
    params: {"generator", "classifier"} inference params (see `cac_jax.checkpoints`).
    config: the config the params were trained with.
    domain: "ncct", "ccta" or "auto" (decided from the aorta's HU; the decision is reported).
    heart_mask, aorta_mask: bool (z, y, x) on the scan's grid, optional.
    fp_settings: which false-positive reduction steps to run (default: all).
    calibration: mass-score calibration factor (mg/cm³ per HU), optional.

  A scan with no aorta (CCTA), an empty heart mask or no candidate voxels gives an all-zero
  result with a warning in `report["warnings"]`, not an exception.
  """
  settings = fp_settings or postprocess.FPReductionSettings.from_config(config.scoring)
  check_grid_size(scan, config)
  notes: list[str] = list(scan.meta.get("warnings", []))
  report: dict[str, Any] = {"versions": _versions(), "settings": dataclasses.asdict(settings),
                            "input": {"shape_zyx": list(scan.shape), "spacing_zyx_mm": list(scan.spacing)}}
  try:
    domain, thr, info, more = choose_threshold(scan, domain, aorta_mask, config)
  except threshold.NoAortaError as e:
    return _empty_result(scan, "ccta" if domain == "auto" else domain, report, notes,
                         f"no aorta found, so no CCTA threshold; result is all zero ({e})")
  notes += more
  report.update(info)
  region = None
  if heart_mask is not None:
    if not heart_mask.any():
      return _empty_result(scan, domain, report, notes, "heart mask is empty (no heart in view); result is all zero")
    if settings.heart_filter:
      # Inference only inside the dilated heart: a shortcut for the FP-reduction heart filter,
      # which later also drops grown lesions that reach outside it. With the heart filter off
      # (the ablation without FP reduction) the network sees every candidate, as in the paper.
      region = postprocess.heart_region(heart_mask, scan.spacing, settings.dilation_mm)
  else:
    notes.append("no heart mask given: candidates are not restricted to the heart region")
  report["num_candidates"] = int(candidate_mask(scan.hu, thr, region).sum())
  _check_candidate_fraction(report["num_candidates"], scan.hu.size if region is None else int(region.sum()), thr)
  if report["num_candidates"] == 0:
    return _empty_result(scan, domain, report, notes, f"no candidate voxels >= {thr:.1f} HU; result is all zero")
  raw = detect(scan, params, config, thr, region)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    final = postprocess.reduce_false_positives(raw, scan.hu, thr, scan.spacing, heart_mask, settings)
  notes += [str(w.message) for w in caught]
  report["domain"] = domain
  report["scores"] = scores.compute_scores(final, scan.hu, scan, domain, calibration=calibration)
  report["warnings"] = notes
  return ScoringResult(final.astype(np.int32), raw, report)


def check_grid_size(scan: Scan, config) -> None:
  """Raises ImplausibleScanError when the native or working grid exceeds MAX_GRID_VOXELS.

  Estimated from the header geometry before anything volume-sized is allocated (a wrong
  spacing in a header, e.g. 10 mm for 1 mm, would otherwise make resampling try to allocate
  many GiB and die).
  """
  from cac_jax import preprocess  # SimpleITK only; keeps this module's imports light
  working = preprocess.resampled_shape(scan.shape, scan.spacing, tuple(config.data.working_spacing))
  for what, shape in (("native", scan.shape), ("working", working)):
    n = int(np.prod(np.asarray(shape, np.int64)))
    if n > MAX_GRID_VOXELS:
      raise ImplausibleScanError(
          f"the scan's {what} grid would be {tuple(int(v) for v in shape)} voxels (z, y, x) = "
          f"{n / 2**20:.0f} Mi voxels, above the limit of {MAX_GRID_VOXELS / 2**20:.0f} Mi "
          f"(spacing {tuple(round(v, 4) for v in scan.spacing)} mm): check the voxel spacing in "
          "the header, or crop the scan to the chest")


def _check_candidate_fraction(n: int, total: int, thr: float) -> None:
  if total and n / total > MAX_CANDIDATE_FRACTION:
    raise ImplausibleScanError(
        f"{n / total:.0%} of the scanned voxels are at or above the calcium threshold "
        f"{thr:.0f} HU (a CT has a few percent): the values are not CT in HU (raw stored values, "
        "another modality?) or the wrong --domain was given")


def check_outputs_free(output_dir: str, overwrite: bool) -> None:
  """Raise OutputExistsError if any output file exists in output_dir and not `overwrite`.

  Outputs without scores.json (moved into place last by `write_outputs`) are the remains of
  a run killed while moving its files into place, not a result: they are replaced.
  """
  existing = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(output_dir, f))]
  if existing and "scores.json" in existing and not overwrite:
    raise OutputExistsError(f"outputs already exist in {output_dir}: {', '.join(existing)} "
                            "(pass --overwrite to replace them)")


def write_outputs(result: ScoringResult, scan: Scan, output_dir: str, *, overwrite: bool = False) -> dict[str, str]:
  """Write calcium_labels.nii.gz (reference encoding, on the input's grid), scores.json and
  overlay.png into output_dir, all or nothing (`atomic.write_set`: each file is checked
  complete, then moved into place, scores.json last). Returns {name: path}."""
  from cac_jax import io, plots
  os.makedirs(output_dir, exist_ok=True)
  check_outputs_free(output_dir, overwrite)
  atomic.remove_stale(output_dir)  # leftovers of a killed run (the caller holds the folder)
  text = json.dumps(result.report, indent=2, default=_json_default)
  return atomic.write_set(output_dir, {
      "calcium_labels.nii.gz": lambda p: io.write_like(labels_lib.classes_to_reference(result.classes), scan, p),
      "overlay.png": lambda p: plots.overlay_png(scan.hu, result.classes, p, scan.spacing),
      "scores.json": lambda p: atomic.write_text(p, text)}, last="scores.json")


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
