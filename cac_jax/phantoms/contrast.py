"""CCTA-only contrast heterogeneity: bright non-calcium structures above the aortic-ROI threshold.

Real CCTA is not a uniformly enhanced left heart. Three effects put non-calcium voxels above the
scan's calcium threshold (mean + 3 SD of an ascending-aorta ROI) near the heart, and an
NCCT-trained detector mistakes them for calcium:

  venous inflow   undiluted contrast (800-2000 HU) in the brachiocephalic vein and superior vena
                  cava on the injection side, streaming/layering with saline and unopacified
                  blood; below a mixing level 14-34 mm above the caval orifice the column turns
                  into swirling mixed blood (0.6-1.15 x the aortic HU) that flows on as a plume
                  into the right atrium, decaying with distance from the orifice (partly enhanced
                  right heart). Per scan one of three bolus phases: "dense" (column of undiluted
                  contrast, 30 %), "streaming" (dense streams in diluted blood, 35 %), "flushed"
                  (saline chaser: SVC below right-heart blood, 35 %).
  inhomogeneous   smooth hot spots in the left ventricle / left atrium blood pool (+5..25 % of
  enhancement     the aortic lumen HU at their peak); coronary lumen falling along the artery
                  (transluminal attenuation gradient, CORONARY_FALLOFF).
  streaks         beam-hardening / photon-starvation streaks radiating in-plane from the dense
                  SVC and from large dense calcifications: thin bright and dark lines
                  (+-50..150 HU near the source, decaying with distance, flickering slice to slice).

All are painted on the canvas before the point-spread blur and noise, so they look acquired. The
ascending aorta itself is left homogeneous (the threshold ROI stays a clean reference; streaks
may cross it, as in real scans). Everything here is label 0: not calcium.

Randomness: one parameter draw per case from its own stream (`generate` passes
`default_rng([0xCAC, 4, seed, domain])`), made before any grid-dependent work; smooth random
fields use child seeds, so the features sit at the same physical place at any grid spacing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from cac_jax.phantoms import raster
from cac_jax.phantoms.raster import Tube, unit

PHASES = ("dense", "streaming", "flushed")
PHASE_P = (0.3, 0.35, 0.35)
DENSE_HU = (800.0, 2000.0)
STREAK_HU = (50.0, 150.0)
# Brighter coronary segments (bolus inhomogeneity): none by default. Such segments (1-3 per
# artery at +15..45 % above the aortic lumen) are calcium-like to any detector (a network
# trained with the CCTA labels could not learn them either), and coronary lumen brighter than
# the aortic root is not what CCTA shows (attenuation falls along the artery: CORONARY_FALLOFF).
# A knob for trials (docs/results.md).
CORONARY_BUMPS_P = (1.0, 0.0, 0.0, 0.0)  # P(0, 1, 2, 3 brighter segments) per coronary artery
CORONARY_GAIN = (0.15, 0.45)  # peak HU of a bright segment: (1 + gain) x aortic lumen HU
# Transluminal attenuation gradient: the lumen HU falls linearly with the distance from the
# ostium along the artery (through the left main for LAD and LCX), by `fall` x the drawn coronary
# lumen HU per FALLOFF_LENGTH_MM. Normal coronaries lose about 10-15 HU per 10 mm (TAG;
# Steigner et al., Int J Cardiovasc Imaging 2010; Choi et al., JACC Cardiovasc Imaging 2011),
# i.e. 100-200 HU (about 20-40 %) over 120 mm at 400-500 HU.
CORONARY_FALLOFF = (0.2, 0.4)
FALLOFF_LENGTH_MM = 120.0


@dataclasses.dataclass
class Bump:
  """A Gaussian hot spot: centre (x, y, z) mm, sigma mm, peak gain (fraction of the aorta HU)."""

  centre: np.ndarray
  sigma: float
  gain: float


@dataclasses.dataclass
class StreakSource:
  """In-plane streaks from a dense object: centre (x, y) per z via `path` (K, 3) points."""

  path: np.ndarray  # (K, 3) mm; the source centre at a slice is interpolated in z
  z_range: tuple  # (z0, z1) mm where the source emits
  radius: float  # mm, streaks start outside this radius
  angles: np.ndarray  # (L,) rad
  amps: np.ndarray  # (L,) HU, signed (bright / dark)
  decay_mm: float
  width_mm: float
  seed: int


@dataclasses.dataclass
class ContrastFeatures:
  """One CCTA case's contrast heterogeneity (all mm, LPS; HU)."""

  phase: str
  injection_side: str  # "right" or "left" arm
  dense_hu: float  # undiluted contrast HU
  column: float  # SVC mean contrast fraction (0: venous blood only)
  mixing: float  # amplitude of streaming/layering in the SVC
  layering: float  # gravity-dependent (posterior) excess fraction
  junction: float  # mixed HU near the cavo-atrial junction / aorta lumen HU
  swirl: float  # relative amplitude of the swirls of the mixed blood
  mix_start_mm: float  # height above the caval orifice where the dilution starts
  mix_mm: float  # height over which the column dilutes to its junction fraction
  svc: Tube
  bcv: Tube  # brachiocephalic vein of the injection side (usually above the FOV)
  orifice: np.ndarray  # SVC -> right-atrium inflow point
  plume_mm: float  # e-folding distance of the mixing plume in the right heart
  plume_gain: float
  flushed_factor: float  # SVC HU relative to right-heart blood in the flushed phase
  ventricle_bumps: list  # Bump in the left ventricle / atrium blood pool
  coronary_bumps: dict  # vessel name -> list of Bump on its centreline
  streaks: list  # StreakSource
  seeds: tuple  # child seeds of the smooth random fields (svc, plume)
  coronary_falloff: dict = dataclasses.field(
    default_factory=dict
  )  # name -> (centreline (n, 3), loss (n,))


