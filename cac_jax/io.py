"""Reading and writing CT volumes, label maps and masks with their geometry.

Reading (`read_scan`) accepts any single file SimpleITK reads (NIfTI `.nii`/`.nii.gz`, MetaImage
`.mha`/`.mhd`, NRRD, a single DICOM file) or a folder holding a DICOM series. The volume is
brought to the canonical LPS orientation (`SimpleITK.DICOMOrient(img, "LPS")`, identity
direction for axis-aligned scans), returned as a float32 (z, y, x) array in HU, and the file's
own geometry is kept in `Scan.source` so that outputs can be written back on the input's grid
and orientation (`write_like`) and overlay the input in ITK-SNAP / 3D Slicer.

Masks and label maps (`read_mask`, `read_labels`) are placed on a scan's grid by physical
coordinates (nearest neighbour), so a mask stored on another voxel grid lands correctly.

Writes are atomic: the file is written into a temporary folder next to the target and moved
into place with `os.replace`, so a reader never sees a half-written file.

No patient-identifying DICOM field is ever copied into `Scan.meta`; only modality and kVp.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from cac_jax import labels as labels_lib
from cac_jax.scan import Scan, SourceGeometry

PathLike = Union[str, os.PathLike]

CANONICAL = "LPS"
HU_FLOOR = -1024.0  # values below (FOV padding such as -2048 / -3024) are clipped to this
# Plausibility bounds for "is this CT in HU" (see `_check_ct_range`).
_MAX_P99_HU = 6000.0  # 99th percentile above this: not HU (e.g. raw/unscaled or other modality)
_MAX_P1_HU = 3000.0   # 1st percentile above this: no air/tissue at all
_MIN_MAX_HU = -500.0  # maximum below this: no tissue at all
_PERCENTILE_SAMPLES = 2_000_000

# DICOM tags that may be kept: modality and peak kilovoltage. Nothing else.
_SAFE_DICOM_TAGS = {"0008|0060": "modality", "0018|0060": "kvp"}


class ScanReadError(ValueError):
  """A file could not be read as a valid CT volume / mask; the message names file and problem."""


# ---------------------------------------------------------------------------------------------
# Low-level helpers.


def _read_image(path: PathLike, what: str = "image") -> tuple[sitk.Image, dict]:
  """Reads a file or DICOM folder with SimpleITK. Returns (image, safe metadata)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} not found: {path}")
  meta: dict = {}
  if os.path.isdir(path):
    try:
      series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path)
    except RuntimeError as e:
      raise ScanReadError(f"{path}: cannot list DICOM series: {_first_line(e)}") from None
    if not series:
      raise ScanReadError(f"{path}: folder holds no DICOM series")
    files_per_series = {s: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, s) for s in series}
    best = max(series, key=lambda s: (len(files_per_series[s]), s))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_per_series[best])  # sorted by slice position by GDCM
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
      img = reader.Execute()
    except RuntimeError as e:
      raise ScanReadError(f"{path}: cannot read DICOM series {best}: {_first_line(e)}") from None
    for tag, key in _SAFE_DICOM_TAGS.items():
      if reader.HasMetaDataKey(0, tag):
        meta[key] = reader.GetMetaData(0, tag).strip()
    meta["format"] = "dicom"
    meta["num_series_in_folder"] = len(series)
  else:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
      reader.ReadImageInformation()
      img = reader.Execute()
    except RuntimeError as e:
      msg = _first_line(e)
      if "spacing" in msg.lower():
        raise ScanReadError(f"{path}: non-positive or invalid voxel spacing: {msg}") from None
      raise ScanReadError(f"{path}: unreadable or corrupt {what} file: {msg}") from None
    for tag, key in _SAFE_DICOM_TAGS.items():
      if reader.HasMetaDataKey(tag):
        meta[key] = reader.GetMetaData(tag).strip()
    meta["format"] = "dicom" if meta else _format_from_name(path)
  if "kvp" in meta:
    try:
      meta["kvp"] = float(meta["kvp"])
    except ValueError:
      del meta["kvp"]
  return img, meta


def _first_line(e: Exception) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  # ITK errors look like "Exception thrown in SimpleITK ... \n ... : description"; keep the
  # most informative (last) line.
  return lines[-1] if lines else type(e).__name__


