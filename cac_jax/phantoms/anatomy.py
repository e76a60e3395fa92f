"""Random thoracic anatomy: body, lungs, bones, heart with chambers, aorta and coronary trees.

All geometry is in LPS millimetres (x patient left, y posterior, z superior). The heart is an
ellipsoid whose long axis points from the base (posterior, right, superior) to the apex
(anterior, left, inferior); chambers are ellipsoids inside it; coronaries run on its surface in
the atrioventricular (LCX, RCA) and anterior interventricular (LAD) grooves.

The coronary tree varies as patients' do (`sample_coronary_variant`):
- Dominance, the artery that gives the posterior descending artery (PDA): right 84.2 %, left
  10.9 %, co-dominant 4.8 % of 12,558 angiograms (Tehran Heart Center, Clin Cardiol 2008,
  PMID 18698656; CCTA registries report right 89-91 %: CONFIRM, n = 6,382, Eur Heart J
  Cardiovasc Imaging; an MSCT series of 1,500, Surg Radiol Anat 2023: 89.3 / 5.2 / 5.5 %).
  Right: the RCA runs round the right AV groove to the crux and down the posterior
  interventricular groove; left: the RCA ends at the acute margin and the LCX runs on round
  the left AV groove to the crux and gives the PDA; co-dominant: both reach the crux, the RCA
  with a short PDA. A lesion takes the class of the vessel it sits on (a PDA lesion of a
  left-dominant heart is LCX), never of its position in the chest.
- Left main length: short (< 6 mm) 10.7 %, medium (6-15 mm) 80.4 %, long (> 15 mm) 8.9 % in
  that MSCT series of 1,500 (mid-LM diameter 4.69 +- 0.74 mm).
- LCX length beyond its origin and LAD extent towards the apex, ostium heights on the sinuses
  (a few mm, approximately) and the heart's long axis (about +-10 degrees around its mean
  direction, approximately: horizontal to vertical hearts).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import interpolate

from cac_jax.phantoms import raster
from cac_jax.phantoms.raster import Ellipsoid, Tube, ZCylinder, frame_from, unit

# Tissue ids of the optional tissue map (tests measure HU per tissue with it).
TISSUES = (
  "air",
  "fat",
  "muscle",
  "lung",
  "cortical_bone",
  "trabecular_bone",
  "soft_tissue",
  "myocardium",
  "blood_left",
  "blood_right",
  "aorta_lumen",
  "vessel_wall",
  "coronary_lumen",
  "calcium",
  "cartilage",
  "venous_contrast",
)
TISSUE = {name: i for i, name in enumerate(TISSUES)}


@dataclasses.dataclass
class Vessel:
  """A coronary artery: centreline (N, 3) mm, lumen radius (N,) mm, network class."""

  name: str
  points: np.ndarray
  radii: np.ndarray
  cls: int

  def length(self) -> float:
    return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())

  def at(self, t: float):
    """(position, unit tangent, radius) at fraction t of the arclength."""
    seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    u = float(np.clip(t, 0.0, 1.0)) * s[-1]
    i = int(np.clip(np.searchsorted(s, u) - 1, 0, len(seg) - 1))
    w = (u - s[i]) / max(seg[i], 1e-9)
    p = self.points[i] * (1 - w) + self.points[i + 1] * w
    r = self.radii[i] * (1 - w) + self.radii[i + 1] * w
    return p, unit(self.points[i + 1] - self.points[i]), float(r)


@dataclasses.dataclass
class Patient:
  """Sampled anatomy (all mm, LPS)."""

  body: tuple  # (ax, ay) semi-axes of the body ellipse
  fat_mm: float
  muscle_mm: float
  z_range: tuple  # (z_lo, z_hi) of the chest (lung apex to upper abdomen)
  heart: Ellipsoid  # epicardial surface
  heart_fat_mm: float
  chambers: dict  # name -> Ellipsoid (rv, ra, la, lv_myo, lv)
  root: Ellipsoid  # aortic sinus
  root_centre: np.ndarray
  aorta: Tube  # ascending, arch, descending (lumen radii)
  aorta_wall_mm: float
  pulmonary: Tube
  coronaries: dict  # name -> Vessel (lm, lad, lcx, rca)
  dominance: str  # "right", "left" or "co" (DOMINANCE)
  mitral_ring: tuple  # (centre, normal, radius)
  spine_y: float
  ribs: list  # list of (Tube bone, Tube cartilage)
  sternum: tuple  # (cx, cy, ax, ay, z0, z1)
  lm_ostium: np.ndarray

  def heart_box(self, margin: float = 10.0):
    lo, hi = self.heart.bounds(pad=self.heart_fat_mm + margin)
    rlo, rhi = self.root.bounds(pad=margin)
    return np.minimum(lo, rlo), np.maximum(hi, rhi)


# Dominance and its frequency (see the module docstring).
DOMINANCE = {"right": 0.842, "left": 0.109, "co": 0.049}
# Left main length classes (mm) and their frequencies (see the module docstring).
LM_LENGTH_CLASSES = (((3.0, 6.0), 0.107), ((6.0, 15.0), 0.804), ((15.0, 22.0), 0.089))


@dataclasses.dataclass(frozen=True)
class CoronaryVariant:
  """One patient's coronary variant: dominance, LM length, LCX/PDA extent, offsets, axis jitter.

  Dominance, LM length (mm), LCX and PDA extent, ostium height offsets (mm) and the jitter of
  the heart's long axis (unit-vector components)."""

  dominance: str
  lm_length_mm: float
  lcx_points: int  # left-AV-groove control points the LCX follows (of 14; left/co: all)
  pda_u: float  # how far the PDA runs towards the apex (heart long-axis fraction)
  lm_height_mm: float
  rca_height_mm: float
  axis_sd: float