def _ellipsoid_point(rng, e: raster.Ellipsoid, scale: float) -> np.ndarray:
  """A uniform point inside `scale` x the ellipsoid."""
  while True:
    q = rng.uniform(-1.0, 1.0, 3)
    if q @ q <= 1.0:
      break
  f = np.eye(3) if e.frame is None else e.frame
  return e.centre + f @ (q * e.semi * scale)


def _ray_to_surface(e: raster.Ellipsoid, direction) -> float:
  """Distance from the ellipsoid's centre to its surface along a unit direction."""
  f = np.eye(3) if e.frame is None else e.frame
  q = f.T @ unit(direction)
  return float(1.0 / np.sqrt(((q / e.semi) ** 2).sum()))


def _aorta_at_z(patient, z: float):
  """(x, y, radius) of the ascending aorta at height z (clamped to its ascending part)."""
  pts, r = patient.aorta.points, patient.aorta.radii
  k = int(np.argmax(pts[:, 2])) + 1  # ascending limb: up to the top of the arch
  zs = pts[:k, 2]
  order = np.argsort(zs)
  zz = float(np.clip(z, zs.min(), zs.max()))
  return (
    float(np.interp(zz, zs[order], pts[:k, 0][order])),
    float(np.interp(zz, zs[order], pts[:k, 1][order])),
    float(np.interp(zz, zs[order], r[:k][order])),
  )


def _venous_geometry(rng, patient):
  """SVC (right of and behind the ascending aorta, into the right atrium) and brachiocephalic veins."""
  ra = patient.chambers["ra"]
  r_svc = rng.uniform(7.0, 10.0)
  side = unit(np.array([-0.85, 0.5 + rng.uniform(-0.15, 0.15)]))
  root_z = patient.root_centre[2]
  wall = patient.aorta_wall_mm

  def column(z):
    ax, ay, ar = _aorta_at_z(patient, z)
    off = (
      max(ar, patient.root.semi[0] if z < root_z + patient.root.semi[2] else 0.0)
      + wall
      + 1.5
      + r_svc
    )
    return np.array([ax + off * side[0], ay + off * side[1], z])

  top_ra = ra.centre + _ray_to_surface(ra, [0.0, 0.0, 1.0]) * np.array([0.0, 0.0, 1.0])
  z1 = max(top_ra[2] + 12.0, root_z + 4.0)
  c1 = column(z1)
  d = unit(c1 - ra.centre)
  junction = ra.centre + _ray_to_surface(ra, d) * d
  orifice = ra.centre + 0.75 * _ray_to_surface(ra, d) * d
  z_top = root_z + rng.uniform(60.0, 75.0)
  ctrl = [
    orifice,
    junction,
    c1,
    column(z1 + 18.0),
    column(root_z + 40.0),
    column(z_top) + [-3.0, 0.0, 0.0],
  ]
  zs = [p[2] for p in ctrl]
  if np.any(np.diff(zs[1:]) <= 0):  # keep the column monotone in z above the junction
    ctrl = ctrl[:2] + sorted(ctrl[2:], key=lambda p: p[2])
  from cac_jax.phantoms.anatomy import _smooth  # local import: anatomy imports nothing from here

  pts, t = _smooth(ctrl, 2.0)
  radii = np.interp(t, [0.0, 0.08, 1.0], [r_svc * 0.9, r_svc, r_svc * 0.95])
  svc = Tube(pts, radii)
  top = pts[-1]
  if rng.random() < 0.85:  # right arm: right brachiocephalic vein, up and to the right
    bcv_pts = [top, top + [-12.0, 2.0, 22.0], top + [-28.0, 4.0, 40.0]]
    side_name = "right"
  else:  # left arm: left brachiocephalic vein crossing in front of the arch
    y_ant = patient.root_centre[1] - 18.0
    bcv_pts = [
      top,
      [top[0] + 20.0, y_ant, top[2] + 8.0],
      [top[0] + 60.0, y_ant + 2.0, top[2] + 14.0],
      [top[0] + 85.0, y_ant + 6.0, top[2] + 22.0],
    ]
    side_name = "left"
  bpts, _ = _smooth(bcv_pts, 2.0)
  bcv = Tube(bpts, rng.uniform(5.5, 7.5))
  return svc, bcv, orifice, side_name


