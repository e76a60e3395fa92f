"""Scoring one scan end to end, from the scan to scores and outputs on the input's own grid.

Read -> heart region -> threshold -> candidates -> dense inference -> false-positive reduction
-> scores -> outputs on the input's own grid.

`score_scan` is pure computation on arrays (returns a `ScoringResult`), in three stages that
every scorer uses (the experiment's Table 2 and the tissue breakdown too): `prepare` (domain,
threshold, heart region, candidate checks), `raw_classes` (the network, before FP reduction)
and `finish` (`reduced_classes`: FP reduction; scores and warnings). `cac_jax.scoring.outputs`
writes the files of a result.

Grids: `prepare` resamples the scan to the working spacing once (`working_scan`) and keeps it
for the network; the heart dilation runs there and is mapped to the scan's voxels
(`dilated_heart`). The aorta search runs on its own 1.5 mm copy, its ROI statistics on the
scan's voxels (`cac_jax.data.threshold`). Candidates, region growing, size limits, the heart
filter, the scores and the written labels stay on the scan's own grid: volumes and Agatston
are measured at native resolution, and FP reduction and scores touch only the box of the
labelled voxels.

Every report carries `RESEARCH_NOTICE` and plausibility warnings (`plausibility_warnings`):
the numbers come from a research model and are never silently implausible.
"""

from __future__ import annotations

import dataclasses
import platform
from typing import Any
import warnings

import ml_collections
import numpy as np

import cac_jax
from cac_jax import labels as labels_lib
from cac_jax.data import threshold
from cac_jax.data.scan import Scan
from cac_jax.scoring import heart_region as heart_region_lib
from cac_jax.scoring import postprocess, scores

RESEARCH_NOTICE = (
  "Research use only; not a medical device. These scores come from a research model and "
  "must not be used for diagnosis or treatment decisions."
)
# Plausibility limits: beyond them a result is reported with a warning (not changed).
MAX_PLAUSIBLE_LESIONS = 100
MAX_PLAUSIBLE_CORONARY_MM3 = 5000.0
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


@dataclasses.dataclass
class ScoringResult:
  """Everything the scoring of one scan produced.

  classes: uint8 (z, y, x) classes 0..6 on the scan's (canonical) grid after FP reduction.
  raw_classes: the same before FP reduction (for the ablation).
  report: JSON-serialisable dict (scores, threshold, ROI, domain decision, settings, warnings).
  heart: bool (z, y, x) heart mask or automatic region used (undilated), or None.
  """

  classes: np.ndarray
  raw_classes: np.ndarray
  report: dict[str, Any]
  heart: np.ndarray | None = None


def candidate_mask(hu: np.ndarray, threshold_hu: float, region: np.ndarray | None) -> np.ndarray:
  """Candidate voxels: HU >= threshold, restricted to `region` (bool (z,y,x)) when given."""
  cand = hu >= threshold_hu
  if region is not None:
    cand &= region
  return cand


def _versions() -> dict[str, str]:
  import flax
  import jax

  return {
    "cac_jax": cac_jax.__version__,
    "jax": jax.__version__,
    "flax": flax.__version__,
    "numpy": np.__version__,
    "python": platform.python_version(),
  }


def _empty_result(setup: Setup, scan: Scan) -> ScoringResult:
  zeros = np.zeros(scan.shape, np.uint8)
  report = dict(
    setup.report,
    domain=setup.domain,
    scores=scores.compute_scores(zeros, scan.hu, scan, setup.domain),
    warnings=setup.notes,
  )
  return ScoringResult(zeros, zeros, report)


def working_scan(scan: Scan, config: ml_collections.ConfigDict) -> Scan:
  """The scan at `config.data.working_spacing` (linear), or `scan` itself when it is on it."""
  from cac_jax.data import preprocess

  working = preprocess.resample(scan, tuple(config.data.working_spacing), order=1)
  if working.shape == scan.shape and np.allclose(working.spacing, scan.spacing):
    return scan
  return working


