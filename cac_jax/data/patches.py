"""Three-view patch extraction: the windows of a volume around given voxels, and their labels.

A sample is one voxel (z, y, x) seen through three orthogonal P x P patches centred on it:
  * axial    over (y, x) at slice z,
  * coronal  over (z, x) at row y,
  * sagittal over (z, y) at column x,
stacked as (3, B, P, P, 1) float32 in that view order, with the centre voxel at pixel
(P // 2, P // 2) of every view. Pixels outside the volume take `pad_value` (`PatchExtractor`
uses -1000 HU, i.e. normalised air). P = `cac_jax.models.patch_size(config)` (155 paper, 31 tiny).

Labelled samples also carry, per view, the label window of the network's output
(o = config.data.output_size) centred on the same voxel: (3, B, o, o) int32, background (0)
outside the volume, and `labels[:, :, o // 2, o // 2]` is the centre voxel's class.

Gathering copies each view window as one numpy block (3B block copies per batch, no
per-pixel Python); only windows that cross the border are pre-filled with the pad value, and
no padded copy of any volume is kept (at P = 155 one would cost about twice a working-spacing
volume per case; docs/performance.md has the measured gather cost). Normalisation
(`cac_jax.data.preprocess.normalize_hu`, elementwise) is applied to the gathered HU patches;
when a probe shows that the in-place clip/subtract/divide gives bit-identical results to
`normalize_hu`, that in-place form is used (it allocates nothing).

Which voxels to centre on is the batch policies' business (`cac_jax.data.sampling`).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np

from cac_jax import models
from cac_jax.data.preprocess import normalize_hu

PAD_HU = -1000.0


def _window(c: int, h: int, size: int, n: int) -> tuple[slice, slice]:
  """Source slice along an axis of length n and destination slice in a window of `size`."""
  lo, hi = c - h, c - h + size
  a, b = max(lo, 0), min(hi, n)
  if a >= b:
    return slice(0, 0), slice(0, 0)
  return slice(a, b), slice(a - lo, b - lo)


def _check_centres(volume: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
  if volume.ndim != 3:
    raise ValueError(f"volume must be 3D (z, y, x); got shape {volume.shape}")
  centres = np.asarray(centres)
  if centres.ndim != 2 or centres.shape[1] != 3:
    raise ValueError(f"centres must be (B, 3) voxel indices (z, y, x); got shape {centres.shape}")
  if (
    centres.size
    and not np.issubdtype(centres.dtype, np.integer)
    and np.any(centres != np.round(centres))
  ):
    raise ValueError("centres must be integer voxel indices")
  if size < 1:
    raise ValueError(f"window size must be >= 1; got {size}")
  return centres.astype(np.int64)


def gather_views_into(
  out: np.ndarray, volume: np.ndarray, centres: np.ndarray, size: int, pad_value
) -> None:
  """Fill out (3, B, size, size[, 1]) with the three windows of `volume` around `centres`.

  One block copy per view and patch (3B numpy copies, no per-pixel Python); a window that
  crosses the border is pre-filled with `pad_value`; it reads straight from `volume`, so no
  padded copy of any volume is kept.
  """
  h = size // 2
  nz, ny, nx = volume.shape
  for b, (z, y, x) in enumerate(centres.tolist()):
    sz, dz = _window(z, h, size, nz)
    sy, dy = _window(y, h, size, ny)
    sx, dx = _window(x, h, size, nx)
    z_in, y_in, x_in = 0 <= z < nz, 0 <= y < ny, 0 <= x < nx
    full = (dz.stop - dz.start == size, dy.stop - dy.start == size, dx.stop - dx.start == size)
    # per view: fixed-axis index inside?, whole window inside?, destination, source index
    views = (
      (z_in, full[1] and full[2], (dy, dx), (z, sy, sx)),  # axial (y, x) at z
      (y_in, full[0] and full[2], (dz, dx), (sz, y, sx)),  # coronal (z, x) at y
      (x_in, full[0] and full[1], (dz, dy), (sz, sy, x)),
    )  # sagittal (z, y) at x
    for v, (inside, whole, dst, src) in enumerate(views):
      o = out[v, b]
      if o.ndim == 3:  # trailing channel axis
        o = o[..., 0]
      if not (inside and whole):
        o[...] = pad_value
      if inside:
        o[dst] = volume[src]


def _gather_views(
  volume: np.ndarray, centres: np.ndarray, size: int, pad_value, dtype
) -> np.ndarray:
  """(3, B, size, size) windows of `volume` (z, y, x) around `centres` (B, 3), padded."""
  volume = np.asarray(volume)
  centres = _check_centres(volume, centres, size)
  out = np.empty((3, centres.shape[0], size, size), dtype=dtype)
  gather_views_into(out, volume, centres, size, pad_value)
  return out


def extract_views(
  volume: np.ndarray, centres: np.ndarray, patch: int, pad_value: float
) -> np.ndarray:
  """Three orthogonal patches centred on each voxel.

  Args:
    volume: (Z, Y, X) array (HU or normalised HU).
    centres: (B, 3) integer voxel indices (z, y, x); may lie near or beyond the border.
    patch: side P of every patch (pixels); the centre voxel sits at (P // 2, P // 2).
    pad_value: value of pixels outside the volume.

  Returns:
    (3, B, P, P, 1) float32: axial (y, x) at z, coronal (z, x) at y, sagittal (z, y) at x.
  """
  return _gather_views(volume, centres, patch, pad_value, np.float32)[..., None]


def extract_view_labels(labels: np.ndarray, centres: np.ndarray, out: int) -> np.ndarray:
  """Per-view label windows of side `out` centred on each voxel.

  Args:
    labels: (Z, Y, X) int class map (0..6).
    centres: (B, 3) integer voxel indices (z, y, x).
    out: side o of the network's output window (config.data.output_size).

  Returns:
    (3, B, o, o) int32, same view order/orientation as `extract_views`; background (0) outside
    the volume; [:, :, o // 2, o // 2] is the centre voxel's class.
  """
  return _gather_views(labels, centres, out, 0, np.int32)


def _inplace_matches(normalize, data_config) -> bool:
  """True if in-place clip, -= center, /= scale (float32) equals `normalize` bit for bit."""
  lo, hi = (float(v) for v in data_config.hu_clip)
  probe = np.concatenate(
    [
      np.linspace(lo - 500.0, hi + 500.0, 4001, dtype=np.float32),
      np.asarray([lo, hi, -1000.0, 0.0, 130.0, 1e6, -1e6], np.float32),
      np.random.default_rng(0).normal(0.0, 800.0, 2000).astype(np.float32),
    ]
  )
  want = np.asarray(normalize(probe.copy(), data_config))
  got = probe.copy()
  np.clip(got, np.float32(lo), np.float32(hi), out=got)
  got -= np.float32(data_config.hu_center)
  got /= np.float32(data_config.hu_scale)
  return want.dtype == np.float32 and want.shape == got.shape and np.array_equal(want, got)


class PatchExtractor:
  """Normalised three-view patches and their label windows for centres in a list of volumes.

  Args:
    config: full config (model: patch size P; data: output size o and HU normalisation).
  """

  def __init__(self, config: ml_collections.ConfigDict):
    self.data_config = config.data
    self.patch = int(models.patch_size(config))
    self.out = int(config.data.output_size)
    self._inplace = _inplace_matches(normalize_hu, config.data)

  def views(
    self, volumes: Sequence[np.ndarray], case_idx: np.ndarray, centres: np.ndarray
  ) -> np.ndarray:
    """(3, B, P, P, 1) float32 normalised views, padded with -1000 HU.

    Sample b is from `volumes[case_idx[b]]` (HU, (z, y, x)) around `centres[b]` (z, y, x)."""
    views = np.empty((3, len(case_idx), self.patch, self.patch, 1), np.float32)
    for b, i in enumerate(np.asarray(case_idx).tolist()):
      gather_views_into(views[:, b : b + 1], volumes[i], centres[b : b + 1], self.patch, PAD_HU)
    if self._inplace:
      d = self.data_config
      np.clip(views, np.float32(d.hu_clip[0]), np.float32(d.hu_clip[1]), out=views)
      views -= np.float32(d.hu_center)
      views /= np.float32(d.hu_scale)
      return views
    return np.asarray(normalize_hu(views, self.data_config), dtype=np.float32)

  def labels(
    self, label_maps: Sequence[np.ndarray], case_idx: np.ndarray, centres: np.ndarray
  ) -> np.ndarray:
    """(3, B, o, o) int32 label windows, same samples as `views`; background outside."""
    out = np.empty((3, len(case_idx), self.out, self.out), np.int32)
    for b, i in enumerate(np.asarray(case_idx).tolist()):
      gather_views_into(out[:, b : b + 1], label_maps[i], centres[b : b + 1], self.out, 0)
    return out
