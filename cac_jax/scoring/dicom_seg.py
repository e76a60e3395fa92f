"""DICOM outputs for DICOM input (PACS and DICOM viewers): a calcium SEG and a scores SR.

A Segmentation of the calcium labels (`build_seg`) and a Structured Report of the scores
(`build_sr`); `writers` gives both to `outputs.write_outputs`, which writes them with the other
outputs.

`build_seg` makes one binary DICOM SEG object (highdicom) with one segment per calcium class
(LAD incl. left main, LCX, RCA, aorta, aortic valve, mitral valve), referencing the source CT
series it was scored on. Frames are aligned with the source images by the same slice order
SimpleITK/GDCM used to read the series, so each frame lies on its source slice.

What it copies from the source: highdicom fills the patient, study and frame-of-reference
modules from the source images, as the standard requires for a SEG to reference its series
(patient name/ID/birth date/sex, study UID/date/time/ID, accession number, referring
physician); nothing else (no free-text series or institution fields) is taken over.

Anonymised series: an anonymiser often drops Type 2 attributes of the patient, study and
series modules (`TYPE2_ATTRIBUTES`, e.g. PatientBirthDate). The standard lets Type 2 attributes
be present with an empty value, so `fill_type2` adds the absent ones empty before highdicom
copies them; the SEG's content description and the scan's notes (scores.json) say so. Only a
series without the UIDs a reference needs (`REFERENCE_UIDS`) gets no SEG and SR, with a note
naming the missing ones.

Codes: segmented property category "Morphologically Abnormal Structure" (SCT 49755003), type
"Calcification" (SCT 18115005), with the artery/valve as anatomic region (SCT codes from
pydicom's code dictionary).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import cac_jax
from cac_jax import labels as labels_lib

# highdicom and pydicom stay imported inside the functions: they are heavy imports that only
# DICOM inputs need (scoring a NIfTI file never loads them).

SEG_FILE = "calcium_seg.dcm"
# Type 2 attributes (may be empty, must be present) of the Patient, General Study and General
# Series modules that highdicom copies from the source into the SEG and SR.
TYPE2_ATTRIBUTES = (
  "PatientName",
  "PatientID",
  "PatientBirthDate",
  "PatientSex",
  "StudyDate",
  "StudyTime",
  "ReferringPhysicianName",
  "StudyID",
  "AccessionNumber",
  "SeriesNumber",
)
# What a reference to a source image needs: without these no SEG or SR can point at the series.
REFERENCE_UIDS = (
  "SOPClassUID",
  "SOPInstanceUID",
  "SeriesInstanceUID",
  "StudyInstanceUID",
  "FrameOfReferenceUID",
)
FILLED_DESCRIPTION = "source lacked Type 2 attributes; written empty"


class UnreferenceableSeriesError(ValueError):
  """The source series lacks the UIDs that a SEG or SR needs to reference it."""


def missing_uids(sources: Sequence) -> list[str]:
  """The `REFERENCE_UIDS` absent or empty in any of the `sources` datasets."""
  return [k for k in REFERENCE_UIDS if any(not str(ds.get(k, "") or "").strip() for ds in sources)]


def fill_type2(sources: Sequence) -> list[str]:
  """Add each absent `TYPE2_ATTRIBUTES` to the `sources` datasets with an empty value (in place).

  Returns the names added (in any dataset)."""
  added = []
  for name in TYPE2_ATTRIBUTES:
    for ds in sources:
      if name not in ds:
        setattr(ds, name, None if name == "SeriesNumber" else "")
        if name not in added:
          added.append(name)
  return added


def _segment_descriptions():
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  from pydicom.sr.codedict import codes  # pylint: disable=g-import-not-at-top
  from pydicom.sr.coding import Code  # pylint: disable=g-import-not-at-top

  regions = {
    labels_lib.LAD: codes.SCT.AnteriorDescendingBranchOfLeftCoronaryArtery,
    labels_lib.LCX: codes.SCT.CircumflexCoronaryArtery,
    labels_lib.RCA: codes.SCT.RightCoronaryArtery,
    labels_lib.AORTA: codes.SCT.Aorta,
    labels_lib.AORTIC_VALVE: codes.SCT.AorticValve,
    labels_lib.MITRAL_VALVE: codes.SCT.MitralValve,
  }
  algorithm = hd.AlgorithmIdentificationSequence(
    name="cac_jax", version=cac_jax.__version__, family=codes.cid7162.ArtificialIntelligence
  )
  return [
    hd.seg.SegmentDescription(
      segment_number=cls,
      segment_label=f"{labels_lib.CLASS_DISPLAY_NAMES[cls]} calcium",
      segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
      segmented_property_type=Code("18115005", "SCT", "Calcification"),
      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
      algorithm_identification=algorithm,
      anatomic_regions=[regions[cls]],
    )
    for cls in sorted(regions)
  ]


def build_seg(classes_source: np.ndarray, sources: Sequence, description: str | None = None):
  """A DICOM SEG dataset (highdicom) of `classes_source` referencing the `sources` datasets.

  Args:
    classes_source: int (n_files, rows, columns) classes 0..6 on the source series' own grid,
      frame k on `sources[k]` (`cac_jax.data.volume_io.source_array` of the classes: slices in the order
      GDCM sorted the files).
    sources: the series' pydicom datasets (pixel data not needed) in that order
      (`read_sources`).
    description: the SEG's content description (e.g. `FILLED_DESCRIPTION`), or none.
  Raises ValueError (from highdicom, too) when the series cannot be referenced, e.g. slices
  from different studies or of different sizes.
  """
  import highdicom as hd  # pylint: disable=g-import-not-at-top

  classes_source = np.asarray(classes_source)
  if classes_source.shape[0] != len(sources):
    raise ValueError(f"{classes_source.shape[0]} label slices for {len(sources)} DICOM files")
  rows, cols = int(sources[0].Rows), int(sources[0].Columns)
  if classes_source.shape[1:] != (rows, cols):
    raise ValueError(
      f"label slices {classes_source.shape[1:]} differ from the DICOM matrix {(rows, cols)}"
    )
  return hd.seg.Segmentation(
    source_images=list(sources),
    pixel_array=classes_source.astype(np.uint8),
    segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
    segment_descriptions=_segment_descriptions(),
    series_instance_uid=hd.UID(),
    series_number=9001,
    sop_instance_uid=hd.UID(),
    instance_number=1,
    manufacturer="cac_jax",
    manufacturer_model_name="cac_jax calcium scoring",
    software_versions=cac_jax.__version__,
    device_serial_number="none",
    series_description="CAC research segmentation (not for clinical use)",
    content_description=description,
  )


def read_sources(source_files: Sequence[str]) -> list:
  """The series' files as pydicom datasets without pixel data (what SEG and SR reference)."""
  import pydicom  # pylint: disable=g-import-not-at-top

  return [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]