def _format_from_name(path: str) -> str:
  name = os.path.basename(path).lower()
  for ext, fmt in ((".nii.gz", "nifti"), (".nii", "nifti"), (".mha", "metaimage"),
                   (".mhd", "metaimage"), (".nrrd", "nrrd"), (".nhdr", "nrrd"), (".dcm", "dicom")):
    if name.endswith(ext):
      return fmt
  return "other"


def _check_geometry(img: sitk.Image, path: str, allow_2d: bool) -> sitk.Image:
  """Checks dimension, size and spacing; returns a 3D image."""
  if img.GetNumberOfComponentsPerPixel() != 1:
    raise ScanReadError(
        f"{path}: image has {img.GetNumberOfComponentsPerPixel()} components per voxel "
        "(colour/vector image); expected a scalar CT volume")
  size = img.GetSize()
  if any(s == 0 for s in size):
    raise ScanReadError(f"{path}: image has a zero-size axis (size x,y,z = {size})")
  spacing = img.GetSpacing()
  if any((not np.isfinite(s)) or s <= 0 for s in spacing):
    raise ScanReadError(f"{path}: non-positive or non-finite voxel spacing {spacing}")
  dim = img.GetDimension()
  if dim == 2:
    if not allow_2d:
      raise ScanReadError(
          f"{path}: 2D image (size {size}); a 3D volume is required for scoring "
          "(pass allow_2d=True to read it as a 1-slice volume)")
    img = sitk.JoinSeries(img)
  elif dim == 4 and size[3] == 1:
    img = img[:, :, :, 0]
  elif dim != 3:
    raise ScanReadError(f"{path}: {dim}D image (size {size}); expected a 3D volume")
  size = img.GetSize()
  if not allow_2d and sum(s > 1 for s in size) < 3:
    raise ScanReadError(
        f"{path}: 2D image (size x,y,z = {size}, a single slice); a 3D volume is required for "
        "scoring (pass allow_2d=True to read it as a 1-slice volume)")
  return img


def _source_geometry(img: sitk.Image, path: str) -> SourceGeometry:
  direction = tuple(float(v) for v in img.GetDirection())
  return SourceGeometry(
      size_xyz=tuple(int(s) for s in img.GetSize()),
      spacing_xyz=tuple(float(s) for s in img.GetSpacing()),
      origin_xyz=tuple(float(o) for o in img.GetOrigin()),
      direction=direction,
      orientation=sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction),
      path=os.path.abspath(path),
  )