def sample_features(
  rng: np.random.Generator, patient, protocol, plans, materials: dict
) -> ContrastFeatures:
  """Draws one CCTA case's contrast heterogeneity (cheap: no grid work)."""
  from cac_jax.phantoms import lesions

  svc, bcv, orifice, side = _venous_geometry(rng, patient)
  phase = str(rng.choice(PHASES, p=PHASE_P))
  # Undiluted contrast: log-uniform 800..2000 HU, brighter at low kVp.
  kv = (120.0 - protocol.kvp) / 50.0
  u = float(np.clip(rng.uniform(0.0, 1.0) * 0.75 + 0.25 * kv, 0.0, 1.0))
  dense = float(DENSE_HU[0] * (DENSE_HU[1] / DENSE_HU[0]) ** u)
  if phase == "dense":
    column, mixing, layering = (
      rng.uniform(0.75, 1.0),
      rng.uniform(0.15, 0.3),
      rng.uniform(0.0, 0.15),
    )
    junction = rng.uniform(0.7, 1.15)
  elif phase == "streaming":
    column, mixing, layering = rng.uniform(0.3, 0.55), rng.uniform(0.3, 0.5), rng.uniform(0.1, 0.35)
    junction = rng.uniform(0.6, 1.05)
  else:
    column, mixing, layering, junction = 0.0, 0.0, 0.0, 0.0
  swirl = rng.uniform(0.1, 0.3)
  mix_mm = rng.uniform(10.0, 25.0)
  mix_start_mm = rng.uniform(14.0, 34.0)
  plume_mm = rng.uniform(6.0, 14.0)
  plume_gain = rng.uniform(0.6, 1.0)
  flushed = rng.uniform(0.45, 0.9)

  # Left-heart hot spots (mixing of pulmonary-venous inflow) and brighter coronary segments.
  ch = patient.chambers
  vbumps = []
  for name, n_max, scale in (("lv", 3, 0.75), ("la", 2, 0.7)):
    for _ in range(int(rng.integers(0, n_max + 1))):
      vbumps.append(
        Bump(_ellipsoid_point(rng, ch[name], scale), rng.uniform(1.5, 3.5), rng.uniform(0.05, 0.25))
      )
  cbumps = {}
  for name, v in patient.coronaries.items():
    bl = []
    for _ in range(int(rng.choice(len(CORONARY_BUMPS_P), p=CORONARY_BUMPS_P))):
      p, _, _ = v.at(rng.uniform(0.0, 0.8))
      bl.append(Bump(p, rng.uniform(2.5, 7.0), rng.uniform(*CORONARY_GAIN)))
    cbumps[name] = bl

  # Streak sources: the opacified SVC, and large dense calcifications.
  streaks = []
  if phase != "flushed":
    strength = float(np.clip(column * dense / 1000.0, 0.4, 1.0))
    n = int(rng.integers(4, 9))
    ang = rng.uniform(0.0, np.pi, n)
    amps = rng.uniform(*STREAK_HU, n) * rng.choice([-1.0, 1.0], n, p=[0.45, 0.55]) * strength
    pts = svc.points
    streaks.append(
      StreakSource(
        pts,
        (float(orifice[2]), float(pts[:, 2].max())),
        float(svc.radii.max()),
        ang,
        amps,
        rng.uniform(18.0, 35.0),
        rng.uniform(0.5, 0.9),
        int(rng.integers(2**31)),
      )
    )
  cf = materials["calcium_factor"]
  for plan in plans:
    mass = plan.volume_mm3 * plan.density_hu * cf
    if plan.volume_mm3 < 30.0 or plan.density_hu * cf < 450.0:
      continue
    parts = lesions.lesion_shapes(plan, patient)
    c = parts[0].centre
    size = float(parts[0].semi.max())
    strength = min(1.0, np.sqrt(mass / 150_000.0))
    n = int(rng.integers(2, 6))
    amps = rng.uniform(*STREAK_HU, n) * rng.choice([-1.0, 1.0], n) * strength
    streaks.append(
      StreakSource(
        np.array([c, c + [0.0, 0.0, 1.0]]),
        (c[2] - size, c[2] + size),
        size,
        rng.uniform(0.0, np.pi, n),
        amps,
        rng.uniform(8.0, 16.0),
        rng.uniform(0.4, 0.7),
        int(rng.integers(2**31)),
      )
    )
  seeds = tuple(int(s) for s in rng.integers(2**31, size=2))
  falloff = _falloff(patient, float(rng.uniform(*CORONARY_FALLOFF)))
  return ContrastFeatures(
    phase=phase,
    injection_side=side,
    dense_hu=dense,
    column=float(column),
    mixing=float(mixing),
    layering=float(layering),
    junction=float(junction),
    swirl=float(swirl),
    mix_start_mm=float(mix_start_mm),
    mix_mm=float(mix_mm),
    svc=svc,
    bcv=bcv,
    orifice=orifice,
    plume_mm=float(plume_mm),
    plume_gain=float(plume_gain),
    flushed_factor=float(flushed),
    ventricle_bumps=vbumps,
    coronary_bumps=cbumps,
    streaks=streaks,
    seeds=seeds,
    coronary_falloff=falloff,
  )


