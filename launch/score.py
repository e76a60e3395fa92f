r"""Score coronary calcium in one scan or in every scan of a manifest.

One scan (the heart region is found in the scan unless a mask is given):
  cac-score --image scan.nii.gz [--heart_mask auto|none|heart.nii.gz] \
      [--aorta_mask aorta.nii.gz] --checkpoint WORKDIR/export --output_dir OUT [--domain auto]
With a TotalSegmentator output folder (its heart.nii.gz and aorta.nii.gz):
  cac-score --image scan.nii.gz --masks_dir SEG --checkpoint ... --output_dir OUT
Many scans (one sub-folder per case id, plus scores.csv):
  cac-score --manifest data/manifest.csv [--split test] --checkpoint ... --output_dir OUT
One of N shards of a manifest (N runs, on N machines or GPUs, fill one OUT together):
  cac-score --manifest data/manifest.csv --shard K/N --checkpoint ... --output_dir OUT

(From a checkout also `python -m launch.score ...`.)
"""

import logging

from absl import app, flags
from absl import logging as absl_logging

from cac_jax import atomic
from cac_jax.configs import paper
from cac_jax.scoring import score_files

from . import _cli

SCORING = paper.get_config().scoring  # the defaults the help texts name
_IMAGE = flags.DEFINE_string("image", None, "Scan: NIfTI/MHA/NRRD file or DICOM series folder.")
_HEART_MASK = flags.DEFINE_string(
  "heart_mask",
  "auto",
  "Heart mask file (any grid; resampled by physical coordinates), 'auto' "
  "(find the heart region in the scan; docs/scoring.md) or 'none' (classify every candidate). "
  "With --manifest: for rows without a heart mask ('auto' or 'none').",
)
_MASKS_DIR = flags.DEFINE_string(
  "masks_dir",
  None,
  "TotalSegmentator output folder: its heart.nii.gz (and aorta.nii.gz unless "
  "--aorta_mask is given) are used.",
)
_AORTA_MASK = flags.DEFINE_string(
  "aorta_mask", None, "Aorta mask, used for the CCTA threshold ROI."
)
_MANIFEST = flags.DEFINE_string(
  "manifest", None, "Data-set CSV (id,image,label,heart_mask,aorta_mask,domain,split)."
)
_SPLIT = flags.DEFINE_string(
  "split", None, "With --manifest: only score rows of this split (e.g. test)."
)
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "Exported inference checkpoint folder.", required=True
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where outputs go.", required=True)
_DOMAIN = flags.DEFINE_enum(
  "domain", "auto", ["auto", "ncct", "ccta"], "Scan domain; auto decides from the aorta's HU."
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "Replace existing outputs (with --manifest: re-score every case instead of resuming).",
)
_FAIL_FAST = flags.DEFINE_bool(
  "fail_fast",
  False,
  "With --manifest: stop at the first case that fails (default: record it and go on).",
)
_SHARD = flags.DEFINE_string(
  "shard",
  None,
  "With --manifest: K/N (K from 1 to N) scores only the cases whose id hashes to shard K of N "
  "(a stable SHA-256 of the id); N runs into one --output_dir share it, and each rebuilds "
  "scores.csv over every finished case.",
)
_CALIBRATION = flags.DEFINE_float(
  "calibration", None, "Mass-score calibration factor (mg HA/cm³ per HU)."
)
_REGION_GROWING = flags.DEFINE_bool(
  "region_growing", True, "FP reduction: grow detections to 6-connected lesions."
)
_SIZE_LIMITS = flags.DEFINE_bool(
  "size_limits",
  True,
  f"FP reduction: drop lesions <{SCORING.min_lesion_mm3:g} mm³ or >{SCORING.max_lesion_mm3:g} mm³ "
  "(the paper's limits; an export's config may set others, --min/max_lesion_mm3 override them).",
)
_AORTA_THRESHOLD = flags.DEFINE_bool(
  "aorta_threshold",
  True,
  "FP reduction, CCTA: candidates at or above the aortic-lumen mean + 3 SD "
  "(--noaorta_threshold: 130 HU, contrast lumen included, as the paper without FP reduction).",
)
_SERIES = flags.DEFINE_string(
  "series",
  None,
  "DICOM folder with several series: the SeriesInstanceUID to score (default: the series with the most files).",
)
_RECORD_INPUT_PATH = flags.DEFINE_bool(
  "record_input_path",
  False,
  "Store the input's full path in scores.json (off: a path can carry a patient's name).",
)
_HEART_FILTER = flags.DEFINE_bool(
  "heart_filter",
  True,
  "FP reduction: drop lesions outside the dilated heart mask (inference then runs only there; "
  "--noheart_filter classifies every candidate).",
)