def _check_ct_range(hu: np.ndarray, path: str) -> None:
  """Raises ScanReadError when finite HU values are implausible for CT."""
  hmax = float(hu.max())
  if hmax < _MIN_MAX_HU:
    raise ScanReadError(
        f"{path}: does not look like CT in HU: maximum value {hmax:.1f} is below {_MIN_MAX_HU} "
        "(no tissue at all)")
  flat = hu.reshape(-1)
  step = max(1, flat.size // _PERCENTILE_SAMPLES)
  p1, p99 = (float(v) for v in np.percentile(flat[::step], [1.0, 99.0]))
  if p99 > _MAX_P99_HU or p1 > _MAX_P1_HU:
    raise ScanReadError(
        f"{path}: does not look like CT in HU: 1st-99th percentile range {p1:.1f}..{p99:.1f} "
        f"lies far outside -1024..4000 HU (unscaled raw values or another modality?)")


def _canonical(img: sitk.Image) -> sitk.Image:
  return sitk.DICOMOrient(img, CANONICAL)


def _reference_image(like: Scan, pixel_id=sitk.sitkUInt8) -> sitk.Image:
  """An (empty) image with `like`'s current geometry, for sitk.Resample."""
  z, y, x = like.shape
  ref = sitk.Image(int(x), int(y), int(z), pixel_id)
  ref.SetSpacing(tuple(float(s) for s in like.spacing[::-1]))
  ref.SetOrigin(tuple(float(o) for o in like.origin))
  ref.SetDirection(tuple(float(d) for d in like.direction))
  return ref


def _same_grid(img: sitk.Image, like: Scan, rtol: float = 1e-5) -> bool:
  """True if `img` (3D) has exactly `like`'s grid (size, spacing, origin, direction)."""
  if tuple(img.GetSize()) != tuple(like.shape[::-1]):
    return False
  sp = np.asarray(like.spacing[::-1])
  return (np.allclose(img.GetSpacing(), sp, rtol=rtol, atol=0)
          and np.allclose(img.GetDirection(), like.direction, atol=1e-6)
          and np.all(np.abs(np.subtract(img.GetOrigin(), like.origin)) <= 1e-3 * sp.min()))


# ---------------------------------------------------------------------------------------------
# Public API.


def read_scan(path: PathLike, allow_2d: bool = False) -> Scan:
  """Reads a CT volume in HU, validated and in canonical LPS orientation.

  Args:
    path: a file SimpleITK reads (.nii, .nii.gz, .mha, .mhd, .nrrd, .dcm, ...) or a folder
      with a DICOM series (the series with the most files is read, slices sorted by position;
      rescale slope/intercept are applied by SimpleITK).
    allow_2d: accept a single 2D image as a 1-slice volume (not usable for scoring).

  Returns:
    A `Scan` with `hu` float32 (z, y, x) in HU, values below -1024 (FOV padding) clipped to
    -1024, canonical LPS geometry, `source` = the file's geometry and orientation, and `meta`
    holding only non-identifying fields ("format", and for DICOM "modality" / "kvp" if present).

  Raises:
    FileNotFoundError: the path does not exist.
    ScanReadError: unreadable/corrupt file, 2D image (unless allowed), zero-size axis,
      non-positive spacing, NaN/inf values, or values that do not look like CT in HU.
  """
  path = os.fspath(path)
  img, meta = _read_image(path, "image")
  img = _check_geometry(img, path, allow_2d)
  source = _source_geometry(img, path)
  if source.orientation != CANONICAL:
    img = _canonical(img)  # on the stored pixel type (int16 for most CT: half the memory)
  hu = sitk.GetArrayViewFromImage(img).astype(np.float32)  # (z, y, x), a copy
  if not np.all(np.isfinite(hu)):
    n_bad = int(np.size(hu) - np.count_nonzero(np.isfinite(hu)))
    raise ScanReadError(f"{path}: {n_bad} voxels hold NaN or infinite values")
  np.maximum(hu, HU_FLOOR, out=hu)
  _check_ct_range(hu, path)
  spacing_zyx = tuple(float(s) for s in img.GetSpacing()[::-1])
  return Scan(hu=hu, spacing=spacing_zyx, origin=tuple(float(o) for o in img.GetOrigin()),
              direction=tuple(float(d) for d in img.GetDirection()), source=source, meta=meta)


def read_mask(path: PathLike, like: Scan) -> np.ndarray:
  """Reads an integer mask / label map onto `like`'s grid by physical coordinates.

  The file may be on any voxel grid and orientation: every voxel centre of `like` takes the
  value of the nearest voxel of the file (0 outside the file's extent).

  Args:
    path: mask or label-map file (or DICOM folder).
    like: the scan whose grid the result is on.

  Returns:
    int32 array with shape `like.shape` (z, y, x), the file's values unchanged.

  Raises:
    FileNotFoundError, ScanReadError: missing/unreadable file, non-integer values, or a
      non-empty mask that does not overlap `like` at all.
  """
  path = os.fspath(path)
  img, _ = _read_image(path, "mask")
  img = _check_geometry(img, path, allow_2d=True)
  if img.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
    values = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
      raise ScanReadError(f"{path}: mask/label map holds non-integer values")
    img = sitk.Cast(img, sitk.sitkInt32)
  code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())
  canon = img if code == CANONICAL else _canonical(img)
  if _same_grid(canon, like):
    out = sitk.GetArrayViewFromImage(canon).astype(np.int32)
  else:
    out = sitk.GetArrayFromImage(
        sitk.Resample(img, _reference_image(like), sitk.Transform(), sitk.sitkNearestNeighbor,
                      0.0, img.GetPixelID()))
    if not np.any(out) and np.any(sitk.GetArrayViewFromImage(img)):
      raise ScanReadError(
          f"{path}: mask is non-empty but does not overlap the scan's physical extent "
          "(wrong file pairing or broken geometry?)")
  return out.astype(np.int32, copy=False)