def _arc_mm(points: np.ndarray) -> np.ndarray:
  return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def _falloff(patient, fall: float) -> dict:
  """{vessel: (centreline xyz (n, 3) mm, fraction of the lumen HU lost at each point (n,))}."""
  lm = patient.coronaries.get("lm")
  lm_len = 0.0 if lm is None else lm.length()
  out = {}
  for name, v in patient.coronaries.items():
    start = lm_len if name in ("lad", "lcx") else 0.0
    out[name] = (v.points, fall * (start + _arc_mm(v.points)) / FALLOFF_LENGTH_MM)
  return out


def smooth_noise(
  seed: int, grid: raster.Grid, bb, corr_mm: float, coarse_mm: float = 2.0
) -> np.ndarray:
  """Unit-SD smooth random field on bbox `bb`, anchored in physical space (spacing-independent).

  White noise on a `coarse_mm` lattice aligned to multiples of coarse_mm, Gaussian-smoothed to
  `corr_mm`, trilinearly interpolated at the voxel centres.
  """
  Z, Y, X = grid.coords(bb)
  axes = [Z.ravel(), Y.ravel(), X.ravel()]
  lo = [np.floor(a.min() / coarse_mm) - 2 for a in axes]
  n = [int(np.ceil(a.max() / coarse_mm) - l) + 3 for a, l in zip(axes, lo)]
  # Seed from (seed, lattice origin) so overlapping boxes of the same seed agree approximately.
  rng = np.random.default_rng([seed] + [int(v) + 10_000 for v in lo])
  w = ndimage.gaussian_filter(
    rng.standard_normal(n).astype(np.float32), corr_mm / coarse_mm, mode="nearest"
  )
  w /= max(float(w.std()), 1e-6)
  idx = np.meshgrid(
    *[(a / coarse_mm - l).astype(np.float32) for a, l in zip(axes, lo)], indexing="ij"
  )
  return ndimage.map_coordinates(w, idx, order=1, mode="nearest")


def _tube_sdf(grid, tube: Tube, bb):
  """Dense signed distance (mm) of a tube on bbox `bb` (inf where farther than the tube radius)."""
  buf = np.full(tuple(s.stop - s.start for s in bb), np.inf, dtype=np.float32)
  for sbb, sd in tube.segments(grid, pad=1.0):
    inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sbb, bb))
    if any(s.stop <= s.start for s in inter):
      continue
    src = sd[tuple(slice(i.start - a.start, i.stop - a.start) for i, a in zip(inter, sbb))]
    dst = buf[tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inter, bb))]
    np.minimum(dst, src, out=dst)
  return buf


