"""DICOM input gets a DICOM SEG (highdicom) that references the source series and reads back
as the NIfTI labels, frame by frame, matched by SOP Instance UID and slice position."""

import dataclasses
import locale

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
import pytest
import SimpleITK as sitk

from cac_jax import checkpoints, labels, phantoms
from cac_jax.data import volume_io
from cac_jax.scoring import dicom_seg, score_files


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