def dilated_heart(
  heart: np.ndarray, scan: Scan, working: Scan, dilation_mm: float
) -> tuple[np.ndarray, np.ndarray]:
  """The heart dilated by `dilation_mm` on the scan's and on the working grid (bool each).

  The distance transform runs on the working grid (the heart mapped there by nearest
  neighbour) and the result is mapped back to the scan's voxels by nearest neighbour, so its
  edge lies within half a working voxel of the exact dilation on the scan's grid; on a scan
  already on the working grid both are `postprocess.heart_region(heart, ...)` exactly.
  """
  from cac_jax.data import preprocess

  if working is scan:
    region = postprocess.heart_region(heart, scan.spacing, dilation_mm)
    return region, region
  w_heart = preprocess.resample_labels(heart.view(np.uint8), scan, working) > 0
  w_region = postprocess.heart_region(w_heart, working.spacing, dilation_mm)
  return preprocess.resample_labels(w_region.view(np.uint8), working, scan) > 0, w_region


@dataclasses.dataclass
class Setup:
  """What scoring decided for one scan before inference (`prepare`).

  domain: "ncct" or "ccta".
  threshold_hu: the calcium threshold (HU); inf when there is none (CCTA without an aorta).
  heart: bool (z, y, x) heart mask or automatic region (undilated), or None.
  region: bool (z, y, x) where the network classifies candidates, or None (everywhere). With
    the heart filter on it is the dilated heart: a shortcut for the filter, which later also
    drops grown lesions that reach outside it. With the filter off (the ablation without FP
    reduction) the network sees every candidate, as in the paper.
  skip_reason: why inference is skipped and the result is all zero (no aorta in a CCTA, no
    heart, no candidate voxels), or None when the network runs.
  report: the report so far; notes: its warnings so far.
  region_dilation_mm: the heart dilation (mm) that made `region`, or None without a region
    (`reduced_classes` reuses the region for the heart filter when its dilation is the same).
  working, working_region, candidates: the scan on the working grid (`working_scan`), `region`
    there, and the candidate voxels on the scan's grid (`raw_classes_many` uses them).
  """

  domain: str
  threshold_hu: float
  heart: np.ndarray | None
  region: np.ndarray | None
  skip_reason: str | None
  report: dict[str, Any]
  notes: list[str]
  region_dilation_mm: float | None = None
  working: Scan | None = dataclasses.field(default=None, repr=False)
  working_region: np.ndarray | None = dataclasses.field(default=None, repr=False)
  candidates: np.ndarray | None = dataclasses.field(default=None, repr=False)


def prepare_case(case, config, settings, domain: str | None = None) -> Setup:
  """`prepare` of a labelled `Case` with its own heart and aorta masks and domain (or `domain`).

  This is how the experiment and the studies set up a phantom or manifest case."""
  return prepare(
    case.scan,
    config,
    settings,
    domain=case.domain if domain is None else domain,
    heart_mask=case.heart_mask,
    aorta_mask=case.aorta_mask,
  )


