"""Tests for cac_jax.data.volume_io: reading/validating scans, masks by physical coordinates, write-back."""

import locale
import os

import numpy as np
import pytest
import SimpleITK as sitk

from cac_jax import labels as labels_lib
from cac_jax.data import preprocess, volume_io
from cac_jax.data.scan import Scan


def _ct_like(shape=(12, 20, 16), seed=0):
  """A plausible CT array (z, y, x): air, soft tissue and a bright spot."""
  rng = np.random.default_rng(seed)
  a = np.full(shape, -1000.0, np.float32)
  z, y, x = shape
  a[1:-1, 3:-3, 3:-3] = 40.0 + rng.normal(0, 10, (z - 2, y - 6, x - 6))
  a[z // 2, y // 2, x // 2] = 900.0
  return a


def _write(
  array,
  path,
  spacing=(0.8, 0.7, 2.0),
  origin=(-10.0, 5.0, 100.0),
  direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
):
  img = sitk.GetImageFromArray(array)
  img.SetSpacing(spacing)  # (x, y, z)
  img.SetOrigin(origin)
  img.SetDirection([float(d) for d in direction])
  sitk.WriteImage(img, str(path))
  return img


# --- read_scan --------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_read_scan_formats(tmp_path, ext):
  a = _ct_like().astype(np.int16)
  _write(a, tmp_path / f"ct{ext}")
  s = volume_io.read_scan(tmp_path / f"ct{ext}")
  assert s.hu.dtype == np.float32 and s.shape == a.shape
  np.testing.assert_array_equal(s.hu, a)
  assert s.spacing == pytest.approx((2.0, 0.7, 0.8))
  assert s.origin == pytest.approx((-10.0, 5.0, 100.0))
  assert s.source.orientation == "LPS" and s.source.size_xyz == (16, 20, 12)


def test_read_scan_canonicalises_ras(tmp_path):
  a = _ct_like()
  d = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # RAS axes
  img = _write(a, tmp_path / "ras.nii.gz", direction=d)
  s = volume_io.read_scan(tmp_path / "ras.nii.gz")
  assert s.source.orientation == "RAS"
  np.testing.assert_allclose(s.direction_matrix, np.eye(3))
  # The bright voxel is at the same physical point.
  zyx = np.unravel_index(np.argmax(a), a.shape)
  p_file = np.asarray(img.TransformIndexToPhysicalPoint([int(i) for i in zyx[::-1]]))
  zyx_new = np.unravel_index(np.argmax(s.hu), s.shape)
  np.testing.assert_allclose(s.index_to_physical(np.asarray(zyx_new)), p_file, atol=1e-4)


@pytest.fixture
def keep_locale():
  """GDCM's DICOM writer leaves the process's LC_CTYPE at "C" (ASCII default text encoding for
  every later test in the session); restore it."""
  saved = locale.setlocale(locale.LC_CTYPE)
  yield
  locale.setlocale(locale.LC_CTYPE, saved)


def test_read_scan_dicom_series_folder(tmp_path, keep_locale):
  a = _ct_like(shape=(5, 16, 16)).astype(np.int16)
  folder = tmp_path / "dicom"
  folder.mkdir()
  writer = sitk.ImageFileWriter()
  writer.KeepOriginalImageUIDOn()
  # Write slices in shuffled file-name order; the reader must sort them by position.
  for k, z in enumerate([3, 0, 4, 1, 2]):
    sl = sitk.GetImageFromArray(a[z])
    sl.SetSpacing((0.5, 0.5))
    for tag, value in [
      ("0008|0060", "CT"),
      ("0018|0060", "120"),
      ("0010|0010", "Doe^Jane"),
      ("0020|000e", "1.2.3.4.5"),
      ("0020|0013", str(z + 1)),
      ("0020|0032", f"0\\0\\{2.5 * z}"),
      ("0020|0037", "1\\0\\0\\0\\1\\0"),
      ("0028|1052", "0"),
      ("0028|1053", "1"),
    ]:
      sl.SetMetaData(tag, value)
    writer.SetFileName(str(folder / f"f{k}.dcm"))
    writer.Execute(sl)
  s = volume_io.read_scan(folder)
  assert s.shape == (5, 16, 16)
  np.testing.assert_array_equal(s.hu, a)
  assert s.spacing[0] == pytest.approx(2.5)
  assert s.meta.get("modality") == "CT" and s.meta.get("kvp") == 120.0
  assert "Doe" not in repr(s.meta)


def test_read_scan_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
    volume_io.read_scan(tmp_path / "missing.nii.gz")
  bad = tmp_path / "corrupt.nii.gz"
  bad.write_bytes(b"this is not a nifti file at all" * 10)
  with pytest.raises(volume_io.ScanReadError, match="corrupt.nii.gz.*(unreadable|corrupt)"):
    volume_io.read_scan(bad)
  _write(np.full((1, 10, 10), 40, np.int16), tmp_path / "slice.nii.gz")
  with pytest.raises(volume_io.ScanReadError, match="2D image"):
    volume_io.read_scan(tmp_path / "slice.nii.gz")
  nan = _ct_like()
  nan[2, 2, 2] = np.nan
  nan[3, 3, 3] = np.inf
  _write(nan, tmp_path / "nan.mha")  # (ITK's NIfTI reader turns NaN into 0 by itself)
  with pytest.raises(volume_io.ScanReadError, match="nan.mha: 2 voxels hold NaN or infinite"):
    volume_io.read_scan(tmp_path / "nan.mha")
  _write(np.full((8, 10, 10), -900, np.int16), tmp_path / "empty.nii.gz")
  with pytest.raises(volume_io.ScanReadError, match="does not look like CT in HU"):
    volume_io.read_scan(tmp_path / "empty.nii.gz")
  raw = np.random.default_rng(0).integers(20000, 60000, (8, 10, 10)).astype(np.uint16)
  _write(raw, tmp_path / "raw.nii.gz")
  with pytest.raises(volume_io.ScanReadError, match="raw.nii.gz: does not look like CT in HU"):
    volume_io.read_scan(tmp_path / "raw.nii.gz")


def _write_mha_header(path, dim_size, spacing):
  """A MetaImage header + raw data written by hand (SimpleITK refuses to write such files)."""
  n = int(np.prod(dim_size))
  np.full(n, 40, np.int16).tofile(str(path) + ".raw")
  path.write_text(
    "ObjectType = Image\nNDims = 3\n"
    f"DimSize = {' '.join(map(str, dim_size))}\n"
    f"ElementSpacing = {' '.join(map(str, spacing))}\n"
    f"ElementType = MET_SHORT\nElementDataFile = {path.name}.raw\n"
  )


def test_read_scan_non_positive_spacing(tmp_path):
  _write_mha_header(tmp_path / "sp.mha", (6, 5, 4), (1, 0, 1))
  with pytest.raises(
    volume_io.ScanReadError, match="sp.mha: non-positive or invalid voxel spacing"
  ):
    volume_io.read_scan(tmp_path / "sp.mha")
  # A negative spacing is read by ITK as a flipped axis (spacing 0.5, direction -y): a valid grid.
  _write_mha_header(tmp_path / "neg.mha", (6, 5, 4), (1, -0.5, 1))
  s = volume_io.read_scan(tmp_path / "neg.mha")
  assert s.spacing == (1.0, 0.5, 1.0) and s.source.orientation == "LAS"


def test_read_scan_zero_size_axis(tmp_path):
  _write_mha_header(tmp_path / "zero.mha", (6, 0, 4), (1, 1, 1))
  with pytest.raises(volume_io.ScanReadError, match="zero.mha: image has a zero-size axis"):
    volume_io.read_scan(tmp_path / "zero.mha")


def test_padding_clipped(tmp_path):
  a = _ct_like()
  a[:, :2, :] = -3024.0
  _write(a, tmp_path / "pad.nii.gz")
  s = volume_io.read_scan(tmp_path / "pad.nii.gz")
  assert s.hu.min() == -1024.0 and s.hu[:, :2].max() == -1024.0


# --- masks and labels -------------------------------------------------------------------------


def test_read_mask_on_other_grid(tmp_path):
  a = _ct_like()
  _write(a, tmp_path / "ct.nii.gz")
  scan = volume_io.read_scan(tmp_path / "ct.nii.gz")
  # Mask grid: flipped (RAS), larger, shifted by whole voxels.
  big = np.zeros((16, 26, 22), np.uint8)
  zc, yc, xc = (6, 10, 8)  # the bright voxel
  # file RAS index i = (nx_big - 1) - (x + 3), j = (ny_big - 1) - (y + 3), k = z + 2
  big[zc + 2, 25 - (yc + 3), 21 - (xc + 3)] = 1
  origin = np.asarray(scan.origin) + np.array([-3 * 0.8 + 21 * 0.8, -3 * 0.7 + 25 * 0.7, -2 * 2.0])
  _write(big, tmp_path / "m.nii.gz", origin=tuple(origin), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
  m = volume_io.read_mask(tmp_path / "m.nii.gz", scan)
  assert m.shape == scan.shape and m.dtype == np.int32
  assert m.sum() == 1 and m[zc, yc, xc] == 1


def test_read_labels_unknown_values(tmp_path):
  a = _ct_like()
  _write(a, tmp_path / "ct.nii.gz")
  scan = volume_io.read_scan(tmp_path / "ct.nii.gz")
  lab = np.zeros(a.shape, np.uint8)
  lab[1, 1, 1], lab[2, 2, 2], lab[3, 3, 3] = 8, 53, 58
  _write(lab, tmp_path / "lab.nii.gz")
  cls = volume_io.read_labels(tmp_path / "lab.nii.gz", scan)
  assert cls.dtype == np.int32
  assert (cls[1, 1, 1], cls[2, 2, 2], cls[3, 3, 3]) == (
    labels_lib.LAD,
    labels_lib.AORTIC_VALVE,
    labels_lib.MITRAL_VALVE,
  )
  lab[4, 4, 4], lab[5, 5, 5] = 7, 99
  _write(lab, tmp_path / "bad.nii.gz")
  with pytest.raises(volume_io.ScanReadError, match=r"bad.nii.gz.*\[7, 99\]"):
    volume_io.read_labels(tmp_path / "bad.nii.gz", scan)


# --- write-back -------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "direction,code",
  [
    ((-1, 0, 0, 0, -1, 0, 0, 0, 1), "RAS"),
    ((0, 0, 1, 1, 0, 0, 0, 1, 0), "PSL"),
    ((1, 0, 0, 0, 1, 0, 0, 0, -1), "LPI"),
  ],
)
def test_write_like_restores_source_geometry(tmp_path, direction, code):
  a = _ct_like()
  img = _write(a, tmp_path / "in.nii.gz", origin=(12.25, -7.5, 33.0), direction=direction)
  scan = volume_io.read_scan(tmp_path / "in.nii.gz")
  assert scan.source.orientation == code
  np.testing.assert_allclose(scan.direction_matrix, np.eye(3))
  # A marker at a known physical point (the file's bright voxel).
  zyx_file = np.unravel_index(np.argmax(a), a.shape)
  point = img.TransformIndexToPhysicalPoint([int(i) for i in zyx_file[::-1]])
  zyx = np.round(scan.physical_to_index(np.asarray(point))).astype(int)
  assert scan.hu[tuple(zyx)] == 900.0
  marker = np.zeros(scan.shape, np.uint8)
  marker[tuple(zyx)] = 7
  out = tmp_path / "out" / "seg.nii.gz"
  volume_io.write_like(marker, scan, out)
  assert sorted(os.listdir(out.parent)) == ["seg.nii.gz"]  # no temp files left
  w = sitk.ReadImage(str(out))
  r = sitk.ImageFileReader()
  r.SetFileName(str(tmp_path / "in.nii.gz"))
  r.ReadImageInformation()
  assert w.GetSize() == r.GetSize()
  assert w.GetSpacing() == r.GetSpacing()
  assert w.GetOrigin() == r.GetOrigin()
  assert w.GetDirection() == r.GetDirection()
  warr = sitk.GetArrayFromImage(w)
  assert warr.sum() == 7 and warr[zyx_file] == 7
  np.testing.assert_array_equal(warr > 0, a == 900.0)


def test_write_like_after_resampling(tmp_path):
  a = _ct_like(shape=(12, 20, 16))
  _write(
    a, tmp_path / "in.nii.gz", spacing=(1.0, 1.0, 2.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)
  )
  scan = volume_io.read_scan(tmp_path / "in.nii.gz")
  small = preprocess.resample(scan, (1.0, 0.5, 0.5))
  volume_io.write_like((small.hu > 500).astype(np.uint8), small, tmp_path / "o.mha")
  w = sitk.ReadImage(str(tmp_path / "o.mha"))
  assert w.GetSize() == (16, 20, 12) and w.GetDirection() == (-1, 0, 0, 0, -1, 0, 0, 0, 1)
  assert sitk.GetArrayFromImage(w)[6, 10, 8] == 1


def test_write_scan_round_trip_and_atomic(tmp_path):
  s = Scan(hu=_ct_like(), spacing=(2.0, 0.7, 0.8), origin=(1.0, 2.0, 3.0))
  for name in ("s.nii.gz", "s.mhd"):
    volume_io.write_scan(s, tmp_path / name)
    r = volume_io.read_scan(tmp_path / name)
    np.testing.assert_allclose(r.hu, np.round(s.hu), atol=0.5)
    assert r.spacing == pytest.approx(s.spacing) and r.origin == pytest.approx(s.origin)
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
  # Overwriting keeps a complete file.
  volume_io.write_scan(s.with_array(s.hu + 0.5), tmp_path / "s.nii.gz")
  assert volume_io.read_scan(tmp_path / "s.nii.gz").hu[6, 10, 8] == pytest.approx(900.5)


# --- real data --------------------------------------------------------------------------------


def test_real_heart_mask_lands_on_heart(realdata):
  scan = volume_io.read_scan(realdata / "contrast_chest_ct_1.nii.gz")
  assert scan.shape == (112, 102, 122) and scan.spacing == (1.5, 1.5, 1.5)
  mask_path = realdata / "contrast_chest_ct_1_heart.nii.gz"
  m = volume_io.read_mask(mask_path, scan) > 0
  original = sitk.ReadImage(str(mask_path))
  orig = sitk.GetArrayFromImage(original) > 0
  assert orig.shape != scan.shape  # really another grid
  assert m.any()
  mean_hu = float(scan.hu[m].mean())
  # Heart = myocardium (~50-100 HU) + contrast-enhanced blood pool (~300-500 HU, arterial phase).
  assert 0.0 < mean_hu < 600.0, mean_hu
  vol = m.sum() * scan.voxel_volume_mm3
  orig_vol = orig.sum() * np.prod(original.GetSpacing())
  assert vol == pytest.approx(orig_vol, rel=0.03)
  # Naive index placement (top-left corner crop of the larger array) is wrong: mostly lung/air.
  z, y, x = scan.shape
  naive = orig[:z, :y, :x]
  assert float(scan.hu[naive].mean()) < -300.0
  assert (naive & m).sum() < 0.5 * m.sum()


def test_real_pulmonary_artery_same_grid(realdata):
  scan = volume_io.read_scan(realdata / "contrast_chest_ct_1.nii.gz")
  pa = volume_io.read_mask(realdata / "contrast_chest_ct_1_pulmonary_artery.nii.gz", scan) > 0
  assert pa.any() and float(scan.hu[pa].mean()) > 150.0  # contrast-enhanced vessel


def test_real_dicom_slice(realdata):
  path = realdata / "contrast_chest_slice.dcm"
  with pytest.raises(volume_io.ScanReadError, match="contrast_chest_slice.dcm: 2D image"):
    volume_io.read_scan(path)
  s = volume_io.read_scan(path, allow_2d=True)
  assert s.shape == (1, 512, 512) and s.spacing[1:] == (0.625, 0.625)
  raw = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
  assert raw.min() == -2048  # padding outside the FOV ...
  assert s.hu.min() == -1024.0  # ... clipped to air
  np.testing.assert_array_equal(s.hu[raw > -1024], raw[raw > -1024])
  assert set(s.meta) <= {"format", "modality", "kvp", "warnings"}


def test_real_write_like_overlays_input(realdata, tmp_path):
  ct_path = realdata / "contrast_chest_ct_1.nii.gz"
  scan = volume_io.read_scan(ct_path)
  heart = volume_io.read_mask(realdata / "contrast_chest_ct_1_heart.nii.gz", scan).astype(np.uint8)
  volume_io.write_like(heart, scan, tmp_path / "heart_on_ct.nii.gz")
  w = sitk.ReadImage(str(tmp_path / "heart_on_ct.nii.gz"))
  r = sitk.ImageFileReader()
  r.SetFileName(str(ct_path))
  r.ReadImageInformation()
  assert (w.GetSize(), w.GetSpacing(), w.GetOrigin(), w.GetDirection()) == (
    r.GetSize(),
    r.GetSpacing(),
    r.GetOrigin(),
    r.GetDirection(),
  )
  np.testing.assert_array_equal(volume_io.read_mask(tmp_path / "heart_on_ct.nii.gz", scan), heart)