def sample_coronary_variant(rng: np.random.Generator) -> CoronaryVariant:
  """Draws a coronary variant by the published frequencies (module docstring)."""
  names = list(DOMINANCE)
  dominance = str(rng.choice(names, p=[DOMINANCE[n] for n in names]))
  k = int(rng.choice(len(LM_LENGTH_CLASSES), p=[p for _, p in LM_LENGTH_CLASSES]))
  lm = float(rng.uniform(*LM_LENGTH_CLASSES[k][0]))
  return CoronaryVariant(
    dominance=dominance,
    lm_length_mm=lm,
    lcx_points=14 if dominance != "right" else int(rng.integers(8, 15)),
    pda_u=float(rng.uniform(0.3, 0.6) if dominance != "co" else rng.uniform(-0.2, 0.1)),
    lm_height_mm=float(rng.uniform(-2.0, 2.0)),
    rca_height_mm=float(rng.uniform(-4.0, 4.0)),
    axis_sd=0.12,
  )


def _smooth(ctrl, step: float):
  """Resample a smooth spline through control points (K, 3) at ~`step` mm; returns (N, 3), s."""
  ctrl = np.asarray(ctrl, dtype=np.float64)
  s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))])
  k = min(3, len(ctrl) - 1)
  spl = interpolate.make_interp_spline(s, ctrl, k=k)
  n = max(int(np.ceil(s[-1] / step)) + 1, 2)
  ss = np.linspace(0.0, s[-1], n)
  return spl(ss), ss / s[-1]


