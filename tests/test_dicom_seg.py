"""DICOM input gets a DICOM SEG (highdicom) that references the source series and reads back
as the NIfTI labels, frame by frame, matched by SOP Instance UID and slice position."""

import dataclasses
import locale
import subprocess
import types

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
import pytest
import SimpleITK as sitk

from cac_jax import checkpoints, labels, phantoms
from cac_jax.data import volume_io
from cac_jax.scoring import dicom_seg, score_files
from tests import system_tools


@pytest.fixture
def keep_locale():
  saved = locale.setlocale(locale.LC_CTYPE)
  yield
  locale.setlocale(locale.LC_CTYPE, saved)


def write_ct_series(scan, folder):
  """`scan` (LPS, identity direction) as a CT series of one file per slice, files named in
  reverse slice order (the reader must sort by position)."""
  folder.mkdir()
  study, series, frame = generate_uid(), generate_uid(), generate_uid()
  hu = np.round(scan.hu).astype(np.int16)
  n = hu.shape[0]
  for k in range(n):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
      "Phantom^Seven",
      "PH7",
      "19700101",
      "O",
    )
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "ACC7"
    ds.ReferringPhysicianName = ""
    ds.InstitutionName = (
      "Secret Hospital"  # not required to reference the series: must not be copied
    )
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "phantom", 1, k + 1
    ds.KVP = 120
    x0, y0, z0 = scan.origin
    ds.ImagePositionPatient = [x0, y0, z0 + k * scan.spacing[0]]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [scan.spacing[1], scan.spacing[2]]
    ds.SliceThickness = scan.spacing[0]
    ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.PixelData = hu[k].tobytes()
    ds.save_as(folder / f"slice_{n - k:04d}.dcm", enforce_file_format=True)
  return folder


def test_dicom_input_writes_a_seg_matching_the_labels(
  tmp_path, keep_locale, tiny_config, tiny_params
):
  config = tiny_config
  case = phantoms.generate_case("ccta", 3, config)
  # A heart-centred crop keeps the test small (the network runs on every candidate near the heart).
  crop = dataclasses.replace(
    case.scan,
    hu=case.scan.hu[10:40].copy(),
    source=None,
    origin=tuple(np.add(case.scan.origin, (0.0, 0.0, 10 * case.scan.spacing[0]))),
  )
  folder = write_ct_series(crop, tmp_path / "dicom")
  export = checkpoints.export_inference(tmp_path / "export", tiny_params, config)
  out = tmp_path / "out"
  report = score_files.score_file(str(folder), export, str(out), heart_mask="none", domain="ccta")
  assert (
    report["scores"]["total"]["volume_mm3"] + report["scores"]["aorta"]["volume_mm3"] > 0
  )  # not vacuous
  files = volume_io.dicom_series_files(folder)
  seg = pydicom.dcmread(out / dicom_seg.SEG_FILE)
  assert (
    seg.Modality == "SEG" and seg.SeriesInstanceUID != pydicom.dcmread(files[0]).SeriesInstanceUID
  )
  assert (
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(files[0]).SeriesInstanceUID
  )
  assert seg.PatientID == "PH7" and "InstitutionName" not in seg
  assert [s.SegmentLabel for s in seg.SegmentSequence] == [
    f"{labels.CLASS_DISPLAY_NAMES[c]} calcium" for c in range(1, labels.NUM_CLASSES)
  ]
  # Frame by frame (matched by SOP Instance UID) equal to the NIfTI labels on the same slice position.
  got = dicom_seg.read_seg_labels(str(out / dicom_seg.SEG_FILE), files)
  nifti = sitk.ReadImage(str(out / "calcium_labels.nii.gz"))
  want = labels.reference_to_classes(sitk.GetArrayFromImage(nifti))
  for k, f in enumerate(files):
    z_file = float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
    z_nifti = nifti.TransformIndexToPhysicalPoint((0, 0, k))[2]
    assert z_file == pytest.approx(z_nifti, abs=1e-3)
  np.testing.assert_array_equal(got, want)
  assert got.any()
  # The SR carries the same scores (Agatston and volume per artery and in total).
  values = _sr_measurements(pydicom.dcmread(out / dicom_seg.SR_FILE))
  for key, site in (
    ("LAD", "Anterior Descending Branch of Left Coronary Artery"),
    ("LCX", "Circumflex Coronary Artery"),
    ("RCA", "Right Coronary Artery"),
    ("total", "Coronary artery"),
  ):
    assert values[(site, "Calcium score")] == pytest.approx(report["scores"][key]["agatston"])
    assert values[(site, "Calcium Volume")] == pytest.approx(report["scores"][key]["volume_mm3"])
  assert ("Coronary artery", "Calcium Mass") not in values  # uncalibrated mass is not in mg
  assert values[("Coronary artery", "Calcium Volume")] > 0  # not vacuous


