"""Evaluate calcium predictions against the manifest's reference labels.

  cac-evaluate --predictions DIR --manifest CSV --output_dir DIR [--split test]
  cac-evaluate --predictions DIR --paired CSV --output_dir DIR [--split test]

DIR/<id>/calcium_labels.nii.gz per case (reference encoding, input grid). Writes results.md,
results.csv, bland_altman.png and report.html into --output_dir and prints the results table
(see `cac_jax.evaluation.dataset`). With --paired (a manifest with a `patient` column linking
each patient's ncct and ccta rows) it writes paired.md, paired.csv, paired_confusion.png and
paired_bland_altman.png instead: the CCTA scores against the same patients' NCCT Agatston
(`cac_jax.evaluation.paired`). A case whose prediction is missing or unreadable is left out
of the metrics and named with its reason in results.md and on the console; the exit status is
then 2 (for missing ones only without --allow_missing).

(From a checkout also `python -m launch.evaluate ...`.)
"""

from absl import app, flags

from cac_jax import atomic
from cac_jax.evaluation import dataset, paired

from . import _cli

_PREDICTIONS = flags.DEFINE_string("predictions", None, "Folder with one subfolder per case id.")
_MANIFEST = flags.DEFINE_string("manifest", None, "Manifest CSV (id,image,label,...,split).")
_OUTPUT_DIR = flags.DEFINE_string(
  "output_dir", None, "Folder for results.md/.csv/bland_altman.png."
)
_SPLIT = flags.DEFINE_string(
  "split", None, "Only evaluate manifest rows of this split (e.g. test)."
)
_ALLOW_MISSING = flags.DEFINE_bool(
  "allow_missing",
  False,
  "Cases without a prediction are left out and listed either way; with this flag they do not "
  "make the exit status non-zero (unreadable predictions still do).",
)
_PAIRED = flags.DEFINE_string(
  "paired", None, "Paired manifest CSV (a `patient` column): CCTA vs the same patient's NCCT."
)
flags.mark_flags_as_required(["predictions", "output_dir"])  # and one of --manifest, --paired


_REFERENCE_MIN_VOXELS = flags.DEFINE_integer(
  "reference_min_voxels",
  0,
  "Leave reference components (26-connected) of at most this many voxels out before scoring; "
  "2 is the authors' evaluation reference, 0 the labels as they are.",
  lower_bound=0,
)


def _paired(out: str) -> None:
  agreement, _ = paired.evaluate_paired(_PREDICTIONS.value, _PAIRED.value, split=_SPLIT.value)
  print(paired.write_report(agreement, out), end="")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(_MANIFEST.value) == bool(_PAIRED.value):
    raise app.UsageError("give exactly one of --manifest and --paired")
  with atomic.claim_dir(_OUTPUT_DIR.value):  # checked and locked before any computation
    if _PAIRED.value:
      _paired(_OUTPUT_DIR.value)
      return
    results = dataset.evaluate_dataset(
      _PREDICTIONS.value,
      _MANIFEST.value,
      split=_SPLIT.value,
      allow_missing=_ALLOW_MISSING.value,
      reference_min_voxels=_REFERENCE_MIN_VOXELS.value,
    )
    print(
      dataset.write_report(results, _OUTPUT_DIR.value, predictions_dir=_PREDICTIONS.value),
      end="",
    )
  problems = results.problems()
  if problems:  # one line, exit status 2; the report covers the others and lists these
    raise ValueError(f"{problems}; results.md covers the others and lists these")


def flag_paths():
  return {
    "--predictions": _PREDICTIONS.value,
    "--manifest": _MANIFEST.value,
    "--paired": _PAIRED.value,
    "--output_dir": _OUTPUT_DIR.value,
  }


def run() -> None:  # console script cac-evaluate
  _cli.run(main, flag_paths=flag_paths)


if __name__ == "__main__":
  run()