def sample_patient(rng: np.random.Generator) -> Patient:
  """Draws one patient's anatomy."""
  ax, ay = rng.uniform(140.0, 168.0), rng.uniform(100.0, 122.0)
  fat, muscle = rng.uniform(8.0, 22.0), rng.uniform(8.0, 13.0)
  centre = np.array([rng.uniform(15.0, 28.0), -ay * 0.18 + rng.uniform(-6.0, 6.0), 0.0])
  variant = sample_coronary_variant(np.random.default_rng(rng.integers(2**63)))
  a1 = unit(np.array([0.55, -0.5, -0.65]) + rng.normal(0.0, variant.axis_sd, 3))
  A, B = rng.uniform(56.0, 64.0), rng.uniform(42.0, 48.0)
  frame = frame_from(a1)

  def perp(v):
    v = np.asarray(v, dtype=np.float64)
    return unit(v - (v @ a1) * a1)

  heart = Ellipsoid(centre, (A, B, B), frame)
  s = A / 60.0
  lv_c = centre + 10 * s * a1 + 12 * perp([1.0, 0.5, 0.0])
  chambers = {
    "rv": Ellipsoid(centre + 2 * s * a1 + 21 * perp([-0.5, -1.0, 0.0]), (36 * s, 21, 21), frame),
    "ra": Ellipsoid(centre - 30 * s * a1 + 24 * perp([-1.0, 0.1, 0.0]), (23, 21, 21), frame),
    "la": Ellipsoid(centre - 38 * s * a1 + 16 * perp([0.3, 1.0, 0.0]), (19, 21, 21), frame),
    "lv_myo": Ellipsoid(lv_c, (44 * s, 27, 27), frame),
    "lv": Ellipsoid(lv_c, (35 * s, 17.5, 17.5), frame),
  }
  mitral = (lv_c - 33 * s * a1, a1, 13.0)
  root_c = centre - 44 * s * a1 + 14 * perp([-0.1, -1.0, 0.0])
  r_root = rng.uniform(14.0, 16.5)
  root = Ellipsoid(root_c, (r_root, r_root, r_root * 1.2))
  # Aorta: root -> ascending -> arch -> descending (left of the spine).
  spine_y = ay - 48.0
  desc = np.array([rng.uniform(18.0, 26.0), spine_y - 27.0])
  top = root_c[2] + rng.uniform(65.0, 80.0)
  z_lo = centre[2] - 110.0
  ctrl = [
    root_c + [0, 0, -2],
    root_c + [-3, -2, 25],
    root_c + [-4, 0, 50],
    [root_c[0] + 2, root_c[1] + 15, top],
    [desc[0] - 2, desc[1] - 12, top - 4],
    [desc[0], desc[1], top - 25],
    [desc[0], desc[1], top - 70],
    [desc[0] - 2, desc[1], z_lo - 20],
  ]
  pts, t = _smooth(ctrl, 6.0)
  r_asc, r_desc = rng.uniform(13.0, 16.0), rng.uniform(10.0, 12.5)
  radii = np.interp(t, [0.0, 0.35, 0.55, 1.0], [r_root * 0.95, r_asc, (r_asc + r_desc) / 2, r_desc])
  aorta = Tube(pts, radii)
  # Pulmonary trunk from the right-ventricular outflow, up and back to the left.
  rvot = centre - 25 * s * a1 + 30 * perp([0.3, -1.0, 0.0])
  pa_pts, _ = _smooth([rvot, rvot + [8, 5, 22], rvot + [14, 25, 40]], 6.0)
  pulmonary = Tube(pa_pts, rng.uniform(11.0, 14.0))

  # Coronaries on the epicardial surface (outward offset = radius + 0.5 mm wall + 0.6 mm).
  def surf(u, w, r):
    return centre + A * u * a1 + (B * np.sqrt(max(1.0 - u * u, 0.0)) + r + 1.1) * w

  def slerp_dirs(dirs, n):
    d = np.array([perp(v) for v in dirs])
    k = np.linspace(0, len(d) - 1, n)
    out = []
    for kk in k:
      i = min(int(kk), len(d) - 2)
      w = kk - i
      out.append(unit(d[i] * (1 - w) + d[i + 1] * w))
    return out

  u_av = rng.uniform(-0.6, -0.5)
  jit = lambda: rng.normal(0.0, 0.08, 3)
  bif_dir = perp(np.array([0.7, -0.8, 0.2]) + jit())
  bif = surf(u_av, bif_dir, 2.0)
  lm_dir = unit(bif - root_c)
  lm_ostium = root_c + r_root * unit(lm_dir * [1, 1, 0.3]) + [0.0, 0.0, variant.lm_height_mm]
  # The bifurcation sits the variant's LM length from the ostium, along the way to the groove.
  # Short of the groove when the LM is short: the LAD and LCX then cross the epicardial fat.
  bif = lm_ostium + min(variant.lm_length_mm, float(np.linalg.norm(bif - lm_ostium))) * unit(
    bif - lm_ostium
  )
  lm_pts, _ = _smooth([lm_ostium, (lm_ostium + bif) / 2 + 0.5 * unit(lm_ostium - centre), bif], 1.0)
  # LAD: anterior interventricular groove from the bifurcation to the apex.
  lad_dir = perp(np.array([0.35, -1.0, 0.0]) + jit())
  us = np.linspace(u_av, rng.uniform(0.85, 0.95), 12)
  lad_dirs = slerp_dirs([bif_dir, lad_dir, lad_dir], 12)
  lad_ctrl = [bif] + [surf(u, d, 1.5) for u, d in zip(us[1:], lad_dirs[1:])]
  lad_pts, lt = _smooth(lad_ctrl, 1.0)
  # LCX: left AV groove, from anterior-left round to the posterior-left.
  crux = [-0.2, 1.0, 0.0]
  lcx_stops = [bif_dir, [1.0, 0.0, 0.0] + jit(), [0.8, 1.0, 0.0] + jit(), [0.2, 1.0, 0.0]]
  if variant.dominance != "right":  # on round the left AV groove to the crux
    lcx_stops.append(crux)
  lcx_dirs = slerp_dirs(lcx_stops, 14)
  lcx_ctrl = [
    surf(u_av + 0.1 * i / 13 * rng.uniform(0.5, 1.5), d, 1.4) for i, d in enumerate(lcx_dirs)
  ]
  lcx_ctrl = lcx_ctrl[1 : variant.lcx_points]
  if variant.dominance == "left":  # the PDA from the LCX
    lcx_ctrl += [surf(u, perp(crux), 1.0) for u in np.linspace(u_av + 0.2, variant.pda_u, 4)]
  lcx_pts, ct = _smooth([bif] + lcx_ctrl, 1.0)
  # RCA: right sinus -> right AV groove -> crux -> posterior descending.
  rca_ost = root_c + r_root * unit(perp([-0.8, -1.0, 0.0]) * [1, 1, 0.2])
  rca_ost = rca_ost + [0.0, 0.0, variant.rca_height_mm]
  rca_dirs = slerp_dirs(
    [[-0.4, -1.0, 0.0], [-1.0, -0.3, 0.0] + jit(), [-1.0, 0.6, 0.0] + jit(), crux], 14
  )
  if variant.dominance == "left":  # the RCA ends at the acute margin, before the crux
    rca_dirs = rca_dirs[: int(rng.integers(8, 11))]
  rca_ctrl = [rca_ost] + [surf(u_av, d, 1.6) for d in rca_dirs]
  if variant.dominance != "left":  # the PDA (short when co-dominant)
    crux_dir = rca_dirs[-1]
    rca_ctrl += [surf(u, crux_dir, 1.0) for u in np.linspace(u_av + 0.2, variant.pda_u, 4)]
  rca_pts, rt = _smooth(rca_ctrl, 1.0)
  r_lm = rng.uniform(2.0, 2.4)
  coronaries = {
    "lm": Vessel("lm", lm_pts, np.full(len(lm_pts), r_lm), 1),
    "lad": Vessel("lad", lad_pts, np.interp(lt, [0, 1], [rng.uniform(1.8, 2.1), 0.7]), 1),
    "lcx": Vessel("lcx", lcx_pts, np.interp(ct, [0, 1], [rng.uniform(1.6, 1.9), 0.7]), 2),
    "rca": Vessel("rca", rca_pts, np.interp(rt, [0, 1], [rng.uniform(1.8, 2.2), 0.7]), 3),
  }

  # Ribs: 11 pairs from the spine round the chest wall, dropping anteriorly; cartilage to sternum.
  ribs = []
  d_in = fat + muscle * 0.6
  z_hi = centre[2] + 170.0
  for k in range(11):
    z_post = centre[2] + 150.0 - k * rng.uniform(23.0, 26.0)
    drop = rng.uniform(35.0, 55.0)
    for side in (-1.0, 1.0):
      psi = np.radians(np.linspace(75.0, -55.0, 14))
      pts = [[side * 24.0, spine_y + 4.0, z_post + 4.0]]
      for p in psi:
        pts.append(
          [
            side * (ax - d_in - 4.0) * np.cos(p),
            (ay - d_in - 4.0) * np.sin(p),
            z_post - drop * (np.radians(75.0) - p) / np.radians(130.0),
          ]
        )
      bone, _ = _smooth(pts, 4.0)
      cart_end = [side * 16.0, -(ay - d_in - 4.0) * 0.97, pts[-1][2] - 10.0]
      cart, _ = _smooth(
        [
          pts[-1],
          [side * (ax - d_in) * 0.35, -(ay - d_in - 4.0) * 0.93, pts[-1][2] - 6.0],
          cart_end,
        ],
        4.0,
      )
      ribs.append((Tube(bone, rng.uniform(4.0, 5.0)), Tube(cart, 3.5)))
  sternum = (
    0.0,
    -(ay - fat - muscle * 0.4 - 7.0),
    rng.uniform(13.0, 17.0),
    6.5,
    centre[2] - 45.0,
    centre[2] + 125.0,
  )
  return Patient(
    body=(ax, ay),
    fat_mm=fat,
    muscle_mm=muscle,
    z_range=(z_lo, z_hi),
    heart=heart,
    heart_fat_mm=rng.uniform(5.0, 11.0),
    chambers=chambers,
    root=root,
    root_centre=root_c,
    aorta=aorta,
    aorta_wall_mm=rng.uniform(1.5, 2.5),
    pulmonary=pulmonary,
    coronaries=coronaries,
    dominance=variant.dominance,
    mitral_ring=mitral,
    spine_y=spine_y,
    ribs=ribs,
    sternum=sternum,
    lm_ostium=lm_ostium,
  )


