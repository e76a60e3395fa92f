"""One phantom case: anatomy + calcium -> acquisition (PSF, noise) -> annotator-style labels.

Randomness: the patient (anatomy, calcium) comes from `default_rng([0xCAC, k, seed, domain])`
streams (without the domain when `config.phantoms.paired_patients`, so the same seed gives the
same patient in every domain); the acquisition from `default_rng([0xCAC, 3, seed, domain])`;
CCTA contrast heterogeneity (venous inflow, inhomogeneous enhancement, streaks; see `contrast`)
from `default_rng([0xCAC, 4, seed, domain])`, so NCCT cases do not depend on it.
Labels are drawn like an annotator would: the connected voxels of the simulated image at or above
the scan's calcium threshold (130 HU for NCCT; mean + 3 SD of an ascending-aorta ROI at the
left-coronary origin level for CCTA) that touch the lesion's core, within 2.5 mm of the lesion's bounding box.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from cac_jax import labels as L
from cac_jax.data.scan import Case, Scan
from cac_jax.phantoms import acquisition, anatomy, contrast, lesions, raster

_STRUCT = np.ones((3, 3, 3), dtype=bool)


@dataclasses.dataclass
class Simulation:
  """A generated case plus what tests and previews need to measure it."""

  case: Case
  patient: anatomy.Patient
  protocol: acquisition.Protocol
  plans: list  # LesionPlan per planned lesion
  lesion_volumes_mm3: np.ndarray  # labelled volume per planned lesion (0: invisible / outside)
  lesion_peaks_hu: np.ndarray  # max HU inside each labelled lesion (nan if none)
  tissue: np.ndarray | None  # uint8 (z, y, x) tissue ids (anatomy.TISSUES) or None
  materials: dict
  contrast: contrast.ContrastFeatures | None = None  # CCTA only
  streak_hu: np.ndarray | None = None  # CCTA with track_tissue: the streak field added (pre-blur)


def _domain_key(domain: str) -> int:
  return acquisition.DOMAINS.index(domain)


def _patient_key(domain: str, seed: int, stream: int, config) -> list:
  paired = bool(config.phantoms.get("paired_patients", False))
  return [0xCAC, stream, int(seed)] + ([] if paired else [_domain_key(domain)])


def plan_case_calcium(domain: str, seed: int, config) -> list:
  """The calcifications `generate_case(domain, seed, config)` will place (cheap)."""
  acquisition.check_domain(domain)
  p_free = float(config.phantoms.get("p_no_coronary_calcium", lesions.P_NO_CORONARY_CALCIUM))
  return lesions.plan_calcium(np.random.default_rng(_patient_key(domain, seed, 2, config)), p_free)


def case_id(domain: str, seed: int) -> str:
  return f"{domain}_{int(seed):06d}"


def simulate(
  domain: str, seed: int, config, track_tissue: bool = False, protocol_fn=None
) -> Simulation:
  """Generates one case with its bookkeeping (see `generate_case`).

  protocol_fn: optional `(Protocol, seed) -> Protocol` applied to the drawn protocol (held-apart
  acquisitions such as a fixed kVp, `cac_jax.phantoms.variants`); the patient and every other
  draw are those of the unmodified case.
  """
  acquisition.check_domain(domain)
  patient = anatomy.sample_patient(np.random.default_rng(_patient_key(domain, seed, 1, config)))
  plans = plan_case_calcium(domain, seed, config)
  rng = np.random.default_rng([0xCAC, 3, int(seed), _domain_key(domain)])
  protocol = acquisition.sample_protocol(domain, rng)
  if protocol_fn is not None:
    protocol = protocol_fn(protocol, int(seed))
  mat = acquisition.materials(protocol, rng)
  grid = acquisition.make_grid(domain, protocol, patient, config, rng)

  canvas = raster.Canvas(grid, mat["air"], track_tissue=track_tissue)
  anatomy.paint_anatomy(canvas, patient, mat)
  feats = None
  if protocol.iodine_hu > 0:
    feats = contrast.sample_features(
      np.random.default_rng([0xCAC, 4, int(seed), _domain_key(domain)]),
      patient,
      protocol,
      plans,
      mat,
    )
    contrast.paint_venous(canvas, feats, mat, anatomy.TISSUE["venous_contrast"])
    contrast.enhance_ventricles(canvas, feats, mat)
  lumens = anatomy.paint_coronaries(canvas, patient, mat)
  if feats is not None:
    contrast.enhance_coronaries(canvas, feats, lumens, mat)
  # Calcium: anti-aliased, mass-conserving (sum of occupancy x voxel volume = analytic volume).
  cores = []
  for plan in plans:
    parts = []
    for shape in lesions.lesion_shapes(plan, patient):
      sf = canvas.soft_fraction(shape)
      if sf is not None and sf[1].max() > 0:
        parts.append(sf)
    if not parts:
      cores.append(None)
      continue
    mass = sum(float(f.sum()) for _, f in parts) * grid.voxel_volume
    scale = float(np.clip(plan.volume_mm3 / max(mass, 1e-6), 0.25, 8.0))
    value = plan.density_hu * mat["calcium_factor"]
    core = []
    for bb, f in parts:
      f = np.minimum(f * scale, 1.0)
      canvas.blend(bb, f, value)
      core.append((bb, f >= max(0.5 * float(f.max()), 1e-3)))
      if canvas.tissue is not None:  # tissue "calcium" = the lesion core (seed of the labels)
        np.copyto(canvas.tissue[bb], np.uint8(anatomy.TISSUE["calcium"]), where=core[-1][1])
    cores.append(core)

  streak = None
  if feats is not None:
    streak = np.zeros(grid.shape, np.float32) if track_tissue else None
    contrast.add_streaks(canvas, feats, record=streak)
  hu = acquisition.blur_and_noise(canvas.hu, protocol, grid, rng)
  if protocol.iodine_hu > 0:
    c = patient.root_centre.copy()
    c[2] = patient.lm_ostium[2]
    threshold, roi_mean, roi_sd = acquisition.aorta_threshold(
      hu, grid, c, config.scoring.roi_size_mm
    )
  else:
    threshold = float(config.scoring.ncct_threshold)
    roi_mean = roi_sd = float("nan")

  labels = np.zeros(grid.shape, dtype=np.int32)
  left_main = np.zeros(grid.shape, dtype=bool)  # LAD-class voxels of left-main lesions
  vols = np.zeros(len(plans))
  peaks = np.full(len(plans), np.nan)
  order = sorted(range(len(plans)), key=lambda i: plans[i].cls not in L.CORONARY_CLASSES)
  pad = 2.5  # mm around the lesion's analytic extent (limits noise bloat in low-dose scans)
  for i in order:
    if cores[i] is None:
      continue
    lo = np.array([[s.start for s in bb] for bb, _ in cores[i]]).min(0)
    hi = np.array([[s.stop for s in bb] for bb, _ in cores[i]]).max(0)
    padv = np.ceil(pad / np.asarray(grid.spacing)).astype(int)
    lo, hi = np.maximum(lo - padv, 0), np.minimum(hi + padv, grid.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    seed_mask = np.zeros(hi - lo, dtype=bool)
    for bb, m in cores[i]:
      seed_mask[tuple(slice(s.start - o, s.stop - o) for s, o in zip(bb, lo))] |= m
    bright = (hu[box] >= threshold) & (labels[box] == 0)
    comp, _ = ndimage.label(bright, structure=_STRUCT)
    ids = np.unique(comp[seed_mask & bright])
    ids = ids[ids > 0]
    if ids.size == 0:
      continue
    sel = np.isin(comp, ids)
    labels[box][sel] = plans[i].cls
    if plans[i].site == "lm":
      left_main[box][sel] = True
    vols[i] = sel.sum() * grid.voxel_volume
    peaks[i] = float(hu[box][sel].max())

  meta = {
    "kvp": int(protocol.kvp),
    "phantom_domain": domain,
    "domain": acquisition.CASE_DOMAIN[domain],
    "calcium_threshold_hu": float(threshold),
    "seed": int(seed),
    "noise_sd_hu": float(protocol.noise_sd_hu),
    "psf_fwhm_mm": float(protocol.psf_fwhm_mm),
    "slice_thickness_mm": float(protocol.thickness_mm),
    "iodine_hu": float(protocol.iodine_hu),
    "aorta_roi_mean_hu": roi_mean,
    "aorta_roi_sd_hu": roi_sd,
  }
  scan = Scan(hu=hu, spacing=grid.spacing, origin=tuple(float(v) for v in grid.origin), meta=meta)
  heart = canvas.masks["heart"]
  case = Case(
    case_id=case_id(domain, seed),
    scan=scan,
    domain=acquisition.CASE_DOMAIN[domain],
    labels=labels,
    heart_mask=heart,
    aorta_mask=canvas.masks["aorta"],
    left_main=left_main if left_main.any() else None,
  )
  return Simulation(
    case=case,
    patient=patient,
    protocol=protocol,
    plans=plans,
    lesion_volumes_mm3=vols,
    lesion_peaks_hu=peaks,
    tissue=canvas.tissue,
    materials=mat,
    contrast=feats,
    streak_hu=streak,
  )


def generate_case(domain: str, seed: int, config) -> Case:
  """A labelled phantom case, deterministic in (domain, seed).

  Args:
    domain: "chest_ncct", "cardiac_ncct" or "ccta".
    seed: integer case seed.
    config: project config (uses `config.phantoms`, `config.data.working_spacing`,
      `config.scoring.ncct_threshold`, `config.scoring.roi_size_mm`).
  Returns:
    Case with scan.hu float32 (z, y, x) HU, labels int32 classes 0..6, bool heart/aorta masks,
    domain "ncct" or "ccta"; scan.meta holds kvp, phantom_domain and calcium_threshold_hu.
  """
  return simulate(domain, seed, config).case