def _sr_measurements(ds):
  """{(finding site meaning, measurement name meaning): value} of a TID 1500 SR."""
  out = {}

  def walk(items, site):
    for item in items:
      name = item.ConceptNameCodeSequence[0].CodeMeaning
      if name == "Finding Site":
        site = item.ConceptCodeSequence[0].CodeMeaning
    for item in items:
      if item.ValueType == "NUM":
        out[(site, item.ConceptNameCodeSequence[0].CodeMeaning)] = float(
          item.MeasuredValueSequence[0].NumericValue
        )
      if "ContentSequence" in item:
        walk(item.ContentSequence, site)

  walk(ds.ContentSequence, None)
  return out


def _small_series(tmp_path, drop=()):
  """A 4-slice CT series (`write_ct_series`) with the attributes `drop` removed from every file."""
  scan = types.SimpleNamespace(
    hu=np.full((4, 16, 16), -100.0), origin=(0.0, 0.0, 0.0), spacing=(3.0, 0.7, 0.7)
  )
  folder = write_ct_series(scan, tmp_path / "dicom")
  files = volume_io.dicom_series_files(folder)
  for f in files:
    ds = pydicom.dcmread(f)
    for name in drop:
      delattr(ds, name)
    ds.save_as(f, enforce_file_format=True)
  return files


def _scores():
  """A `scores.compute_scores`-shaped dict (what `build_sr` reads)."""
  site = {"agatston": 12.0, "volume_mm3": 10.0, "mass": 2.0}
  return {k: dict(site) for k in ("LAD", "LCX", "RCA", "total", "aortic_valve")} | {
    "mass_calibrated": False
  }


def _write(tmp_path, files):
  """`dicom_seg.writers` on `files` with a small calcium label: (paths written, notes)."""
  classes = np.zeros((len(files), 16, 16), np.int32)
  classes[1, 4:7, 4:7] = labels.LAD
  out, notes = dicom_seg.writers(classes, _scores(), files)
  paths = {}
  for name, write in out.items():
    paths[name] = str(tmp_path / name)
    write(paths[name])
  return paths, notes


def _dciodvfy(path):
  """dciodvfy's error and warning lines for `path` (dicom3tools)."""
  tool = system_tools.find(("dciodvfy",), "dicom3tools")
  proc = subprocess.run([tool, path], capture_output=True, text=True, timeout=120)
  lines = (proc.stdout + proc.stderr).splitlines()
  return [line for line in lines if line.startswith(("Error", "Warning"))]


ANONYMISED = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber")


def test_anonymised_series_gets_seg_and_sr_with_empty_type2(tmp_path):
  files = _small_series(tmp_path, drop=ANONYMISED)
  paths, notes = _write(tmp_path, files)
  assert set(paths) == {dicom_seg.SEG_FILE, dicom_seg.SR_FILE}
  assert len(notes) == 1 and all(name in notes[0] for name in ANONYMISED), notes
  seg = pydicom.dcmread(paths[dicom_seg.SEG_FILE])
  sr = pydicom.dcmread(paths[dicom_seg.SR_FILE])
  for ds in (seg, sr):
    assert ds.PatientID == "PH7" and "PatientBirthDate" in ds and not ds.PatientBirthDate
  assert seg.ContentDescription == dicom_seg.FILLED_DESCRIPTION


def test_complete_series_has_no_note(tmp_path):
  paths, notes = _write(tmp_path, _small_series(tmp_path))
  assert len(paths) == 2 and notes == []
  assert not pydicom.dcmread(paths[dicom_seg.SEG_FILE]).get("ContentDescription")


def test_series_without_uids_gets_a_note_naming_them(tmp_path):
  files = _small_series(tmp_path, drop=("SeriesInstanceUID", "StudyInstanceUID"))
  for f in files:  # the SOP Instance UID of the file meta stays; the dataset's goes
    ds = pydicom.dcmread(f)
    del ds.SOPInstanceUID
    ds.save_as(f, enforce_file_format=False)
  paths, notes = _write(tmp_path, files)
  assert paths == {} and len(notes) == 1
  for name in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
    assert name in notes[0], notes
  assert "FrameOfReferenceUID" not in notes[0] and "('')" not in notes[0]


@pytest.mark.parametrize("drop", [(), ANONYMISED], ids=["complete", "anonymised"])
def test_seg_and_sr_pass_dciodvfy(tmp_path, drop):
  paths, _ = _write(tmp_path, _small_series(tmp_path, drop=drop))
  for path in paths.values():
    assert _dciodvfy(path) == [], path