def writers(
  classes_source: np.ndarray, scores: dict, source_files: Sequence[str]
) -> tuple[dict, list[str]]:
  """({SEG_FILE: write(path), SR_FILE: write(path)}, notes) for `outputs.write_outputs`.

  DICOM outputs are a convenience on top of the scan's results: a series that cannot be
  referenced (missing UIDs, inconsistent study/series attributes, mixed matrix sizes) gives a
  note saying why and no DICOM files instead of failing the scoring. Absent Type 2 attributes
  are written empty, with a note naming them.
  """
  try:
    sources = read_sources(source_files)
    missing = missing_uids(sources)
    if missing:
      raise UnreferenceableSeriesError(
        f"the source series lacks {', '.join(missing)}, which a reference to it needs"
      )
    filled = fill_type2(sources)
    seg = build_seg(classes_source, sources, FILLED_DESCRIPTION if filled else None)
    sr = build_sr(scores, sources)
  except UnreferenceableSeriesError as e:
    return {}, [
      f"no DICOM SEG/SR written: {e}; anonymise keeping (or consistently replacing) the UIDs "
      "to get them (the other outputs are written)"
    ]
  except Exception as e:  # pylint: disable=broad-except
    return {}, [f"no DICOM SEG/SR written: the source series cannot be referenced ({e})"]
  notes = []
  if filled:
    notes.append(
      f"DICOM SEG/SR: the source series lacks {', '.join(filled)}; written empty in the SEG "
      "and SR (Type 2: allowed empty)"
    )
  return {SEG_FILE: seg.save_as, SR_FILE: sr.save_as}, notes


