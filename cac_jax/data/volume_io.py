"""Reading and writing CT volumes, label maps and masks with their geometry.

Reading (`read_scan`) accepts any single file SimpleITK reads (NIfTI `.nii`/`.nii.gz`, MetaImage
`.mha`/`.mhd`, NRRD, a single DICOM file) or a folder holding a DICOM series. The volume is
brought to the canonical LPS orientation (`SimpleITK.DICOMOrient(img, "LPS")`, identity
direction for axis-aligned scans), returned as a float32 (z, y, x) array in HU, and the file's
own geometry is kept in `Scan.source` so that outputs can be written back on the input's grid
and orientation (`write_like`) and overlay the input in ITK-SNAP / 3D Slicer.

Masks and label maps (`read_mask`, `read_labels`) are placed on a scan's grid by physical
coordinates (nearest neighbour), so a mask stored on another voxel grid lands correctly.

Writes are atomic (`atomic.write_with`): the file is written into a temporary folder next to
the target, checked complete (`check_complete`: a clean end of the gzip stream and as many voxel bytes as the header
announces; a full disk can otherwise leave a short file that SimpleITK still reads) and moved
into place with `os.replace`, so a reader never sees a half-written file.

Reading refuses what would silently give a wrong number: a NIfTI file cut short (SimpleITK
reads it, zero-filling the missing voxels), NaN/Inf voxels (SimpleITK's NIfTI reader turns NaN
into 0, so the raw file is checked), a DICOM series with missing slices (non-uniform slice
positions; SimpleITK would average the spacing), values that are not CT in HU. Values outside
the physical CT range in more than a handful of voxels are kept but listed in
`Scan.meta["warnings"]`, which scoring copies into scores.json.

No patient-identifying DICOM field is ever copied into `Scan.meta`; only modality and kVp.
"""

from __future__ import annotations

import errno
import gzip
import os
import struct
import zlib

import numpy as np
import SimpleITK as sitk

from cac_jax import atomic
from cac_jax import labels as labels_lib
from cac_jax.data.scan import Scan, SourceGeometry

PathLike = str | os.PathLike

CANONICAL = "LPS"
HU_FLOOR = -1024.0  # values below (FOV padding such as -2048 / -3024) are clipped to this
# Plausibility bounds for "is this CT in HU" (see `_check_ct_range`).
_MAX_P99_HU = 6000.0  # 99th percentile above this: not HU (e.g. raw/unscaled or other modality)
_MAX_P1_HU = 3000.0  # 1st percentile above this: no air/tissue at all
_MIN_MAX_HU = -500.0  # maximum below this: no tissue at all
# No air, lung or fat (nothing below -200 HU) and a median denser than contrast blood: stored
# values without the rescale intercept (air at 0 instead of -1024) or another modality.
_MAX_MIN_HU, _MAX_MEDIAN_HU = -200.0, 600.0
_PERCENTILE_SAMPLES = 2_000_000
# Physical CT range: below -1,100 HU only FOV padding (one constant value, clipped to -1024)
# occurs, above 4,000 HU only dense metal; more than `_OUT_OF_RANGE_VOXELS` such voxels get a
# warning (values wrapped by a wrong integer type, e.g. -1,000 stored as 64,536, land there).
CT_RANGE_HU = (-1100.0, 4000.0)
_OUT_OF_RANGE_VOXELS = 10
# In-plane field of view of a chest or heart CT (mm); outside it, the spacing is suspect.
CHEST_FOV_MM = (30.0, 1000.0)
# A DICOM slice gap differing from the median by more than this fraction is a missing slice.
_SLICE_GAP_RTOL = 0.05

# DICOM tags that may be kept: modality and peak kilovoltage. Nothing else.
_SAFE_DICOM_TAGS = {"0008|0060": "modality", "0018|0060": "kvp"}


class ScanReadError(ValueError):
  """A file could not be read as a valid CT volume / mask; the message names file and problem."""


# ---------------------------------------------------------------------------------------------
# Low-level helpers.