def prepare(
  scan: Scan,
  config: ml_collections.ConfigDict,
  settings: postprocess.FPReductionSettings,
  *,
  domain: str = "auto",
  heart_mask: np.ndarray | None = None,
  aorta_mask: np.ndarray | None = None,
  auto_heart: bool = False,
) -> Setup:
  """Domain, threshold, heart region and candidate checks of one scan (see `score_scan`).

  Raises ImplausibleScanError for a grid too large or a scan whose values are not CT in HU.
  """
  check_grid_size(scan, config)
  notes: list[str] = list(scan.meta.get("warnings", []))
  report: dict[str, Any] = {
    "notice": RESEARCH_NOTICE,
    "versions": _versions(),
    "settings": dataclasses.asdict(settings),
    "coronary_score": True,
    "input": {"shape_zyx": list(scan.shape), "spacing_zyx_mm": list(scan.spacing)},
  }
  report["heart_region"] = {
    "source": "mask" if heart_mask is not None else "auto" if auto_heart else "none"
  }

  def skip(why: str, dom: str, thr: float = float("inf")) -> Setup:
    return Setup(dom, thr, None, None, why, report, notes + [why])

  working = working_scan(scan, config)
  try:
    domain, thr, info, more = threshold.choose_threshold(
      scan, domain, aorta_mask, config, search=working
    )
  except threshold.NoAortaError as e:
    if domain != "ccta" or settings.aorta_threshold:
      return skip(
        f"no aorta found, so no CCTA threshold; result is all zero ({e})",
        "ccta" if domain == "auto" else domain,
      )
    # 130 HU needs no ROI: the threshold is set just below, as for a CCTA with one.
    info, more = {"threshold": {"method": f"none ({e})", "threshold_hu": None}}, []
  notes += more
  report.update(info)
  if domain == "ccta" and not settings.aorta_threshold:
    thr = _without_aorta_threshold(report["threshold"], config, notes)
  if heart_mask is None and auto_heart:
    found = heart_region_lib.find_heart(scan, settings.dilation_mm)
    notes += list(found.notes)
    report["heart_region"].update(found=found.found, volume_ml=round(found.volume_ml, 1))
    if not found.found:
      report["settings"]["heart_filter"] = False
      report["coronary_score"] = False
      n_all = int(candidate_mask(scan.hu, thr, None).sum())
      _check_candidate_fraction(
        n_all, scan.hu.size, thr
      )  # a scan that is not CT is refused, not "no heart"
      if n_all == 0:
        notes.append(f"no candidate voxels >= {thr:.1f} HU in the whole scan")
      return skip(
        "no heart found in the field of view: no coronary score (all zero); "
        "give --heart_mask if the heart is in view",
        domain,
        thr,
      )
    heart_mask = found.mask
    notes.append(
      "heart region found automatically from the scan (lungs and mediastinum, "
      "docs/scoring.md); check it in overlay.png"
    )
  region = w_region = None
  if heart_mask is not None:
    if not heart_mask.any():
      report["coronary_score"] = False
      return skip("heart mask is empty (no heart in view); result is all zero", domain)
    if settings.heart_filter:
      region, w_region = dilated_heart(heart_mask, scan, working, settings.dilation_mm)
  else:
    report["settings"]["heart_filter"] = False  # no region: the filter cannot run
    notes.append("no heart mask given: candidates are not restricted to the heart region")
  cand = candidate_mask(scan.hu, thr, region)
  report["num_candidates"] = int(np.count_nonzero(cand))
  _check_candidate_fraction(
    report["num_candidates"], scan.hu.size if region is None else int(region.sum()), thr
  )
  if report["num_candidates"] == 0:
    return skip(f"no candidate voxels >= {thr:.1f} HU; result is all zero", domain, thr)
  return Setup(
    domain,
    thr,
    heart_mask,
    region,
    None,
    report,
    notes,
    None if region is None else settings.dilation_mm,
    working,
    w_region,
    cand,
  )


def _without_aorta_threshold(info: dict, config: ml_collections.ConfigDict, notes: list) -> float:
  """The fixed NCCT threshold (HU) of a CCTA with `FPReductionSettings.aorta_threshold` off.

  The aortic-lumen ROI's threshold (None without an ROI) is kept in the report's `info` beside
  it."""
  thr = float(config.scoring.ncct_threshold)
  info.update(
    method=f"fixed {thr:g} HU, aortic-lumen threshold off (ROI: {info['method']})",
    aorta_threshold_hu=info["threshold_hu"],
    threshold_hu=thr,
  )
  notes.append(
    f"aortic-lumen threshold off: CCTA candidates are voxels >= {thr:.0f} HU, contrast lumen "
    "included (the paper's scoring without FP reduction)"
  )
  return thr


def raw_classes(setup: Setup, scan: Scan, params, config: ml_collections.ConfigDict) -> np.ndarray:
  """Network classes at the candidates of `setup` before FP reduction: uint8 (z, y, x) 0..6."""
  return raw_classes_many(setup, scan, [params], config)[0]


def raw_classes_many(
  setup: Setup, scan: Scan, params_list, config: ml_collections.ConfigDict, **infer_options
) -> list[np.ndarray]:
  """Each model's network classes at the candidates of `setup`, on the scan's own grid.

  The classes are those before FP reduction. The networks run at `config.data.working_spacing`
  (the scan is resampled when its spacing differs); their classes are mapped back to the scan's
  grid by nearest neighbour and kept at the scan's own candidate voxels (HU >= threshold inside
  `setup.region`), so volumes and Agatston are measured at the scan's native resolution. The
  models share one architecture: the resampling, candidates and ROI plan are made once
  (`infer.predict_candidates_many`). `infer_options` go to it (ROI shapes).

  `setup.working`, `setup.working_region` and `setup.candidates` are what `prepare` computed
  already, so that the scan is resampled once; a `Setup` without them gets them computed here.
  Returns per model uint8 (z, y, x) classes 0..6, 0 outside candidates (all zero when
  `setup.skip_reason` says why there is no inference).
  """
  from cac_jax.data import preprocess  # jax import deferred: numpy-only callers stay light
  from cac_jax.scoring import infer

  if setup.skip_reason:
    return [np.zeros(scan.shape, np.uint8) for _ in params_list]
  threshold_hu, region = setup.threshold_hu, setup.region
  native_cand = setup.candidates
  if native_cand is None:
    native_cand = candidate_mask(scan.hu, threshold_hu, region)
  if not native_cand.any():
    return [np.zeros(scan.shape, np.uint8) for _ in params_list]
  working = setup.working
  if working is None:
    working = working_scan(scan, config)
  if working is scan:
    preds = infer.predict_candidates_many(
      params_list, config, scan.hu, native_cand, **infer_options
    )
    return [p.class_volume().astype(np.uint8) for p in preds]
  w_region = setup.working_region
  if w_region is None and region is not None:
    w_region = preprocess.resample_labels(region.astype(np.uint8), scan, working) > 0
  w_cand = candidate_mask(working.hu, threshold_hu, w_region)
  # Candidates near the threshold may vanish under interpolation: also keep any working voxel
  # that is the nearest neighbour of a native candidate.
  w_cand |= preprocess.resample_labels(native_cand.view(np.uint8), scan, working) > 0
  preds = infer.predict_candidates_many(params_list, config, working.hu, w_cand, **infer_options)
  out = []
  for p in preds:
    back = preprocess.resample_labels(p.class_volume().astype(np.uint8), working, scan)
    back[~native_cand] = 0
    out.append(back)
  return out


