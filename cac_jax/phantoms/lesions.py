"""Calcification planning (cheap, geometry-free) and placement (shapes on the sampled anatomy).

Per-lesion volume: log-normal, median 7 mm^3, sigma 2.05 (quartiles ~1.8 / ~28 mm^3, 95th
percentile ~205 mm^3), redrawn above 700 mm^3. Material density (HU at 120 kVp) is log-uniform in
250..1500; the visible peak after blur is lower for small lesions. About a third of patients carry
no coronary calcium. Distractors: aortic wall plaques, aortic valve and mitral annulus calcium.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cac_jax import labels as L
from cac_jax.phantoms.raster import Ellipsoid, frame_from, unit

LESION_MEDIAN_MM3 = 7.0
LESION_SIGMA = 2.05
LESION_MAX_MM3 = 700.0
DENSITY_RANGE_120KVP = (250.0, 1500.0)
P_NO_CORONARY_CALCIUM = 1.0 / 3.0
CORONARY_SITES = ("lm", "lad", "lcx", "rca")
CORONARY_SITE_P = (0.06, 0.42, 0.22, 0.30)
SITE_CLASS = {
  "lm": L.LAD,
  "lad": L.LAD,
  "lcx": L.LCX,
  "rca": L.RCA,
  "aorta": L.AORTA,
  "aortic_valve": L.AORTIC_VALVE,
  "mitral_valve": L.MITRAL_VALVE,
}


@dataclasses.dataclass(frozen=True)
class LesionPlan:
  """A planned calcification; positions are relative (fraction along vessel, angle)."""

  site: str  # lm, lad, lcx, rca, aorta, aortic_valve, mitral_valve
  volume_mm3: float  # analytic volume
  density_hu: float  # material HU at 120 kVp
  t: float  # fraction of the vessel length (or ring position for valves)
  angle: float  # radial direction around the vessel axis, rad
  protrude: float  # fraction of the lesion's radial extent inside the lumen
  split: float  # >0: share of volume in a satellite blob

  @property
  def cls(self) -> int:
    return SITE_CLASS[self.site]


def sample_lesion_volumes(
  rng: np.random.Generator,
  n: int,
  median: float = LESION_MEDIAN_MM3,
  sigma: float = LESION_SIGMA,
  vmax: float = LESION_MAX_MM3,
) -> np.ndarray:
  """Draws `n` lesion volumes (mm^3) from the truncated log-normal."""
  v = median * np.exp(sigma * rng.standard_normal(n))
  bad = v > vmax
  while np.any(bad):
    v[bad] = median * np.exp(sigma * rng.standard_normal(int(bad.sum())))
    bad = v > vmax
  return v


def _lesion(rng, site, median=LESION_MEDIAN_MM3, sigma=LESION_SIGMA, vmax=LESION_MAX_MM3, t=None):
  vol = float(sample_lesion_volumes(rng, 1, median, sigma, vmax)[0])
  lo, hi = np.log(DENSITY_RANGE_120KVP)
  dens = float(np.exp(rng.uniform(lo, hi)))
  tt = float(rng.beta(1.4, 2.4)) if t is None else float(t)
  return LesionPlan(
    site=site,
    volume_mm3=vol,
    density_hu=dens,
    t=tt,
    angle=float(rng.uniform(0, 2 * np.pi)),
    protrude=float(rng.uniform(0.15, 0.45)),
    split=float(rng.uniform(0.2, 0.4)) if (vol > 15 and rng.random() < 0.5) else 0.0,
  )


def plan_calcium(
  rng: np.random.Generator, p_no_coronary_calcium: float = P_NO_CORONARY_CALCIUM
) -> list[LesionPlan]:
  """Draws the calcifications of one patient (no geometry needed: cheap).

  `p_no_coronary_calcium`: probability that the patient has no coronary calcium planned (the
  experiment's test roles use a lower one than training, so that their scans with calcium are
  enough to decide the gates)."""
  plans = []
  if rng.random() >= p_no_coronary_calcium:
    n = 1 + min(int(rng.poisson(rng.gamma(1.2, 3.5))), 19)
    for site in rng.choice(CORONARY_SITES, size=n, p=CORONARY_SITE_P):
      plans.append(_lesion(rng, str(site), t=rng.uniform(0.1, 0.9) if site == "lm" else None))
  if rng.random() < 0.5:
    for _ in range(1 + int(rng.poisson(1.5))):
      plans.append(
        _lesion(rng, "aorta", median=15.0, sigma=1.3, vmax=400.0, t=rng.uniform(0.1, 1.0))
      )
  if rng.random() < 0.18:
    for _ in range(1 + int(rng.poisson(0.8))):
      plans.append(
        _lesion(rng, "aortic_valve", median=10.0, sigma=1.2, vmax=300.0, t=rng.uniform())
      )
  if rng.random() < 0.12:
    for _ in range(1 + int(rng.poisson(0.8))):
      plans.append(
        _lesion(rng, "mitral_valve", median=15.0, sigma=1.2, vmax=400.0, t=rng.uniform())
      )
  return plans


def lesion_shapes(plan: LesionPlan, patient) -> list[Ellipsoid]:
  """Ellipsoids (main blob and optional satellite) of a planned lesion on `patient`."""
  v_main = plan.volume_mm3 * (1.0 - plan.split)
  parts = []
  if plan.site in CORONARY_SITES or plan.site == "aorta":
    if plan.site == "aorta":
      from cac_jax.phantoms.anatomy import Vessel

      vessel = Vessel("aorta", patient.aorta.points, patient.aorta.radii, L.AORTA)
      ratios, wall = np.array([2.5, 0.6, 2.0]), patient.aorta_wall_mm
    else:
      vessel = patient.coronaries[plan.site]
      ratios, wall = np.array([2.2, 1.0, 1.4]), 0.5
    p, tan, r = vessel.at(plan.t)
    f = frame_from(tan)
    n = np.cos(plan.angle) * f[:, 1] + np.sin(plan.angle) * f[:, 2]
    frame = np.stack([tan, n, np.cross(tan, n)], axis=1)
    for k, vol in enumerate([v_main, plan.volume_mm3 * plan.split]):
      if vol <= 0:
        continue
      c = (vol / (4.0 / 3.0 * np.pi * np.prod(ratios))) ** (1.0 / 3.0)
      semi = c * ratios
      if plan.site == "aorta":
        off = r + wall * 0.5 + semi[1] * (0.2 - plan.protrude)
      else:
        off = r + semi[1] * (1.0 - 2.0 * plan.protrude) + 0.25
      centre = p + n * off + tan * (k * 0.9 * (semi[0] + c * ratios[0] * 0.5))
      parts.append(Ellipsoid(centre, semi, frame))
    return parts
  if plan.site == "aortic_valve":
    a1 = patient.heart.frame[:, 0]
    f = frame_from(a1)
    r_root = patient.root.semi[0]
    ring_c = patient.root.centre + a1 * 0.45 * r_root
    radius = 0.7 * r_root
  else:
    ring_c, a1, radius = patient.mitral_ring
    f = frame_from(a1)
  ang = plan.t * 2 * np.pi
  n = np.cos(ang) * f[:, 1] + np.sin(ang) * f[:, 2]
  tan = unit(np.cross(a1, n))
  frame = np.stack([tan, n, a1], axis=1)
  ratios = np.array([2.5, 1.0, 1.2]) if plan.site == "mitral_valve" else np.array([1.6, 1.0, 1.3])
  for k, vol in enumerate([v_main, plan.volume_mm3 * plan.split]):
    if vol <= 0:
      continue
    c = (vol / (4.0 / 3.0 * np.pi * np.prod(ratios))) ** (1.0 / 3.0)
    ang_k = ang + k * 1.8 * c * ratios[0] / radius
    n_k = np.cos(ang_k) * f[:, 1] + np.sin(ang_k) * f[:, 2]
    t_k = unit(np.cross(a1, n_k))
    parts.append(Ellipsoid(ring_c + radius * n_k, c * ratios, np.stack([t_k, n_k, a1], axis=1)))
  return parts