def _read_image(
  path: PathLike, what: str = "image", series: str | None = None
) -> tuple[sitk.Image, dict]:
  """Reads a file or DICOM folder with SimpleITK. Returns (image, safe metadata).

  `series` picks a DICOM series of a folder by its SeriesInstanceUID (default: the series
  with the most files; the choice is noted in meta["warnings"] when there are several).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} not found: {path}")
  meta: dict = {"warnings": []}
  if os.path.isdir(path):
    try:
      series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path)
    except RuntimeError as e:
      raise ScanReadError(f"{path}: cannot list DICOM series: {_first_line(e)}") from None
    if not series_ids:
      raise ScanReadError(f"{path}: folder holds no DICOM series")
    files_per_series = {
      s: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, s) for s in series_ids
    }
    if series is not None:
      if series not in files_per_series:
        listing = ", ".join(f"{s} ({len(f)} files)" for s, f in sorted(files_per_series.items()))
        raise ScanReadError(
          f"{path}: no DICOM series with UID {series!r}; the folder holds {listing}"
        )
      best = series
    else:
      best = max(series_ids, key=lambda s: (len(files_per_series[s]), s))
      if len(series_ids) > 1:
        # The UIDs go to the error message of a wrong --series only, not into outputs.
        others = sorted(len(files_per_series[s]) for s in series_ids if s != best)
        meta["warnings"].append(
          f"the DICOM folder holds {len(series_ids)} series; scored the one with the most files "
          f"({len(files_per_series[best])} files; the others have {others}); choose another with "
          "--series UID (a wrong UID lists them)"
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_per_series[best])  # sorted by slice position by GDCM
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
      img = reader.Execute()
    except RuntimeError as e:
      raise ScanReadError(f"{path}: cannot read DICOM series {best}: {_first_line(e)}") from None
    _check_slice_positions(reader, len(files_per_series[best]), path)
    for tag, key in _SAFE_DICOM_TAGS.items():
      if reader.HasMetaDataKey(0, tag):
        meta[key] = reader.GetMetaData(0, tag).strip()
    meta["format"] = "dicom"
    meta["num_series_in_folder"] = len(series_ids)
  else:
    check_complete(path)
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
    meta["format"] = "dicom" if len(meta) > 1 else _format_from_name(path)
  if "kvp" in meta:
    try:
      meta["kvp"] = float(meta["kvp"])
    except ValueError:
      del meta["kvp"]
  return img, meta


def _check_slice_positions(reader: sitk.ImageSeriesReader, n: int, path: str) -> None:
  """Raises ScanReadError when a DICOM series' slices are not evenly spaced.

  SimpleITK stacks the slices on one averaged spacing, so a missing slice would shift every
  slice beyond it (and every lesion's volume) without a word. Positions are
  ImagePositionPatient projected on the slice normal; series without positions pass.
  """
  if n < 3:
    return
  try:
    cosines = [float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
    pos = np.array(
      [[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)]
    )
  except (RuntimeError, ValueError):
    return  # no (readable) position tags: nothing to check against
  if len(cosines) != 6 or pos.shape != (n, 3):
    return
  normal = np.cross(cosines[:3], cosines[3:])
  z = np.sort(pos @ normal)
  gaps = np.diff(z)
  median = float(np.median(gaps))
  if median <= 0:
    raise ScanReadError(
      f"{path}: DICOM slices share one position (duplicate slices?); "
      "remove the duplicates or pick one series with --series"
    )
  bad = np.flatnonzero(np.abs(gaps - median) > _SLICE_GAP_RTOL * median)
  if bad.size:
    i = int(bad[0])
    raise ScanReadError(
      f"{path}: DICOM slice positions are not evenly spaced ({bad.size} irregular gap(s); "
      f"e.g. {gaps[i]:.2f} mm between slices {i} and {i + 1}, median {median:.2f} mm): missing "
      "slices? Scoring on an averaged spacing would misplace every slice; export the complete "
      "series"
    )


def check_complete(path: PathLike) -> None:
  """Raises ScanReadError when an image file is cut short or (NIfTI) holds NaN/Inf voxels.

  A `.gz` file must end with a clean end of the gzip stream. A NIfTI file (`.nii`,
  `.nii.gz`; NIfTI-1 or -2) must hold at least the voxel bytes its header announces, and
  float voxels are checked for NaN/Inf in the raw file, because SimpleITK reads a short
  file by zero-filling and turns NaN into 0. Other formats are left to SimpleITK. Reads
  the file once in 4 MiB chunks (memory stays bounded).
  """
  path = os.fspath(path)
  name = os.path.basename(path).lower()
  is_gz, is_nifti = name.endswith(".gz"), name.endswith((".nii", ".nii.gz"))
  if not (is_gz or is_nifti):
    return
  try:
    with gzip.open(path, "rb") if is_gz else open(path, "rb") as f:
      chunk = f.read(540) if is_nifti else b""
      need, dtype = _nifti_layout(chunk, path) if is_nifti else (None, None)
      start, end = need if need is not None else (0, 0)
      end += start
      got, tail = 0, b""
      while chunk:
        if dtype is not None and got + len(chunk) > start and got < end:
          data = chunk[max(start - got, 0) : max(end - got, 0)]
          tail = _check_finite(tail + data, dtype, path)
        got += len(chunk)
        chunk = f.read(1 << 22)
  except (EOFError, OSError, zlib.error) as e:
    raise ScanReadError(
      f"{path}: file is truncated or corrupt ({e}); the file was probably cut "
      "short (interrupted copy or full disk): copy or export it again"
    ) from None
  if need is not None and got < end:
    raise ScanReadError(
      f"{path}: file is truncated: its header announces {need[1]} voxel bytes from offset "
      f"{start}, the file holds {max(got - start, 0)}; copy or export it again"
    )


def _nifti_layout(header: bytes, path: str):
  """((voxel offset, voxel bytes), float dtype or None) from a NIfTI-1/2 header."""
  if len(header) < 348:
    raise ScanReadError(f"{path}: file is truncated (shorter than a NIfTI header)")
  for end in ("<", ">"):
    size = struct.unpack(end + "i", header[:4])[0]
    if size == 348:
      dims = struct.unpack(end + "8h", header[40:56])
      datatype, bitpix = struct.unpack(end + "2h", header[70:74])
      offset = int(struct.unpack(end + "f", header[108:112])[0])
      break
    if size == 540 and len(header) >= 540:
      datatype, bitpix = struct.unpack(end + "2h", header[12:16])
      dims = struct.unpack(end + "8q", header[16:80])
      offset = int(struct.unpack(end + "q", header[168:176])[0])
      break
  else:
    return None, None  # not a NIfTI header we know: leave it to SimpleITK
  ndim = int(dims[0])
  if not 1 <= ndim <= 7 or any(int(d) < 0 for d in dims[1 : ndim + 1]):
    return None, None
  count = int(np.prod([int(d) for d in dims[1 : ndim + 1]], dtype=np.int64))
  dtype = {16: np.dtype(end + "f4"), 64: np.dtype(end + "f8")}.get(int(datatype))
  return (max(offset, size), count * max(int(bitpix), 0) // 8), dtype


def _check_finite(buf: bytes, dtype: np.dtype, path: str) -> bytes:
  """Raises on NaN/Inf among the whole float values in `buf`; returns the incomplete tail."""
  n = len(buf) // dtype.itemsize * dtype.itemsize
  values = np.frombuffer(buf[:n], dtype)
  if not np.all(np.isfinite(values)):
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    raise ScanReadError(
      f"{path}: the file holds NaN or infinite voxel values (at least {bad}); "
      "fill them (e.g. with -1024 HU) before scoring"
    )
  return buf[n:]


def _first_line(e: Exception) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  # ITK errors look like "Exception thrown in SimpleITK ... \n ... : description"; keep the
  # most informative (last) line.
  return lines[-1] if lines else type(e).__name__


def _format_from_name(path: str) -> str:
  name = os.path.basename(path).lower()
  for ext, fmt in (
    (".nii.gz", "nifti"),
    (".nii", "nifti"),
    (".mha", "metaimage"),
    (".mhd", "metaimage"),
    (".nrrd", "nrrd"),
    (".nhdr", "nrrd"),
    (".dcm", "dicom"),
  ):
    if name.endswith(ext):
      return fmt
  return "other"


def _check_geometry(img: sitk.Image, path: str, allow_2d: bool) -> sitk.Image:
  """Checks dimension, size and spacing; returns a 3D image."""
  if img.GetNumberOfComponentsPerPixel() != 1:
    raise ScanReadError(
      f"{path}: image has {img.GetNumberOfComponentsPerPixel()} components per voxel "
      "(colour/vector image); expected a scalar CT volume"
    )
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
        f"{path}: 2D image (size {size}); a 3D volume is required for scoring (for a DICOM "
        "series give the folder of all its slices, not one file)"
      )
    img = sitk.JoinSeries(img)
  elif dim == 4 and size[3] == 1:
    img = img[:, :, :, 0]
  elif dim != 3:
    raise ScanReadError(f"{path}: {dim}D image (size {size}); expected a 3D volume")
  size = img.GetSize()
  if not allow_2d and sum(s > 1 for s in size) < 3:
    raise ScanReadError(
      f"{path}: 2D image (size x,y,z = {size}, a single slice); a 3D volume is required for "
      "scoring (for a DICOM series give the folder of all its slices, not one file)"
    )
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
      "(no tissue at all)"
    )
  flat = hu.reshape(-1)
  step = max(1, flat.size // _PERCENTILE_SAMPLES)
  p1, p50, p99 = (float(v) for v in np.percentile(flat[::step], [1.0, 50.0, 99.0]))
  if p99 > _MAX_P99_HU or p1 > _MAX_P1_HU:
    raise ScanReadError(
      f"{path}: does not look like CT in HU: 1st-99th percentile range {p1:.1f}..{p99:.1f} "
      f"lies far outside -1024..4000 HU (unscaled raw values or another modality?)"
    )
  hmin = float(hu.min())
  if hmin > _MAX_MIN_HU and p50 > _MAX_MEDIAN_HU:
    raise ScanReadError(
      f"{path}: does not look like CT in HU: no air, lung or fat (minimum {hmin:.0f} HU) and a "
      f"median of {p50:.0f} HU (raw stored values without the rescale slope/intercept, or "
      "another modality?)"
    )


def _out_of_range_warnings(hu: np.ndarray) -> list[str]:
  """Warnings for more than a handful of voxels outside the physical CT range `CT_RANGE_HU`.

  FOV padding (the scan's minimum, one constant value such as -2048 or -3024) is not counted.
  """
  lo, hi = CT_RANGE_HU
  notes = []
  n_high = int(np.count_nonzero(hu > hi))
  if n_high > _OUT_OF_RANGE_VOXELS:
    notes.append(
      f"{n_high} voxels above {hi:.0f} HU (maximum {float(hu.max()):.0f} HU): metal, or "
      "values wrapped by a wrong integer type; calcium scores there are not reliable"
    )
  low = hu < lo
  n_low = int(np.count_nonzero(low & (hu != hu.min())))
  if n_low > _OUT_OF_RANGE_VOXELS:
    notes.append(
      f"{n_low} voxels below {lo:.0f} HU other than FOV padding (clipped to "
      f"{HU_FLOOR:.0f} HU): check the rescale slope/intercept"
    )
  return notes


def _extent_warnings(img: sitk.Image) -> list[str]:
  """A warning when the in-plane field of view is implausible for a chest CT.

  Catches a wrong spacing in the header: e.g. 0.1 mm for 1 mm scores a 5 cm chest as a 5 mm
  one."""
  lo, hi = CHEST_FOV_MM
  fov = [n * s for n, s in zip(img.GetSize()[:2], img.GetSpacing()[:2])]
  if min(fov) < lo or max(fov) > hi:
    return [
      f"the in-plane field of view is {fov[0]:.0f} x {fov[1]:.0f} mm, outside the "
      f"{lo:.0f}-{hi:.0f} mm of a chest or heart CT: check the voxel spacing in the header "
      f"({', '.join(f'{v:.3g}' for v in img.GetSpacing())} mm); volumes and scores scale with it"
    ]
  return []


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


def format_numbers(values) -> str:
  """(a, b, c) with 4 significant digits each, for geometry in messages."""
  return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _same_grid(img: sitk.Image, like: Scan, rtol: float = 1e-5) -> bool:
  """True if `img` (3D) has exactly `like`'s grid (size, spacing, origin, direction)."""
  if tuple(img.GetSize()) != tuple(like.shape[::-1]):
    return False
  sp = np.asarray(like.spacing[::-1])
  return (
    np.allclose(img.GetSpacing(), sp, rtol=rtol, atol=0)
    and np.allclose(img.GetDirection(), like.direction, atol=1e-6)
    and np.all(np.abs(np.subtract(img.GetOrigin(), like.origin)) <= 1e-3 * sp.min())
  )


# ---------------------------------------------------------------------------------------------
# Public API.


def read_scan(path: PathLike, allow_2d: bool = False, series: str | None = None) -> Scan:
  """Reads a CT volume in HU, validated and in canonical LPS orientation.

  Args:
    path: a file SimpleITK reads (.nii, .nii.gz, .mha, .mhd, .nrrd, .dcm, ...) or a folder
      with a DICOM series (the series with the most files is read, slices sorted by position;
      rescale slope/intercept are applied by SimpleITK).
    allow_2d: accept a single 2D image as a 1-slice volume (not usable for scoring).
    series: SeriesInstanceUID of the DICOM series to read from a folder (default: the series
      with the most files, noted in meta["warnings"] when the folder holds several).

  Returns:
    A `Scan` with `hu` float32 (z, y, x) in HU, values below -1024 (FOV padding) clipped to
    -1024, canonical LPS geometry, `source` = the file's geometry and orientation, and `meta`
    holding only non-identifying fields ("format", "warnings": list of str, and for DICOM
    "modality" / "kvp" if present).

  Raises:
    FileNotFoundError: the path does not exist.
    ScanReadError: unreadable/corrupt/truncated file, 2D image (unless allowed), zero-size
      axis, non-positive spacing, NaN/inf values, values that do not look like CT in HU, a
      DICOM series with unevenly spaced slices or an unknown `series`.
  """
  path = os.fspath(path)
  img, meta = _read_image(path, "image", series=series)
  img = _check_geometry(img, path, allow_2d)
  source = _source_geometry(img, path)
  if source.orientation != CANONICAL:
    img = _canonical(img)  # on the stored pixel type (int16 for most CT: half the memory)
  stored = sitk.GetArrayViewFromImage(img)
  hu = stored.astype(np.float32)  # (z, y, x), a copy
  if stored.dtype.kind == "f" and not np.all(np.isfinite(hu)):  # integers are always finite
    n_bad = int(np.size(hu) - np.count_nonzero(np.isfinite(hu)))
    raise ScanReadError(f"{path}: {n_bad} voxels hold NaN or infinite values")
  meta["warnings"] += _out_of_range_warnings(hu) + _extent_warnings(img)
  np.maximum(hu, HU_FLOOR, out=hu)
  _check_ct_range(hu, path)
  spacing_zyx = tuple(float(s) for s in img.GetSpacing()[::-1])
  return Scan(
    hu=hu,
    spacing=spacing_zyx,
    origin=tuple(float(o) for o in img.GetOrigin()),
    direction=tuple(float(d) for d in img.GetDirection()),
    source=source,
    meta=meta,
  )


def read_mask(path: PathLike, like: Scan, resample: bool = True) -> np.ndarray:
  """Reads an integer mask / label map onto `like`'s grid by physical coordinates.

  The file may be on any voxel grid and orientation: every voxel centre of `like` takes the
  value of the nearest voxel of the file (0 outside the file's extent).

  Args:
    path: mask or label-map file (or DICOM folder).
    like: the scan whose grid the result is on.
    resample: False: the file must lie on `like`'s voxel grid (any orientation), e.g. a
      prediction compared voxel by voxel with a reference; ScanReadError otherwise.

  Returns:
    int32 array with shape `like.shape` (z, y, x), the file's values unchanged.

  Raises:
    FileNotFoundError, ScanReadError: missing/unreadable file, non-integer values, a
      non-empty mask that does not overlap `like` at all, or (`resample=False`) a file on
      another grid.
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
  elif not resample:
    raise ScanReadError(
      f"{path}: not on the same voxel grid as the scan (size {canon.GetSize()} vs "
      f"{like.shape[::-1]}, spacing {format_numbers(canon.GetSpacing())} vs {format_numbers(like.spacing[::-1])}, "
      f"origin {format_numbers(canon.GetOrigin())} vs {format_numbers(like.origin)} mm, x y z order)"
    )
  else:
    out = sitk.GetArrayFromImage(
      sitk.Resample(
        img,
        _reference_image(like),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0.0,
        img.GetPixelID(),
      )
    )
    if not np.any(out) and np.any(sitk.GetArrayViewFromImage(img)):
      raise ScanReadError(
        f"{path}: mask is non-empty but does not overlap the scan's physical extent "
        "(wrong file pairing or broken geometry?)"
      )
  return out.astype(np.int32, copy=False)


def read_labels(path: PathLike, like: Scan, resample: bool = True) -> np.ndarray:
  """Reads a reference-encoded label map onto `like`'s grid; returns int32 classes 0..6.

  `resample` as in `read_mask`. Raises ScanReadError naming the file and every unknown label
  value.
  """
  return read_reference(path, like, resample)[0]


def read_reference(
  path: PathLike, like: Scan, resample: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
  """Reads a reference-encoded label map onto `like`'s grid (`resample` as in `read_mask`).

  Returns (int32 classes 0..6, bool left-main mask or None when the map does not label the left
  main apart)."""
  ref = read_mask(path, like, resample)
  try:
    return labels_lib.reference_to_classes(ref), labels_lib.left_main_mask(ref)
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


def _write_image(img: sitk.Image, path: PathLike) -> None:
  """Writes `img` to `path` atomically, checked complete before it is moved into place.

  Atomic by `atomic.write_with` (also multi-file formats such as .mhd + .raw); checked by
  `check_complete`, because a full disk can make SimpleITK stop writing early without an
  error."""
  path = os.fspath(path)

  def _write(tmp_path: str) -> None:
    try:
      sitk.WriteImage(img, tmp_path, True)
    except RuntimeError as e:
      raise OSError(
        errno.EIO, f"cannot write the image ({_first_line(e)}; disk full?)", path
      ) from None

  def _verify(tmp_path: str) -> None:
    try:
      check_complete(tmp_path)
    except ScanReadError:
      raise OSError(
        errno.EIO, "the written file is incomplete (disk full?); nothing was moved into place", path
      ) from None

  atomic.write_with(path, _write, verify=_verify)


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
  _write_image(_source_image(array_zyx, like), path)


def source_array(array_zyx: np.ndarray, like: Scan) -> np.ndarray:
  """`array_zyx` on `like`'s source grid, as `write_like` writes it, in the file's (k, j, i) order.

  Indexed in the source file's own (k, j, i) order: for a DICOM series, [k] is the slice of the
  k-th file in GDCM's order (`dicom_series_files`)."""
  return sitk.GetArrayFromImage(_source_image(array_zyx, like))


def _source_image(array_zyx: np.ndarray, like: Scan) -> sitk.Image:
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
    if (
      tuple(oriented.GetSize()) == tuple(src.size_xyz)
      and np.allclose(oriented.GetSpacing(), src.spacing_xyz, rtol=1e-5)
      and np.allclose(oriented.GetOrigin(), src.origin_xyz, atol=1e-3 * min(src.spacing_xyz))
    ):
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
  return img


def write_scan(scan: Scan, path: PathLike) -> None:
  """Writes a scan's HU volume in its own (current) geometry, atomically.

  Integer-valued volumes within the int16 range are stored as int16 (lossless), others as
  float32. Nothing from `scan.meta` is written.
  """
  hu = np.asarray(scan.hu)
  if (
    hu.size
    and np.all(np.isfinite(hu))
    and np.all(hu == np.round(hu))
    and hu.min() >= -32768
    and hu.max() <= 32767
  ):
    arr = hu.astype(np.int16)
  else:
    arr = hu.astype(np.float32)
  img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
  img.SetSpacing(tuple(float(s) for s in scan.spacing[::-1]))
  img.SetOrigin(tuple(float(o) for o in scan.origin))
  img.SetDirection(tuple(float(d) for d in scan.direction))
  _write_image(img, path)


def dicom_series_files(path: PathLike, series: str | None = None) -> list[str]:
  """The files of the DICOM series `read_scan(path, series=series)` reads, in GDCM's slice order.

  From folder `path` (by default the series with the most files); file k is slice k of the
  image as read, before canonical reorientation (so of a label map written back by
  `write_like`)."""
  path = os.fspath(path)
  ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path)
  if not ids or (series is not None and series not in ids):
    raise ScanReadError(f"{path}: no DICOM series" + (f" with UID {series!r}" if series else ""))
  files = {s: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, s) for s in ids}
  return list(files[series if series is not None else max(ids, key=lambda s: (len(files[s]), s))])


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
    return {
      "size_xyz": img.GetSize(),
      "spacing_xyz": img.GetSpacing(),
      "origin_xyz": img.GetOrigin(),
      "direction": img.GetDirection(),
      "dimension": img.GetDimension(),
    }
  reader = sitk.ImageFileReader()
  reader.SetFileName(path)
  try:
    reader.ReadImageInformation()
  except RuntimeError as e:
    raise ScanReadError(f"{path}: unreadable or corrupt file: {_first_line(e)}") from None
  return {
    "size_xyz": reader.GetSize(),
    "spacing_xyz": reader.GetSpacing(),
    "origin_xyz": reader.GetOrigin(),
    "direction": reader.GetDirection(),
    "dimension": reader.GetDimension(),
  }


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


def _grid_signature(info: dict) -> tuple | None:
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