def read_labels(path: PathLike, like: Scan) -> np.ndarray:
  """Reads a reference-encoded label map onto `like`'s grid; returns int32 classes 0..6.

  Raises ScanReadError naming the file and every unknown label value.
  """
  ref = read_mask(path, like)
  try:
    return labels_lib.reference_to_classes(ref)
  except ValueError as e:
    raise ScanReadError(f"{os.fspath(path)}: {e}") from None


def _to_sitk_dtype(array: np.ndarray) -> np.ndarray:
  if array.dtype == np.bool_:
    return array.astype(np.uint8)
  if array.dtype == np.float64 or array.dtype == np.float16:
    return array.astype(np.float32)
  if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
      return array.astype(np.int32)
  return array


def _atomic_write(img: sitk.Image, path: PathLike) -> None:
  """Writes `img` to `path` atomically (also for multi-file formats such as .mhd + .raw)."""
  path = os.path.abspath(os.fspath(path))
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-write-", dir=folder)
  try:
    tmp_path = os.path.join(tmp, os.path.basename(path))
    sitk.WriteImage(img, tmp_path, True)
    # Move companion data files (e.g. .raw of a .mhd) first and the named file last.
    names = sorted(os.listdir(tmp), key=lambda n: n == os.path.basename(path))
    for name in names:
      os.replace(os.path.join(tmp, name), os.path.join(folder, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_like(array_zyx: np.ndarray, like: Scan, path: PathLike) -> None:
  """Writes a (z, y, x) array on `like`'s source grid and orientation (atomic).

  Args:
    array_zyx: array with shape `like.shape` in `like`'s (canonical) geometry, e.g. a label map.
    like: the scan the array belongs to. If `like.source` is set, the file gets the source
      file's orientation, origin, spacing and direction exactly, so it overlays the input in
      ITK-SNAP / Slicer. If `like` was resampled since reading (shape differs from the source
      grid), the array is resampled onto the source grid (nearest for integer/bool arrays,
      linear for floats). Without `like.source` the canonical geometry is written.
    path: output file; the extension picks the format (.nii.gz, .mha, .nrrd, ...).
  """
  array_zyx = np.asarray(array_zyx)
  if array_zyx.shape != like.shape:
    raise ValueError(f"array shape {array_zyx.shape} differs from scan shape {like.shape}")
  arr = _to_sitk_dtype(array_zyx)
  img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
  img.SetSpacing(tuple(float(s) for s in like.spacing[::-1]))
  img.SetOrigin(tuple(float(o) for o in like.origin))
  img.SetDirection(tuple(float(d) for d in like.direction))
  src = like.source
  if src is not None:
    oriented = sitk.DICOMOrient(img, src.orientation)
    if tuple(oriented.GetSize()) == tuple(src.size_xyz) and np.allclose(
        oriented.GetSpacing(), src.spacing_xyz, rtol=1e-5) and np.allclose(
            oriented.GetOrigin(), src.origin_xyz, atol=1e-3 * min(src.spacing_xyz)):
      img = oriented
    else:  # `like` was resampled / cropped since reading: resample onto the source grid.
      ref = sitk.Image([int(s) for s in src.size_xyz], img.GetPixelID())
      ref.SetSpacing(src.spacing_xyz)
      ref.SetOrigin(src.origin_xyz)
      ref.SetDirection(src.direction)
      interp = sitk.sitkLinear if arr.dtype.kind == "f" else sitk.sitkNearestNeighbor
      img = sitk.Resample(img, ref, sitk.Transform(), interp, 0.0, img.GetPixelID())
    # Copy the exact source geometry (avoids float round-off from the reorientation).
    img.SetSpacing(src.spacing_xyz)
    img.SetOrigin(src.origin_xyz)
    img.SetDirection(src.direction)
  _atomic_write(img, path)


def write_scan(scan: Scan, path: PathLike) -> None:
  """Writes a scan's HU volume in its own (current) geometry, atomically.

  Integer-valued volumes within the int16 range are stored as int16 (lossless), others as
  float32. Nothing from `scan.meta` is written.
  """
  hu = np.asarray(scan.hu)
  if hu.size and np.all(np.isfinite(hu)) and np.all(hu == np.round(hu)) and \
      hu.min() >= -32768 and hu.max() <= 32767:
    arr = hu.astype(np.int16)
  else:
    arr = hu.astype(np.float32)
  img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
  img.SetSpacing(tuple(float(s) for s in scan.spacing[::-1]))
  img.SetOrigin(tuple(float(o) for o in scan.origin))
  img.SetDirection(tuple(float(d) for d in scan.direction))
  _atomic_write(img, path)


def dicom_series_files(path: PathLike) -> list[str]:
  """The files of the DICOM series `read_scan` reads from folder `path` (the series with the
  most files), in GDCM's slice order: file k is slice k of the image as read, before
  canonical reorientation (so of a label map written back by `write_like`)."""
  path = os.fspath(path)
  series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path)
  if not series:
    raise ScanReadError(f"{path}: folder holds no DICOM series")
  files = {s: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, s) for s in series}
  return list(files[max(series, key=lambda s: (len(files[s]), s))])