def read_seg_labels(path: str, source_files: Sequence[str]) -> np.ndarray:
  """Read a SEG built by `build_seg` back as int (n_files, rows, columns) classes 0..6.

  Frame k lies on `source_files[k]` (matched by SOP Instance UID, not by frame order)."""
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  import pydicom  # pylint: disable=g-import-not-at-top

  seg = hd.seg.segread(path)
  uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source_files]
  rows, cols = int(seg.Rows), int(seg.Columns)
  out = np.zeros((len(uids), rows, cols), np.int32)
  present = {u for _, _, u in seg.get_source_image_uids()}
  for k, uid in enumerate(uids):
    if uid not in present:
      continue
    pix = seg.get_pixels_by_source_instance(
      source_sop_instance_uids=[uid], combine_segments=True, skip_overlap_checks=True
    )
    out[k] = pix[0]
  return out


SR_FILE = "calcium_sr.dcm"
_SR_SITES = (
  ("LAD", labels_lib.LAD),
  ("LCX", labels_lib.LCX),
  ("RCA", labels_lib.RCA),
  ("total", None),
  ("aortic_valve", labels_lib.AORTIC_VALVE),
)


def build_sr(scores: dict, sources: Sequence):
  """The calcium scores as a DICOM Comprehensive 3D SR dataset referencing the `sources` datasets.

  A TID 1500 measurement report, procedure "Cardiac CT for calcium scoring".

  One measurement group per LAD, LCX, RCA, all coronaries and the aortic valve, each with
  "Calcium score" (DCM 112058, Agatston scoring method, no units), "Calcium Volume" (mm3) and,
  only when calibrated, "Calcium Mass" (mg). `scores`: `cac_jax.scoring.scores.compute_scores`'s dict.
  The SR is marked neither complete nor verified (research output).
  """
  import highdicom as hd  # pylint: disable=g-import-not-at-top
  from pydicom.sr.codedict import codes  # pylint: disable=g-import-not-at-top
  from pydicom.sr.coding import Code  # pylint: disable=g-import-not-at-top

  sites = {
    labels_lib.LAD: codes.SCT.AnteriorDescendingBranchOfLeftCoronaryArtery,
    labels_lib.LCX: codes.SCT.CircumflexCoronaryArtery,
    labels_lib.RCA: codes.SCT.RightCoronaryArtery,
    None: codes.SCT.CoronaryArtery,
    labels_lib.AORTIC_VALVE: codes.SCT.AorticValve,
  }
  groups = []
  for key, cls in _SR_SITES:
    s = scores[key]
    measurements = [
      hd.sr.Measurement(
        name=codes.DCM.CalciumScore,
        value=float(s["agatston"]),
        unit=Code("1", "UCUM", "no units"),
        method=codes.DCM.AgatstonScoringMethod,
      ),
      hd.sr.Measurement(
        name=codes.DCM.CalciumVolume,
        value=float(s["volume_mm3"]),
        unit=Code("mm3", "UCUM", "cubic millimeter"),
      ),
    ]
    if scores.get("mass_calibrated"):
      measurements.append(
        hd.sr.Measurement(
          name=codes.DCM.CalciumMass, value=float(s["mass"]), unit=Code("mg", "UCUM", "milligram")
        )
      )
    groups.append(
      hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=key),
        finding_sites=[hd.sr.FindingSite(sites[cls])],
        measurements=measurements,
      )
    )
  device = hd.sr.ObserverContext(
    observer_type=codes.DCM.Device,
    observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
      uid=hd.UID(), name="cac_jax", model_name=f"cac_jax {cac_jax.__version__} (research use only)"
    ),
  )
  report = hd.sr.MeasurementReport(
    observation_context=hd.sr.ObservationContext(observer_device_context=device),
    procedure_reported=codes.SCT.CardiacCTForCalciumScoring,
    imaging_measurements=groups,
  )
  return hd.sr.Comprehensive3DSR(
    evidence=list(sources),
    content=report[0],
    series_instance_uid=hd.UID(),
    series_number=9002,
    sop_instance_uid=hd.UID(),
    instance_number=1,
    manufacturer="cac_jax",
    series_description="CAC research scores (not for clinical use)",
  )
