"""Scanner protocols, tissue HU by tube voltage, field of view, point-spread blur and noise.

Domains (real-world protocols):
  chest_ncct   low-dose chest CT, 120 kVp, 0.6-0.8 mm pixels, 3 mm slices every 1.5 mm,
               soft kernel (PSF FWHM 1.0-1.4 mm), noise SD 20-40 HU. Measured chest CT noise in
               the aorta (den Harder et al., Eur Radiol Exp 2018;2:30, Table 2): filtered back
               projection 37.5 HU at routine dose, 46.6 / 60.2 / 80.0 HU at 45 / 60 / 75 % less
               dose; hybrid iterative reconstruction 18-33 HU. Those are thin-slice figures;
               averaging to 3 mm slices divides uncorrelated noise by about sqrt(3) (22-46 HU
               for low-dose FBP, less with iterative reconstruction).
  cardiac_ncct calcium-scoring CT, 120 kVp, 0.3-0.5 mm pixels, 3 mm / 1.5 mm, noise SD 15-30 HU.
  ccta         contrast CT angiography, 70-120 kVp, 0.3-0.5 mm pixels, 0.6 mm slices every 0.4 mm,
               iodine 250-600 HU (brighter at low kVp), noise SD 20-45 HU.
Lower kVp raises iodine (x ~1.9 at 70 vs 120 kVp) and calcium/bone (x ~1.4) attenuation.
Noise is white Gaussian noise passed through the same Gaussian PSF as the anatomy (so it is
spatially correlated) and scaled to the drawn SD.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from cac_jax.phantoms.raster import Grid

DOMAINS = ("chest_ncct", "cardiac_ncct", "ccta")
CASE_DOMAIN = {"chest_ncct": "ncct", "cardiac_ncct": "ncct", "ccta": "ccta"}
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
MATRIX = 512
TRUNCATE = 3.0  # Gaussian kernels cut at 3 sigma
CCTA_KVP = (70, 80, 90, 100, 110, 120)
CCTA_KVP_P = (0.1, 0.2, 0.15, 0.3, 0.1, 0.15)
CORONARY_LUMEN = (0.88, 1.0)  # CCTA coronary lumen HU / aortic lumen HU (uniform draw per case)
NOISE_SD_HU = {"chest_ncct": (20.0, 40.0), "cardiac_ncct": (15.0, 30.0), "ccta": (20.0, 45.0)}


@dataclasses.dataclass(frozen=True)
class Protocol:
  domain: str
  kvp: int
  pixel_mm: float
  increment_mm: float
  thickness_mm: float
  psf_fwhm_mm: float  # in-plane
  noise_sd_hu: float
  iodine_hu: float  # left-heart / aortic lumen (0 for NCCT)
  right_heart_fraction: float  # right-heart enhancement relative to the left


def check_domain(domain: str) -> None:
  if domain not in DOMAINS:
    raise ValueError(f"unknown phantom domain {domain!r}; expected one of {DOMAINS}")


def calcium_factor(kvp: float) -> float:
  """Calcium / bone HU relative to 120 kVp (1.4 at 70 kVp)."""
  return 1.0 + 0.4 * (120.0 - kvp) / 50.0


def iodine_factor(kvp: float) -> float:
  """Iodine HU relative to 120 kVp (1.9 at 70 kVp)."""
  return 1.0 + 0.9 * (120.0 - kvp) / 50.0


def sample_protocol(domain: str, rng: np.random.Generator) -> Protocol:
  check_domain(domain)
  if domain == "chest_ncct":
    return Protocol(
      domain,
      120,
      rng.uniform(0.6, 0.8),
      1.5,
      3.0,
      rng.uniform(1.0, 1.4),
      rng.uniform(*NOISE_SD_HU[domain]),
      0.0,
      0.0,
    )
  if domain == "cardiac_ncct":
    return Protocol(
      domain,
      120,
      rng.uniform(0.3, 0.5),
      1.5,
      3.0,
      rng.uniform(0.7, 0.9),
      rng.uniform(*NOISE_SD_HU[domain]),
      0.0,
      0.0,
    )
  kvp = int(rng.choice(CCTA_KVP, p=CCTA_KVP_P))
  iodine = float(np.clip(rng.uniform(250.0, 330.0) * iodine_factor(kvp), 250.0, 600.0))
  return Protocol(
    domain,
    kvp,
    rng.uniform(0.3, 0.5),
    0.4,
    0.6,
    rng.uniform(0.6, 0.8),
    rng.uniform(*NOISE_SD_HU[domain]),
    iodine,
    rng.uniform(0.3, 0.75),
  )


def materials(protocol: Protocol, rng: np.random.Generator) -> dict:
  """Material -> HU for this scan (tissue HU jittered per patient)."""
  cf = calcium_factor(protocol.kvp)
  fat_f = 1.0 + 0.1 * (120.0 - protocol.kvp) / 50.0
  blood = rng.uniform(36.0, 46.0)
  m = {
    "air": -1000.0,
    "fat": rng.uniform(-110.0, -85.0) * fat_f,
    "muscle": rng.uniform(40.0, 55.0),
    "lung": rng.uniform(-870.0, -820.0),
    "soft_tissue": rng.uniform(45.0, 60.0),
    "cortical": rng.uniform(700.0, 1100.0) * cf,
    "trabecular": rng.uniform(150.0, 280.0) * cf,
    "disc": 80.0,
    "csf": 15.0,
    "cartilage": rng.uniform(90.0, 115.0),
    "myocardium": rng.uniform(32.0, 42.0),
    "blood_left": blood,
    "blood_right": blood,
    "vessel_wall": rng.uniform(38.0, 50.0),
    "coronary_lumen": blood,
    "calcium_factor": cf,
  }
  if protocol.iodine_hu > 0:
    io = protocol.iodine_hu
    m["blood_left"] = io
    m["coronary_lumen"] = io * rng.uniform(*CORONARY_LUMEN)
    m["blood_right"] = blood + protocol.right_heart_fraction * (io - blood)
    m["myocardium"] = m["myocardium"] + rng.uniform(0.12, 0.2) * (io - blood)
    m["vessel_wall"] = m["vessel_wall"] + rng.uniform(10.0, 30.0)
  return m


def domain_box(
  domain: str, protocol: Protocol, patient, centre_xy
) -> tuple[np.ndarray, np.ndarray]:
  """Full-resolution field of view (lo, hi) xyz mm of a domain."""
  if domain == "chest_ncct":
    half = MATRIX * protocol.pixel_mm / 2.0
    return (
      np.array([-half, -half, patient.z_range[0]]),
      np.array([half, half, patient.z_range[1]]),
    )
  half = MATRIX * protocol.pixel_mm / 2.0
  hlo, hhi = patient.heart_box(margin=5.0)
  z_lo, z_hi = hlo[2], patient.root_centre[2] + 35.0
  return (
    np.array([centre_xy[0] - half, centre_xy[1] - half, z_lo]),
    np.array([centre_xy[0] + half, centre_xy[1] + half, z_hi]),
  )


def make_grid(domain: str, protocol: Protocol, patient, config, rng: np.random.Generator) -> Grid:
  """Scan grid: domain-typical, or at config.data.working_spacing with a reduced field of view."""
  ph = config.phantoms
  centre_xy = patient.heart.centre[:2] + rng.uniform(-8.0, 8.0, 2)
  lo, hi = domain_box(domain, protocol, patient, centre_xy)
  if ph.at_working_spacing:
    spacing = tuple(float(s) for s in config.data.working_spacing)
  else:
    spacing = (protocol.increment_mm, protocol.pixel_mm, protocol.pixel_mm)
  s = float(ph.fov_scale)
  if s < 1.0:  # interpolate between a box around the heart and the domain's field of view
    hlo, hhi = patient.heart_box(margin=10.0)
    hlo, hhi = np.maximum(hlo, lo), np.minimum(hhi, hi)
    lo, hi = hlo + s * (lo - hlo), hhi + s * (hi - hhi)
  size = hi - lo
  shape = tuple(int(np.ceil(size[k] / spacing[ax])) + 1 for ax, k in enumerate((2, 1, 0)))
  return Grid(lo, spacing, shape)


def psf_sigma_vox(protocol: Protocol, grid: Grid) -> tuple[float, float, float]:
  """Gaussian PSF sigma (z, y, x) in voxels of `grid` (slice profile along z)."""
  s_xy = protocol.psf_fwhm_mm * FWHM_TO_SIGMA
  s_z = max(protocol.thickness_mm, 0.7) * FWHM_TO_SIGMA
  return (s_z / grid.spacing[0], s_xy / grid.spacing[1], s_xy / grid.spacing[2])


def _kernel_energy(sigma: float) -> float:
  """Sum of squared weights of scipy's normalised Gaussian kernel (same truncation)."""
  if sigma <= 0:
    return 1.0
  r = int(TRUNCATE * sigma + 0.5)
  x = np.arange(-r, r + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / sigma) ** 2)
  w /= w.sum()
  return float((w**2).sum())