def paint_venous(canvas: raster.Canvas, f: ContrastFeatures, mat: dict, tissue_id: int) -> None:
  """SVC / brachiocephalic vein lumen and the right-atrial mixing plume (before coronaries)."""
  grid = canvas.grid
  base = mat["blood_right"]
  dense = f.dense_hu
  io = mat["blood_left"]
  aorta = canvas.masks["aorta"]
  junction_hu = max(f.junction * io, base)
  for k, tube in enumerate((f.svc, f.bcv)):
    bb = grid.bbox(*tube.bounds(pad=1.0))
    if bb is None:
      continue
    sd = _tube_sdf(grid, tube, bb)
    hu = canvas.hu[bb]
    inside = (sd < 0.0) & ~aorta[bb] & (hu != np.float32(io))
    if not inside.any():
      continue
    if f.phase == "flushed":
      val = np.full(hu.shape, base * f.flushed_factor, np.float32)
    else:
      n = smooth_noise(f.seeds[0] + k, grid, bb, corr_mm=3.5)
      Z, Y, _ = grid.coords(bb)
      # Upstream: the contrast column, streaming with unopacified blood and layering: dense
      # contrast sinks posteriorly (+y) in the supine patient.
      ymid = float(np.mean(tube.points[:, 1]))
      lay = f.layering * np.clip((Y - ymid) / float(tube.radii.max()), -1.0, 1.0)
      up = base + np.clip(f.column + f.mixing * n + lay, 0.0, 1.0) * (dense - base)
      # Downstream of the mixing level (azygos and unopacified streams joining): swirling mixed blood.
      low = junction_hu * (1.0 + f.swirl * n)
      h = np.clip((Z - np.float32(f.orifice[2] + f.mix_start_mm)) / np.float32(f.mix_mm), 0.0, 1.0)
      val = (low + h * h * (3.0 - 2.0 * h) * (up - low)).astype(np.float32)
    np.copyto(hu, val, where=inside)
    if canvas.tissue is not None:
      np.copyto(canvas.tissue[bb], np.uint8(tissue_id), where=inside)
  if f.phase == "flushed":
    return
  # Mixing plume: right-heart blood near the caval orifice, decaying with distance, swirling.
  reach = 3.0 * f.plume_mm
  bb = grid.bbox(f.orifice - reach, f.orifice + reach)
  if bb is None:
    return
  hu = canvas.hu[bb]
  rb = hu == np.float32(base)
  if not rb.any():
    return
  Z, Y, X = grid.coords(bb)
  o = f.orifice.astype(np.float32)
  d = np.sqrt((X - o[0]) ** 2 + (Y - o[1]) ** 2 + (Z - o[2]) ** 2)
  n = smooth_noise(f.seeds[1], grid, bb, corr_mm=3.0)
  w = f.plume_gain * np.exp(-d / f.plume_mm)
  val = (base + w * (junction_hu * (1.0 + f.swirl * n) - base)).astype(np.float32)
  np.copyto(hu, val, where=rb)
  if canvas.tissue is not None:
    np.copyto(canvas.tissue[bb], np.uint8(tissue_id), where=rb & (w >= 0.15))