# Overrides of the export's `config.scoring` limits: {flag: FPReductionSettings field}.
OVERRIDES = {
  "min_lesion_mm3": "min_mm3",
  "max_lesion_mm3": "max_mm3",
  "heart_dilation_mm": "dilation_mm",
}
_LIMITS = {
  name: flags.DEFINE_float(
    name,
    None,
    f"FP reduction: the {what} instead of the export's config.scoring.{name} "
    f"(the paper's config: {SCORING[name]:g}); recorded in scores.json.",
  )
  for name, what in (
    ("min_lesion_mm3", "smallest kept lesion (mm³)"),
    ("max_lesion_mm3", "largest kept lesion (mm³)"),
    ("heart_dilation_mm", "heart-region dilation (mm)"),
  )
}


def fp_options() -> dict:
  """The FP-reduction switches and the limits given by flag (`score_files`' `fp` argument)."""
  steps = (_REGION_GROWING, _SIZE_LIMITS, _HEART_FILTER, _AORTA_THRESHOLD)
  fp = {holder.name: holder.value for holder in steps}
  fp.update({k: _LIMITS[f].value for f, k in OVERRIDES.items() if _LIMITS[f].value is not None})
  return fp


def main(argv):
  del argv
  if bool(_IMAGE.value) == bool(_MANIFEST.value):
    raise app.UsageError("give exactly one of --image or --manifest")
  if _SHARD.value is not None and not _MANIFEST.value:
    raise app.UsageError("--shard needs --manifest")
  shard = None if _SHARD.value is None else score_files.parse_shard(_SHARD.value)
  if not flags.FLAGS["verbosity"].present:  # --verbosity shows them
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every restore at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)  # and JAX its backend probing
  # checked and locked before any computation; shards of one job share the folder
  with atomic.claim_dir(_OUTPUT_DIR.value, shared=shard is not None):
    _score(fp_options(), shard)


def _score(fp, shard):
  if _IMAGE.value:
    report = score_files.score_file(
      _IMAGE.value,
      _CHECKPOINT.value,
      _OUTPUT_DIR.value,
      heart_mask=_HEART_MASK.value,
      aorta_mask=_AORTA_MASK.value,
      masks_dir=_MASKS_DIR.value,
      domain=_DOMAIN.value,
      overwrite=_OVERWRITE.value,
      calibration=_CALIBRATION.value,
      fp=fp,
      series=_SERIES.value,
      record_input_path=_RECORD_INPUT_PATH.value,
    )
    for line in report["warnings"]:
      absl_logging.warning(line)
    print(score_files.summary_line(_IMAGE.value, report))
    print(f"outputs in {_OUTPUT_DIR.value}")
    print(report["notice"])
  else:
    batch = score_files.score_manifest(
      _MANIFEST.value,
      _CHECKPOINT.value,
      _OUTPUT_DIR.value,
      split=_SPLIT.value,
      domain=_DOMAIN.value,
      overwrite=_OVERWRITE.value,
      calibration=_CALIBRATION.value,
      fp=fp,
      progress=True,
      heart_default=_HEART_MASK.value,
      record_input_path=_RECORD_INPUT_PATH.value,
      fail_fast=_FAIL_FAST.value,
      shard=shard,
    )
    print(f"scores of every scan: {batch.csv_path}")
    print(score_files.pipeline.RESEARCH_NOTICE)
    if batch.failed:  # one line, exit status 2; the others are scored and in scores.csv
      raise ValueError(
        f"{batch.summary()} (scores.csv lists each; fix and run the same command again: "
        "finished cases are skipped)"
      )
    print(batch.summary())


HEART_MASK_WORDS = ("auto", "none")  # --heart_mask values that are not a file


def flag_paths():
  """{"--flag": value} of the flags that name files (`_cli.run` names them in errors).

  `--heart_mask auto|none` names no file: left out, so that an error quoting the word "auto"
  is not blamed on it.
  """
  paths = (_IMAGE, _HEART_MASK, _AORTA_MASK, _MASKS_DIR, _MANIFEST, _CHECKPOINT, _OUTPUT_DIR)
  return {
    f"--{holder.name}": holder.value for holder in paths if holder.value not in HEART_MASK_WORDS
  }


def run() -> None:  # console script cac-score
  _cli.run(main, flag_paths=flag_paths)


if __name__ == "__main__":
  run()