def blur_and_noise(
  hu: np.ndarray, protocol: Protocol, grid: Grid, rng: np.random.Generator
) -> np.ndarray:
  """In place: hu <- PSF * (hu + white noise), noise scaled so its SD after the PSF is the protocol's."""
  sig = psf_sigma_vox(protocol, grid)
  gain = np.sqrt(np.prod([_kernel_energy(s) for s in sig]))
  noise = rng.standard_normal(hu.shape, dtype=np.float32)
  noise *= np.float32(protocol.noise_sd_hu / gain)
  hu += noise
  del noise
  ndimage.gaussian_filter(hu, sig, output=hu, mode="nearest", truncate=TRUNCATE)
  return hu


def aorta_threshold(
  hu: np.ndarray, grid: Grid, centre_xyz, roi_size_mm
) -> tuple[float, float, float]:
  """(mean + 3 SD, mean, SD) of a box ROI (z, y, x) mm centred at `centre_xyz` (ascending aorta)."""
  half = np.asarray(roi_size_mm, dtype=np.float64)[::-1] / 2.0  # -> x, y, z
  c = np.asarray(centre_xyz, dtype=np.float64)
  bb = grid.bbox(c - half, c + half)
  if bb is None:
    raise ValueError("aorta ROI lies outside the scan")
  v = hu[bb].astype(np.float64)
  return float(v.mean() + 3.0 * v.std()), float(v.mean()), float(v.std())