def _bump_sum(bumps, X, Y, Z):
  g = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), np.float32)
  for b in bumps:
    c = b.centre.astype(np.float32)
    r2 = (X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2
    g += np.float32(b.gain) * np.exp(-0.5 * r2 / np.float32(b.sigma**2))
  return g


def enhance_ventricles(canvas: raster.Canvas, f: ContrastFeatures, mat: dict) -> None:
  """Hot spots in the left-heart blood pool (not the aorta): +gain x aorta HU at their peaks."""
  grid = canvas.grid
  io = np.float32(mat["blood_left"])
  for b in f.ventricle_bumps:
    bb = grid.bbox(b.centre - 3.0 * b.sigma, b.centre + 3.0 * b.sigma)
    if bb is None:
      continue
    hu = canvas.hu[bb]
    m = (hu == io) & ~canvas.masks["aorta"][bb]
    if not m.any():
      continue
    Z, Y, X = grid.coords(bb)
    g = _bump_sum([b], X, Y, Z)
    hu[m] += (io * g)[m]


def enhance_coronaries(canvas: raster.Canvas, f: ContrastFeatures, lumens: dict, mat: dict) -> None:
  """Brighter coronary segments: lumen fraction x (aorta HU x (1 + gain) - lumen HU) x bump."""
  grid = canvas.grid
  io, lum = mat["blood_left"], mat["coronary_lumen"]
  hu = canvas.hu.reshape(-1)
  for name, bumps in f.coronary_bumps.items():
    if (not bumps and name not in f.coronary_falloff) or name not in lumens:
      continue
    idx, frac = lumens[name]
    if idx.size == 0:
      continue
    k, j, i = np.unravel_index(idx, grid.shape)
    X = (grid.origin[0] + grid.spacing[2] * i).astype(np.float32)
    Y = (grid.origin[1] + grid.spacing[1] * j).astype(np.float32)
    Z = (grid.origin[2] + grid.spacing[0] * k).astype(np.float32)
    w = np.zeros(idx.shape, np.float32)
    for b in bumps:  # peak HU io * (1 + gain) at the bump centre
      w += np.float32((io * (1.0 + b.gain) - lum) / io) * _bump_sum(
        [dataclasses.replace(b, gain=1.0)], X, Y, Z
      )
    if name in f.coronary_falloff:  # lumen HU x (1 - loss at the nearest centreline point)
      pts, loss = f.coronary_falloff[name]
      nearest = cKDTree(pts).query(np.stack([X, Y, Z], axis=1))[1]
      w -= np.float32(lum / io) * loss[nearest].astype(np.float32)
    hu[idx] += frac * np.float32(io) * w


def add_streaks(
  canvas: raster.Canvas, f: ContrastFeatures, record: np.ndarray | None = None
) -> None:
  """Adds in-plane streaks to canvas.hu (and to `record`, a full-grid float32 array, if given).

  Each source emits lines through its centre at fixed angles (same projections in every slice),
  with a thin Gaussian cross-profile, exponential decay along the line, zero inside the source,
  an amplitude that flickers slice to slice and a sub-degree angular jitter.
  """
  grid = canvas.grid
  for s in f.streaks:
    reach = 3.0 * s.decay_mm + s.radius
    pz = s.path[:, 2]
    order = np.argsort(pz)
    z0, z1 = s.z_range
    cx, cy = (
      np.interp((z0 + z1) / 2, pz[order], s.path[order, 0]),
      np.interp((z0 + z1) / 2, pz[order], s.path[order, 1]),
    )
    xs = s.path[(pz >= z0) & (pz <= z1), 0] if np.any((pz >= z0) & (pz <= z1)) else np.array([cx])
    ys = s.path[(pz >= z0) & (pz <= z1), 1] if np.any((pz >= z0) & (pz <= z1)) else np.array([cy])
    lo = np.array([min(xs.min(), cx) - reach, min(ys.min(), cy) - reach, z0])
    hi = np.array([max(xs.max(), cx) + reach, max(ys.max(), cy) + reach, z1])
    bb = grid.bbox(lo, hi)
    if bb is None:
      continue
    Z, Y, X = grid.coords(bb)
    zc = Z[:, 0, 0].astype(np.float64)
    x0 = np.interp(zc, pz[order], s.path[order, 0]).astype(np.float32)[:, None, None]
    y0 = np.interp(zc, pz[order], s.path[order, 1]).astype(np.float32)[:, None, None]
    rng = np.random.default_rng([s.seed, int(round(zc[0] * 10)) + 100_000, len(zc)])
    dx, dy = X - x0, Y - y0
    r = np.sqrt(dx * dx + dy * dy)
    envelope = np.exp(-r / np.float32(s.decay_mm)) * np.clip((r - s.radius) / 2.0, 0.0, 1.0)
    w = max(s.width_mm, 0.45 * min(grid.spacing[1:]))
    acc = np.zeros(np.broadcast_shapes(Z.shape, Y.shape, X.shape), np.float32)
    for theta, amp in zip(s.angles, s.amps):
      # Slice-to-slice flicker (projection noise) and a small angular wobble.
      flick = np.clip(1.0 + 0.6 * rng.standard_normal(len(zc)), 0.0, 2.0).astype(np.float32)[
        :, None, None
      ]
      th = (theta + np.radians(0.6) * rng.standard_normal(len(zc))).astype(np.float32)[
        :, None, None
      ]
      v = -dx * np.sin(th) + dy * np.cos(th)
      acc += np.float32(amp) * flick * np.exp(-0.5 * (v / np.float32(w)) ** 2)
    acc *= envelope
    canvas.hu[bb] += acc
    if record is not None:
      record[bb] += acc