def image_info(path: PathLike) -> dict:
  """Header-only geometry of a file (fast; no voxel data read).

  Returns {"size_xyz", "spacing_xyz", "origin_xyz", "direction", "dimension"} in ITK order.
  Raises FileNotFoundError / ScanReadError.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"file not found: {path}")
  if os.path.isdir(path):
    img, _ = _read_image(path)
    return {"size_xyz": img.GetSize(), "spacing_xyz": img.GetSpacing(),
            "origin_xyz": img.GetOrigin(), "direction": img.GetDirection(),
            "dimension": img.GetDimension()}
  reader = sitk.ImageFileReader()
  reader.SetFileName(path)
  try:
    reader.ReadImageInformation()
  except RuntimeError as e:
    raise ScanReadError(f"{path}: unreadable or corrupt file: {_first_line(e)}") from None
  return {"size_xyz": reader.GetSize(), "spacing_xyz": reader.GetSpacing(),
          "origin_xyz": reader.GetOrigin(), "direction": reader.GetDirection(),
          "dimension": reader.GetDimension()}


def same_physical_grid(a: dict, b: dict, tol_fraction: float = 1e-2) -> bool:
  """Whether two `image_info` headers describe the same voxel centres (any axis order/flip).

  Tolerances: spacing relative 1e-4, direction 1e-4, origin `tol_fraction` of a voxel.
  """
  sa, sb = _grid_signature(a), _grid_signature(b)
  if sa is None or sb is None:
    return False
  (axes_a, orig_a), (axes_b, orig_b) = sa, sb
  min_sp = min(min(a["spacing_xyz"][:3]), min(b["spacing_xyz"][:3]))
  for (na, va), (nb, vb) in zip(axes_a, axes_b):
    if na != nb or not np.allclose(va, vb, rtol=1e-4, atol=1e-4 * np.linalg.norm(va)):
      return False
  return bool(np.all(np.abs(orig_a - orig_b) <= tol_fraction * min_sp))


def _grid_signature(info: dict) -> Optional[tuple]:
  """Axis-order/flip-invariant description of a 3D grid: sorted (size, step vector), corner."""
  size = list(info["size_xyz"])
  if len(size) == 2:
    size = size + [1]
  if len(size) != 3:
    return None
  dim = len(info["spacing_xyz"])
  d = np.asarray(info["direction"], dtype=np.float64).reshape(dim, dim)
  if dim == 2:
    d = np.block([[d, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
  spacing = list(info["spacing_xyz"]) + ([1.0] if dim == 2 else [])
  origin = np.asarray(list(info["origin_xyz"]) + ([0.0] if dim == 2 else []), dtype=np.float64)
  axes = []
  for k in range(3):
    v = d[:, k] * spacing[k]
    dominant = int(np.argmax(np.abs(v)))
    if v[dominant] < 0:  # flip so every step points towards + along its dominant axis
      origin = origin + v * (size[k] - 1)
      v = -v
    axes.append((dominant, size[k], v))
  axes.sort(key=lambda t: t[0])
  return [(n, v) for _, n, v in axes], origin
