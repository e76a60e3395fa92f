r"""Score coronary calcium in one scan or in every scan of a manifest.

One scan (the heart region is found in the scan unless a mask is given):
  python -m launch.score --image scan.nii.gz [--heart_mask auto|none|heart.nii.gz] \
      [--aorta_mask aorta.nii.gz] --checkpoint WORKDIR/export --output_dir OUT [--domain auto]
With a TotalSegmentator output folder (its heart.nii.gz and aorta.nii.gz):
  python -m launch.score --image scan.nii.gz --masks_dir SEG --checkpoint ... --output_dir OUT
Many scans (one sub-folder per case id, plus scores.csv):
  python -m launch.score --manifest data/manifest.csv [--split test] --checkpoint ... --output_dir OUT
"""

import logging as std_logging

from absl import app, flags, logging

from cac_jax import scoring_cli

FLAGS = flags.FLAGS
flags.DEFINE_string("image", None, "Scan: NIfTI/MHA/NRRD file or DICOM series folder.")
flags.DEFINE_string("heart_mask", "auto", "Heart mask file (any grid; resampled by physical coordinates), 'auto' "
                    "(find the heart region in the scan; docs/scoring.md) or 'none' (classify every candidate). "
                    "With --manifest: for rows without a heart mask ('auto' or 'none').")
flags.DEFINE_string("masks_dir", None, "TotalSegmentator output folder: its heart.nii.gz (and aorta.nii.gz unless "
                    "--aorta_mask is given) are used.")
flags.DEFINE_string("aorta_mask", None, "Aorta mask, used for the CCTA threshold ROI.")
flags.DEFINE_string("manifest", None, "Data-set CSV (id,image,label,heart_mask,aorta_mask,domain,split).")
flags.DEFINE_string("split", None, "With --manifest: only score rows of this split (e.g. test).")
flags.DEFINE_string("checkpoint", None, "Exported inference checkpoint folder.", required=True)
flags.DEFINE_string("output_dir", None, "Where outputs go.", required=True)
flags.DEFINE_enum("domain", "auto", ["auto", "ncct", "ccta"], "Scan domain; auto decides from the aorta's HU.")
flags.DEFINE_bool("overwrite", False, "Replace existing outputs.")
flags.DEFINE_float("calibration", None, "Mass-score calibration factor (mg HA/cm³ per HU).")
flags.DEFINE_bool("region_growing", True, "FP reduction: grow detections to 6-connected lesions.")
flags.DEFINE_bool("size_limits", True, "FP reduction: drop lesions <1 mm³ or >500 mm³.")
flags.DEFINE_bool("heart_filter", True, "FP reduction: drop lesions outside the dilated heart mask (inference then runs only there; --noheart_filter classifies every candidate).")


def main(argv):
  del argv
  for name in ("absl", "jax"):  # Orbax's INFO lines on restore, JAX's backend probing
    std_logging.getLogger(name).setLevel(std_logging.WARNING)
  if bool(FLAGS.image) == bool(FLAGS.manifest):
    raise app.UsageError("give exactly one of --image or --manifest")
  fp = dict(region_growing=FLAGS.region_growing, size_limits=FLAGS.size_limits, heart_filter=FLAGS.heart_filter)
  if FLAGS.image:
    report = scoring_cli.score_file(FLAGS.image, FLAGS.checkpoint, FLAGS.output_dir, heart_mask=FLAGS.heart_mask,
                                    aorta_mask=FLAGS.aorta_mask, masks_dir=FLAGS.masks_dir, domain=FLAGS.domain, overwrite=FLAGS.overwrite,
                                    calibration=FLAGS.calibration, fp=fp)
    for line in report["warnings"]:
      logging.warning(line)
    print(scoring_cli.summary_line(FLAGS.image, report))
    print(f"outputs in {FLAGS.output_dir}")
    print(report["notice"])
  else:
    csv_path = scoring_cli.score_manifest(FLAGS.manifest, FLAGS.checkpoint, FLAGS.output_dir, split=FLAGS.split,
                                          domain=FLAGS.domain, overwrite=FLAGS.overwrite,
                                          calibration=FLAGS.calibration, fp=fp, progress=True,
                                          heart_default=FLAGS.heart_mask)
    print(f"scores of every scan: {csv_path}")
    print(scoring_cli.pipeline.RESEARCH_NOTICE)


if __name__ == "__main__":
  app.run(main)
