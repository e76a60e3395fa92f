"""Analytic shapes rasterised onto a voxel grid (painter's algorithm, per-shape bounding boxes).

Physical coordinates are LPS millimetres (x left, y posterior, z superior); arrays are (z, y, x)
with identity direction, so voxel (k, j, i) sits at origin + (i * sx, j * sy, k * sz).
Large shapes are painted with hard edges (the point-spread blur supplies partial volume);
small ones (coronary lumen and wall, calcium) with anti-aliased fractions
`clip(0.5 - signed_distance / h, 0, 1)` where `h` is the voxel size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Grid:
  """A voxel grid: origin (x, y, z) mm of voxel 0, spacing (z, y, x) mm, shape (z, y, x)."""

  def __init__(self, origin_xyz, spacing_zyx, shape_zyx):
    self.origin = np.asarray(origin_xyz, dtype=np.float64)
    self.spacing = tuple(float(s) for s in spacing_zyx)
    self.shape = tuple(int(n) for n in shape_zyx)
    self.h = float(np.prod(self.spacing)) ** (1.0 / 3.0)
    self.voxel_volume = float(np.prod(self.spacing))

  def bbox(self, lo_xyz, hi_xyz):
    """Index slices (z, y, x) of the voxels whose centres lie in the physical box; None if empty."""
    out = []
    for ax, k in enumerate((2, 1, 0)):
      s, o = self.spacing[ax], self.origin[k]
      i0 = max(int(np.floor((lo_xyz[k] - o) / s)), 0)
      i1 = min(int(np.ceil((hi_xyz[k] - o) / s)) + 1, self.shape[ax])
      if i1 <= i0:
        return None
      out.append(slice(i0, i1))
    return tuple(out)

  def coords(self, bb):
    """Broadcastable physical coordinates (Z (n,1,1), Y (1,n,1), X (1,1,n)) float32 of a bbox."""
    z = self.origin[2] + self.spacing[0] * np.arange(bb[0].start, bb[0].stop)
    y = self.origin[1] + self.spacing[1] * np.arange(bb[1].start, bb[1].stop)
    x = self.origin[0] + self.spacing[2] * np.arange(bb[2].start, bb[2].stop)
    return (
      z.astype(np.float32)[:, None, None],
      y.astype(np.float32)[None, :, None],
      x.astype(np.float32)[None, None, :],
    )

  def z_index(self, z_mm: float) -> int:
    return int(np.clip(round((z_mm - self.origin[2]) / self.spacing[0]), 0, self.shape[0] - 1))

  def index(self, xyz) -> tuple[int, int, int]:
    """Nearest voxel (z, y, x) of a physical point, clipped into the grid."""
    out = []
    for ax, k in enumerate((2, 1, 0)):
      out.append(
        int(np.clip(round((xyz[k] - self.origin[k]) / self.spacing[ax]), 0, self.shape[ax] - 1))
      )
    return tuple(out)


def unit(v) -> np.ndarray:
  v = np.asarray(v, dtype=np.float64)
  return v / np.linalg.norm(v)


def frame_from(axis) -> np.ndarray:
  """A right-handed orthonormal frame (3x3, columns) whose first column is `axis`."""
  a = unit(axis)
  ref = np.array([0.0, 0.0, 1.0]) if abs(a[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
  b = unit(np.cross(a, ref))
  c = np.cross(a, b)
  return np.stack([a, b, c], axis=1)


class Ellipsoid:
  """Ellipsoid with centre (x, y, z), semi-axes along the columns of `frame` (identity: x, y, z)."""

  def __init__(self, centre, semi, frame: np.ndarray | None = None):
    self.centre = np.asarray(centre, dtype=np.float64)
    self.semi = np.asarray(semi, dtype=np.float64)
    self.frame = None if frame is None else np.asarray(frame, dtype=np.float64)

  def bounds(self, pad: float = 0.0):
    f = np.eye(3) if self.frame is None else self.frame
    half = np.sqrt(((f * self.semi[None, :]) ** 2).sum(axis=1)) + pad
    return self.centre - half, self.centre + half

  def _local(self, Z, Y, X):
    dx, dy, dz = X - self.centre[0], Y - self.centre[1], Z - self.centre[2]
    if self.frame is None:
      return dx, dy, dz
    f = self.frame.astype(np.float32)
    return tuple(dx * f[0, k] + dy * f[1, k] + dz * f[2, k] for k in range(3))

  def inside(self, Z, Y, X):
    """rho^2 < 1 as a quadratic form, grouped so only ~3 full-size (3D) operations remain."""
    dx, dy, dz = X - self.centre[0], Y - self.centre[1], Z - self.centre[2]
    f = np.eye(3) if self.frame is None else self.frame
    m = (f / self.semi[None, :] ** 2) @ f.T  # M = F diag(1/a^2) F^T
    m = m.astype(np.float32)
    a2d = m[0, 0] * dx * dx + m[1, 1] * dy * dy + (2 * m[0, 1]) * (dy * dx)  # (1, ny, nx)
    b2d = (2 * m[0, 2]) * dx + (2 * m[1, 2]) * dy  # (1, ny, nx)
    rho2 = dz * b2d
    rho2 += a2d
    rho2 += m[2, 2] * dz * dz
    return rho2 < 1.0

  def sdf(self, Z, Y, X):
    """Approximate signed distance (mm, negative inside): (rho^2 - 1) / |grad rho^2|."""
    q = self._local(Z, Y, X)
    a = self.semi.astype(np.float32)
    rho2 = (q[0] / a[0]) ** 2 + (q[1] / a[1]) ** 2 + (q[2] / a[2]) ** 2
    g = 2.0 * np.sqrt((q[0] / a[0] ** 2) ** 2 + (q[1] / a[1] ** 2) ** 2 + (q[2] / a[2] ** 2) ** 2)
    return (rho2 - 1.0) / (g + 1e-6)


class ZCylinder:
  """Elliptic cylinder along z: centre (cx, cy), semi-axes (ax, ay), z in [z0, z1]."""

  def __init__(self, cx, cy, ax, ay, z0, z1):
    self.c = (float(cx), float(cy))
    self.a = (float(ax), float(ay))
    self.z = (float(z0), float(z1))

  def bounds(self, pad: float = 0.0):
    lo = np.array([self.c[0] - self.a[0], self.c[1] - self.a[1], self.z[0]]) - pad
    hi = np.array([self.c[0] + self.a[0], self.c[1] + self.a[1], self.z[1]]) + pad
    return lo, hi

  def inside(self, Z, Y, X):
    m2 = ((X - self.c[0]) / self.a[0]) ** 2 + ((Y - self.c[1]) / self.a[1]) ** 2 < 1.0
    mz = (self.z[0] <= Z) & (self.z[1] >= Z)
    return m2 & mz


class Tube:
  """A swept sphere: polyline `points` (N, 3) mm with radius `radii` (N,) mm at each point."""

  def __init__(self, points, radii):
    self.points = np.asarray(points, dtype=np.float64)
    self.radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(self.points),)).copy()

  def bounds(self, pad: float = 0.0):
    r = self.radii.max() + pad
    return self.points.min(axis=0) - r, self.points.max(axis=0) + r

  def segments(self, grid: Grid, pad: float):
    """Yields (bbox, signed distance to the swept surface) per segment (float32 arrays)."""
    for p0, p1, r0, r1 in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:]):
      lo = np.minimum(p0, p1) - max(r0, r1) - pad
      hi = np.maximum(p0, p1) + max(r0, r1) + pad
      bb = grid.bbox(lo, hi)
      if bb is None:
        continue
      Z, Y, X = grid.coords(bb)
      d = (p1 - p0).astype(np.float32)
      l2 = float(d @ d) + 1e-9
      dx, dy, dz = X - np.float32(p0[0]), Y - np.float32(p0[1]), Z - np.float32(p0[2])
      t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / l2, 0.0, 1.0)
      ex, ey, ez = dx - t * d[0], dy - t * d[1], dz - t * d[2]
      dist = np.sqrt(ex * ex + ey * ey + ez * ez)
      dist -= r0 + t * (r1 - r0)
      yield bb, dist


def _local_view(bb, outer):
  return tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(bb, outer))


class Canvas:
  """HU volume being painted, with optional tissue-id map and named boolean masks."""

  def __init__(
    self,
    grid: Grid,
    fill: float,
    track_tissue: bool = False,
    masks: Sequence[str] = ("heart", "aorta"),
  ):
    self.grid = grid
    self.hu = np.full(grid.shape, fill, dtype=np.float32)
    self.tissue = np.zeros(grid.shape, dtype=np.uint8) if track_tissue else None
    self.masks = {name: np.zeros(grid.shape, dtype=bool) for name in masks}

  def _commit(self, bb, m, value, tissue_id, mask):
    if not np.any(m):
      return
    m = np.broadcast_to(m, tuple(s.stop - s.start for s in bb))
    np.copyto(self.hu[bb], np.float32(value), where=m)
    if self.tissue is not None and tissue_id is not None:
      np.copyto(self.tissue[bb], np.uint8(tissue_id), where=m)
    if mask is not None:
      self.masks[mask][bb] |= m

  def fill(self, shape, value: float, tissue_id=None, within=None, mask=None):
    """Hard-edged paint of `shape` (optionally intersected with shape `within`)."""
    bb = self.grid.bbox(*shape.bounds())
    if bb is None:
      return
    Z, Y, X = self.grid.coords(bb)
    m = shape.inside(Z, Y, X)
    if within is not None:
      m = m & within.inside(Z, Y, X)
    self._commit(bb, m, value, tissue_id, mask)

  def fill_tube(self, tube: Tube, value: float, tissue_id=None, mask=None):
    """Hard-edged paint of a tube, segment by segment (idempotent, so overlaps are harmless)."""
    for bb, sd in tube.segments(self.grid, pad=0.0):
      self._commit(bb, sd < 0.0, value, tissue_id, mask)

  def tube_distance(self, tube: Tube, band: float):
    """Sparse signed distance of a tube: (flat indices, sd) of voxels with sd < band."""
    bbt = self.grid.bbox(*tube.bounds(pad=band))
    if bbt is None:
      return np.zeros(0, np.int64), np.zeros(0, np.float32)
    buf = np.full(tuple(s.stop - s.start for s in bbt), np.inf, dtype=np.float32)
    for bb, sd in tube.segments(self.grid, pad=band):
      v = buf[_local_view(bb, bbt)]
      np.minimum(v, sd, out=v)
    loc = np.nonzero(buf < band)
    sd = buf[loc]
    glob = tuple(l + s.start for l, s in zip(loc, bbt))
    return np.ravel_multi_index(glob, self.grid.shape), sd

  def blend_sparse(self, flat_idx, frac, value, tissue_id=None):
    """hu <- hu + frac * (value - hu) at flat indices; tissue set where frac >= 0.5."""
    hu = self.hu.reshape(-1)
    hu[flat_idx] += frac * (np.float32(value) - hu[flat_idx])
    if self.tissue is not None and tissue_id is not None:
      self.tissue.reshape(-1)[flat_idx[frac >= 0.5]] = tissue_id

  def soft_fraction(self, shape):
    """(bbox, anti-aliased occupancy fraction float32) of a shape with an `sdf`; None if outside."""
    h = self.grid.h
    bb = self.grid.bbox(*shape.bounds(pad=h))
    if bb is None:
      return None
    Z, Y, X = self.grid.coords(bb)
    return bb, np.clip(0.5 - shape.sdf(Z, Y, X) / h, 0.0, 1.0).astype(np.float32)

  def blend(self, bb, frac, value, tissue_id=None):
    v = self.hu[bb]
    v += frac * (np.float32(value) - v)
    if self.tissue is not None and tissue_id is not None:
      np.copyto(self.tissue[bb], np.uint8(tissue_id), where=frac >= 0.5)
