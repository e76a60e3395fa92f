"""Resampling, thick-slice reconstruction and HU normalisation.

All geometry-changing operations keep the scan in physical space: the origin (the physical
position of voxel (0, 0, 0)) and direction are kept, and the new number of voxels per axis is
chosen so that the physical extent (size x spacing) is preserved as closely as whole voxels
allow. `normalize_hu` is the single place where HU are mapped to network inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np
import SimpleITK as sitk

from cac_jax.data.scan import Case, Scan

AIR_HU = -1024.0

_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


def _to_image(array: np.ndarray, scan: Scan) -> sitk.Image:
  img = sitk.GetImageFromArray(np.ascontiguousarray(array))
  img.SetSpacing(tuple(float(s) for s in scan.spacing[::-1]))
  img.SetOrigin(tuple(float(o) for o in scan.origin))
  img.SetDirection(tuple(float(d) for d in scan.direction))
  return img


def _reference(shape, spacing, origin, direction, pixel_id) -> sitk.Image:
  """An empty image with the given (z, y, x) shape / spacing and ITK origin / direction."""
  z, y, x = (int(n) for n in shape)
  ref = sitk.Image(x, y, z, pixel_id)
  ref.SetSpacing(tuple(float(s) for s in spacing[::-1]))
  ref.SetOrigin(tuple(float(o) for o in origin))
  ref.SetDirection(tuple(float(d) for d in direction))
  return ref


def resampled_shape(
  shape: Sequence[int], spacing_from: Sequence[float], spacing_to: Sequence[float]
) -> tuple[int, int, int]:
  """Voxel counts (z, y, x) that keep the physical extent size * spacing (at least 1)."""
  return tuple(max(1, int(round(n * a / b))) for n, a, b in zip(shape, spacing_from, spacing_to))


def _same_spacing(a: Sequence[float], b: Sequence[float]) -> bool:
  return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-6, atol=0))


def resample(scan: Scan, spacing_zyx: Sequence[float], order: int = 1) -> Scan:
  """Resamples a HU scan to a new voxel spacing.

  Args:
    scan: input scan, `hu` (z, y, x).
    spacing_zyx: new spacing (z, y, x) in mm.
    order: 0 nearest, 1 linear, 3 cubic B-spline.

  Returns:
    A `Scan` with the same origin, direction, source and meta, spacing `spacing_zyx` and
    shape `resampled_shape(scan.shape, scan.spacing, spacing_zyx)`; float32 HU. The few new
    voxel centres that fall past the input's last voxel (rounding of the extent) take the
    nearest edge value (edge replication, not air).
  """
  if order not in _INTERPOLATORS:
    raise ValueError(f"order must be one of {sorted(_INTERPOLATORS)}; got {order}")
  spacing_zyx = tuple(float(s) for s in spacing_zyx)
  if len(spacing_zyx) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing_zyx):
    raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm; got {spacing_zyx}")
  if _same_spacing(spacing_zyx, scan.spacing):  # (float32 round-off in file headers)
    return (
      scan if tuple(scan.spacing) == spacing_zyx else dataclasses.replace(scan, spacing=spacing_zyx)
    )
  shape = resampled_shape(scan.shape, scan.spacing, spacing_zyx)
  img = _to_image(np.asarray(scan.hu, dtype=np.float32), scan)
  ref = _reference(shape, spacing_zyx, scan.origin, scan.direction, sitk.sitkFloat32)
  out = sitk.Resample(
    img, ref, sitk.Transform(), _INTERPOLATORS[order], AIR_HU, sitk.sitkFloat32, True
  )
  hu = sitk.GetArrayFromImage(out)
  return dataclasses.replace(scan, hu=hu, spacing=spacing_zyx)


def resample_labels(
  array: np.ndarray, scan_from: Scan, scan_to: Scan, extrapolate: bool = False
) -> np.ndarray:
  """Nearest-neighbour resampling of a (z, y, x) label/mask array between two scan grids.

  Args:
    array: integer or bool array with shape `scan_from.shape`.
    scan_from: the grid `array` is on.
    scan_to: the target grid (any spacing / extent / origin; mapped by physical coordinates).
    extrapolate: voxels outside `scan_from`'s extent take the nearest edge value instead of 0
      (used by `resample_case`, whose HU are edge-replicated the same way).

  Returns:
    Array with shape `scan_to.shape` and the dtype of `array`; values are copied exactly
    (no new values); voxels outside `scan_from`'s extent get 0 unless `extrapolate`.
  """
  array = np.asarray(array)
  if array.shape != tuple(scan_from.shape):
    raise ValueError(f"array shape {array.shape} differs from scan shape {scan_from.shape}")
  if (
    tuple(scan_to.shape) == tuple(scan_from.shape)
    and _same_spacing(scan_to.spacing, scan_from.spacing)
    and np.allclose(scan_to.origin, scan_from.origin, atol=1e-6)
    and np.allclose(scan_to.direction, scan_from.direction, atol=1e-9)
  ):
    return array
  dtype = array.dtype
  work = array.astype(np.uint8) if dtype == np.bool_ else array
  if work.dtype.kind == "f":
    raise ValueError("resample_labels expects an integer or bool array; use resample for HU")
  if work.dtype.itemsize == 8:
    work = work.astype(np.int32)
  img = _to_image(work, scan_from)
  ref = _reference(
    scan_to.shape, scan_to.spacing, scan_to.origin, scan_to.direction, img.GetPixelID()
  )
  out = sitk.Resample(
    img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, img.GetPixelID(), bool(extrapolate)
  )
  return sitk.GetArrayFromImage(out).astype(dtype, copy=False)


def resample_case(case: Case, spacing_zyx: Sequence[float], order: int = 1) -> Case:
  """Resamples a case's scan (interpolation `order`) and its labels and masks (nearest)."""
  scan = resample(case.scan, spacing_zyx, order=order)
  if scan is case.scan:
    return case
  if scan.hu is case.scan.hu:  # spacing equal up to round-off: nothing resampled
    return dataclasses.replace(case, scan=scan)

  def _labels(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else resample_labels(a, case.scan, scan, extrapolate=True)

  return dataclasses.replace(
    case,
    scan=scan,
    labels=_labels(case.labels),
    heart_mask=_labels(case.heart_mask),
    aorta_mask=_labels(case.aorta_mask),
    left_main=_labels(case.left_main),
  )


def _thick_weights(n: int, spacing: float, thickness: float, increment: float):
  """Box-filter weights (m, n) and the first output slice centre (relative to slice 0)."""
  lo_edge = -spacing / 2.0
  hi_edge = (n - 0.5) * spacing
  extent = hi_edge - lo_edge
  if thickness >= extent:
    centres = np.asarray([(lo_edge + hi_edge) / 2.0])
    half = extent / 2.0
  else:
    c0 = lo_edge + thickness / 2.0
    m = int(np.floor((hi_edge - thickness / 2.0 - c0) / increment + 1e-6)) + 1
    centres = c0 + increment * np.arange(m)
    half = thickness / 2.0
  slice_lo = np.arange(n) * spacing - spacing / 2.0
  slice_hi = slice_lo + spacing
  overlap = np.minimum(slice_hi[None, :], centres[:, None] + half) - np.maximum(
    slice_lo[None, :], centres[:, None] - half
  )
  w = np.clip(overlap, 0.0, None)
  w /= w.sum(axis=1, keepdims=True)
  return w, centres


def thick_slices(scan: Scan, thickness_mm: float = 3.0, increment_mm: float = 1.5) -> Scan:
  """Reconstructs thick slices by averaging along z (a box filter over physical z).

  Output slice k averages the input over the z interval [c_k - t/2, c_k + t/2] (partial
  overlaps weighted by length), where c_0 puts the first window flush with the top of the
  input's extent and c_k = c_0 + k * increment; windows do not extend past the input. A
  linear ramp along z is therefore mapped to its value at each window centre.

  Args:
    scan: input scan (z, y, x); usually thin slices.
    thickness_mm: slice thickness t.
    increment_mm: distance between output slice centres (the new z spacing).

  Returns:
    A `Scan` with z spacing `increment_mm`, the same (y, x) grid, and the origin moved to the
    first window centre along the scan's z direction.
  """
  if thickness_mm <= 0 or increment_mm <= 0:
    raise ValueError(f"thickness and increment must be > 0; got {thickness_mm}, {increment_mm}")
  sz = float(scan.spacing[0])
  w, centres = _thick_weights(scan.shape[0], sz, float(thickness_mm), float(increment_mm))
  hu = np.asarray(scan.hu, dtype=np.float32)
  out = np.empty((w.shape[0],) + hu.shape[1:], dtype=np.float32)
  for k in range(w.shape[0]):
    idx = np.nonzero(w[k])[0]
    acc = np.zeros(hu.shape[1:], dtype=np.float64)
    for i in idx:
      acc += w[k, i] * hu[i]
    out[k] = acc
  z_axis = scan.direction_matrix[:, 2]
  origin = tuple(float(v) for v in np.asarray(scan.origin) + z_axis * centres[0])
  spacing = (float(increment_mm), float(scan.spacing[1]), float(scan.spacing[2]))
  meta = dict(scan.meta)
  meta["slice_thickness_mm"] = float(thickness_mm)
  return dataclasses.replace(scan, hu=out, spacing=spacing, origin=origin, meta=meta)


def normalize_hu(hu, data_config):
  """Maps HU to network inputs: clip to `data_config.hu_clip`, then (HU - center) / scale.

  With the paper's settings: clip -1000..3000, then (HU - 130) / 1130, so -1000 -> -1.0,
  130 -> 0.0, 3000 -> 2.54. Accepts numpy arrays / scalars (returns float32 numpy) and JAX
  arrays (returns a JAX array).

  Args:
    hu: array of HU values, any shape.
    data_config: `config.data` with `hu_clip` (lo, hi), `hu_center`, `hu_scale`.
  """
  lo, hi = (float(v) for v in data_config.hu_clip)
  center = float(data_config.hu_center)
  scale = float(data_config.hu_scale)
  if isinstance(hu, (np.ndarray, np.generic, float, int, list, tuple)):
    x = np.asarray(hu, dtype=np.float32)
    return ((np.clip(x, lo, hi) - np.float32(center)) / np.float32(scale)).astype(np.float32)
  return (hu.clip(lo, hi) - center) / scale