def reduced_classes(
  setup: Setup, scan: Scan, raw: np.ndarray, settings: postprocess.FPReductionSettings
) -> tuple[np.ndarray, list[str]]:
  """`postprocess.reduce_false_positives` of `raw_classes` for one `setup` with `settings`.

  Unlike the postprocess step it takes what `prepare` decided: a skipped setup's classes pass
  through, the setup's dilated heart region is reused when its dilation is `settings`'s, and
  the warnings raised come back as notes. Returns (uint8 (z, y, x) classes, warnings).
  """
  if setup.skip_reason:
    return raw, []
  region = setup.region if setup.region_dilation_mm == settings.dilation_mm else None
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    final = postprocess.reduce_false_positives(
      raw, scan.hu, setup.threshold_hu, scan.spacing, setup.heart, settings, region
    )
  return final.astype(np.uint8, copy=False), [str(w.message) for w in caught]


def finish(
  setup: Setup,
  scan: Scan,
  raw: np.ndarray,
  settings: postprocess.FPReductionSettings,
  calibration: float | None = None,
) -> ScoringResult:
  """FP reduction of `raw`, scores and plausibility warnings: the `ScoringResult`."""
  if setup.skip_reason:
    return _empty_result(setup, scan)
  final, notes = reduced_classes(setup, scan, raw, settings)
  notes = setup.notes + notes
  report = dict(setup.report, domain=setup.domain)
  report["scores"] = scores.compute_scores(
    final, scan.hu, scan, setup.domain, calibration=calibration
  )
  notes += plausibility_warnings(
    final,
    scan,
    report["scores"],
    setup.heart,
    settings.dilation_mm if report["settings"]["heart_filter"] is False else None,
  )
  report["warnings"] = notes
  return ScoringResult(final, raw, report, setup.heart)


def score_scan(
  scan: Scan,
  params,
  config: ml_collections.ConfigDict,
  *,
  domain: str = "auto",
  heart_mask: np.ndarray | None = None,
  aorta_mask: np.ndarray | None = None,
  fp_settings: postprocess.FPReductionSettings | None = None,
  calibration: float | None = None,
  auto_heart: bool = False,
) -> ScoringResult:
  """Score one scan: `prepare` -> `raw_classes` -> `finish` (the studies reuse the stages).

  Args:
    scan: HU volume (z, y, x) in canonical orientation, any spacing.
    params: {"generator", "classifier"} inference params (see `cac_jax.checkpoints`).
    config: the config the params were trained with.
    domain: "ncct", "ccta" or "auto" (decided from the aorta's HU; the decision is reported).
    heart_mask, aorta_mask: bool (z, y, x) on the scan's grid, optional.
    fp_settings: which false-positive reduction steps to run (default: all).
    calibration: mass-score calibration factor (mg/cm³ per HU), optional.
    auto_heart: without a heart mask, find the heart region from the scan itself
      (`cac_jax.scoring.heart_region`); when none is found (no heart in view) there is no coronary
      score: all zero, `report["coronary_score"]` False and a warning.

  A scan with no aorta (CCTA), an empty heart mask, no heart found or no candidate voxels
  gives an all-zero result with a warning in `report["warnings"]`, not an exception.
  `report["heart_region"]` says where the region came from ("mask", "auto" or "none") and
  `report["settings"]["heart_filter"]` whether the heart filter actually ran. With a
  `domain_check.attach`ed model in `params`, `report["domain_check"]` says whether the scan is
  like the adaptation's target domain (`cac_jax.scoring.domain_check`).
  """
  settings = fp_settings or postprocess.FPReductionSettings.from_config(config.scoring)
  setup = prepare(
    scan,
    config,
    settings,
    domain=domain,
    heart_mask=heart_mask,
    aorta_mask=aorta_mask,
    auto_heart=auto_heart,
  )
  result = finish(setup, scan, raw_classes(setup, scan, params, config), settings, calibration)
  if "domain_check" in params:  # attached by `domain_check.attach` (file scoring)
    from cac_jax.scoring import domain_check  # jax: imported only when a check runs

    result.report["domain_check"] = domain_check.for_setup(
      params["domain_check"], params, config, scan, setup
    )
  return result