def paint_anatomy(canvas: raster.Canvas, p: Patient, hu: dict) -> None:
  """Paints everything but coronaries and calcium. `hu`: material -> HU (see acquisition)."""
  T = TISSUE
  ax, ay = p.body
  z0, z1 = p.z_range[0] - 200.0, p.z_range[1] + 200.0
  body = ZCylinder(0, 0, ax, ay, z0, z1)
  canvas.fill(body, hu["fat"], T["fat"])
  inner = ZCylinder(0, 0, ax - p.fat_mm, ay - p.fat_mm, z0, z1)
  canvas.fill(inner, hu["muscle"], T["muscle"])
  cavity = ZCylinder(0, 0, ax - p.fat_mm - p.muscle_mm, ay - p.fat_mm - p.muscle_mm, z0, z1)
  canvas.fill(cavity, hu["soft_tissue"], T["soft_tissue"])
  zc = p.heart.centre[2] + 40.0
  for side in (-1.0, 1.0):
    lung = Ellipsoid([side * ax * 0.47, 8.0, zc], [ax * 0.42, ay * 0.8, 150.0])
    canvas.fill(lung, hu["lung"], T["lung"], within=cavity)
  hc = p.heart.centre
  med = Ellipsoid([hc[0] * 0.4, hc[1] + 8.0, hc[2] + 35.0], [44.0, ay * 0.62, 115.0])
  canvas.fill(med, hu["fat"], T["fat"], within=cavity)
  # Spine: vertebral bodies (cortical shell, trabecular core), discs, posterior arch, canal.
  ys = p.spine_y
  z = p.z_range[0] - 30.0
  while z < p.z_range[1] + 30.0:
    canvas.fill(ZCylinder(0, ys, 21, 17, z, z + 22.0), hu["cortical"], T["cortical_bone"])
    canvas.fill(
      ZCylinder(0, ys, 19.3, 15.3, z + 1.6, z + 20.4), hu["trabecular"], T["trabecular_bone"]
    )
    canvas.fill(ZCylinder(0, ys, 20, 16, z + 22.0, z + 27.0), hu["disc"], T["soft_tissue"])
    canvas.fill(
      ZCylinder(0, ys + 27, 15, 13, z + 2.0, z + 24.0), hu["cortical"], T["cortical_bone"]
    )
    canvas.fill_tube(
      Tube([[0, ys + 36, z + 18], [0, ys + 60, z + 4]], 5.0), hu["cortical"], T["cortical_bone"]
    )
    for side in (-1, 1):
      canvas.fill_tube(
        Tube([[side * 12, ys + 24, z + 12], [side * 40, ys + 28, z + 12]], 5.0),
        hu["cortical"],
        T["cortical_bone"],
      )
    z += 27.0
  canvas.fill(ZCylinder(0, ys + 27, 9.5, 8.5, z0, z1), hu["csf"], T["soft_tissue"])
  # Sternum and ribs.
  cx, cy, sax, say, sz0, sz1 = p.sternum
  canvas.fill(ZCylinder(cx, cy, sax, say, sz0, sz1), hu["cortical"], T["cortical_bone"])
  canvas.fill(
    ZCylinder(cx, cy, sax - 1.3, say - 1.3, sz0 + 1.3, sz1 - 1.3),
    hu["trabecular"],
    T["trabecular_bone"],
  )
  for bone, cart in p.ribs:
    canvas.fill_tube(bone, hu["cortical"], T["cortical_bone"])
    canvas.fill_tube(Tube(bone.points, bone.radii - 1.4), hu["trabecular"], T["trabecular_bone"])
    canvas.fill_tube(cart, hu["cartilage"], T["cartilage"])
  # Heart: pericardial fat, myocardium, chambers; aorta and pulmonary trunk.
  fatpad = Ellipsoid(p.heart.centre, p.heart.semi + p.heart_fat_mm, p.heart.frame)
  canvas.fill(fatpad, hu["fat"], T["fat"])
  canvas.fill(p.heart, hu["myocardium"], T["myocardium"], mask="heart")
  ch = p.chambers
  canvas.fill(ch["rv"], hu["blood_right"], T["blood_right"], mask="heart")
  canvas.fill(ch["ra"], hu["blood_right"], T["blood_right"], mask="heart")
  canvas.fill(ch["la"], hu["blood_left"], T["blood_left"], mask="heart")
  canvas.fill(ch["lv_myo"], hu["myocardium"], T["myocardium"], mask="heart")
  canvas.fill(ch["lv"], hu["blood_left"], T["blood_left"], mask="heart")
  canvas.fill_tube(p.pulmonary, hu["blood_right"], T["blood_right"])
  wall = Tube(p.aorta.points, p.aorta.radii + p.aorta_wall_mm)
  canvas.fill_tube(wall, hu["vessel_wall"], T["vessel_wall"], mask="aorta")
  root_wall = Ellipsoid(p.root.centre, p.root.semi + p.aorta_wall_mm)
  canvas.fill(root_wall, hu["vessel_wall"], T["vessel_wall"], mask="aorta")
  canvas.fill(p.root, hu["blood_left"], T["aorta_lumen"], mask="aorta")
  canvas.fill_tube(p.aorta, hu["blood_left"], T["aorta_lumen"], mask="aorta")


def paint_coronaries(canvas: raster.Canvas, p: Patient, hu: dict, wall_mm: float = 0.5) -> dict:
  """Anti-aliased coronary walls then lumens (walls of all vessels first, so joins stay open).

  Returns {vessel name: (flat voxel indices, lumen fraction)} of the painted lumens.
  """
  h = canvas.grid.h
  sparse = []
  for v in p.coronaries.values():
    idx, sd = canvas.tube_distance(Tube(v.points, v.radii), band=wall_mm + h)
    sparse.append((idx, sd))
  for idx, sd in sparse:
    canvas.blend_sparse(
      idx, np.clip(0.5 - (sd - wall_mm) / h, 0.0, 1.0), hu["vessel_wall"], TISSUE["vessel_wall"]
    )
  lumens = {}
  for name, (idx, sd) in zip(p.coronaries, sparse):
    frac = np.clip(0.5 - sd / h, 0.0, 1.0)
    canvas.blend_sparse(idx, frac, hu["coronary_lumen"], TISSUE["coronary_lumen"])
    lumens[name] = (idx, frac)
  return lumens