def plausibility_warnings(
  classes: np.ndarray,
  scan: Scan,
  score: dict,
  heart_mask: np.ndarray | None,
  outside_check_mm: float | None,
) -> list[str]:
  """Warnings for results no real scan should give, so a bad region or model is never silent.

  Args:
    classes: final int (z, y, x) classes.
    scan: the scan (geometry).
    score: `scores.compute_scores` of `classes`.
    heart_mask: the heart mask or automatic region used (None: none was available).
    outside_check_mm: when the heart filter did not run, the dilation (mm) of the heart region
      to count coronary lesions outside of; without a heart mask the automatic region is used.
  """
  out = []
  n = score["total"]["lesions"]
  if n > MAX_PLAUSIBLE_LESIONS:
    out.append(
      f"implausible: {n} coronary lesions (> {MAX_PLAUSIBLE_LESIONS}); bone, contrast or noise "
      "is probably called calcium"
    )
  vol = score["total"]["volume_mm3"]
  if vol > MAX_PLAUSIBLE_CORONARY_MM3:
    out.append(
      f"implausible: {vol:.0f} mm³ of coronary calcium (> {MAX_PLAUSIBLE_CORONARY_MM3:.0f} mm³)"
    )
  if outside_check_mm is not None and n:
    mask = heart_mask
    if mask is None:
      mask = heart_region_lib.find_heart(scan, outside_check_mm).mask
    if mask.any():
      region = postprocess.heart_region(mask, scan.spacing, outside_check_mm)
      lab, num = postprocess.label_lesions(np.isin(classes, labels_lib.CORONARY_CLASSES))
      inside = np.unique(lab[region & (lab > 0)])
      outside = num - int(np.count_nonzero(inside))
      if outside:
        out.append(
          f"{outside} of {num} coronary lesions lie outside the (dilated) heart region; the heart "
          "filter was off, so they are counted"
        )
  return out


def check_grid_size(scan: Scan, config) -> None:
  """Raises ImplausibleScanError when the native or working grid exceeds MAX_GRID_VOXELS.

  Estimated from the header geometry before anything volume-sized is allocated (a wrong
  spacing in a header, e.g. 10 mm for 1 mm, would otherwise make resampling try to allocate
  many GiB and die).
  """
  from cac_jax.data import preprocess  # SimpleITK only; keeps this module's imports light

  working = preprocess.resampled_shape(scan.shape, scan.spacing, tuple(config.data.working_spacing))
  for what, shape in (("native", scan.shape), ("working", working)):
    n = int(np.prod(np.asarray(shape, np.int64)))
    if n > MAX_GRID_VOXELS:
      raise ImplausibleScanError(
        f"the scan's {what} grid would be {tuple(int(v) for v in shape)} voxels (z, y, x) = "
        f"{n / 2**20:.0f} Mi voxels, above the limit of {MAX_GRID_VOXELS / 2**20:.0f} Mi "
        f"(spacing {tuple(round(v, 4) for v in scan.spacing)} mm): check the voxel spacing in "
        "the header, or crop the scan to the chest"
      )


def _check_candidate_fraction(n: int, total: int, thr: float) -> None:
  if total and n / total > MAX_CANDIDATE_FRACTION:
    raise ImplausibleScanError(
      f"{n / total:.0%} of the scanned voxels are at or above the calcium threshold "
      f"{thr:.0f} HU (a CT has a few percent): the values are not CT in HU (raw stored values, "
      "another modality?) or the wrong --domain was given"
    )
