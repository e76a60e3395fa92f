"""Evaluate calcium predictions against the manifest's reference labels.

  cac-evaluate --predictions DIR --manifest CSV --output_dir DIR [--split test]

DIR/<id>/calcium_labels.nii.gz per case (reference encoding, input grid). Writes results.md,
results.csv, bland_altman.png and report.html into --output_dir and prints the results table
(see `cac_jax.evaluation.dataset`).

(From a checkout also `python -m launch.evaluate ...`.)
"""

from absl import app, flags

from cac_jax import atomic
from cac_jax.evaluation import dataset

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
  "allow_missing", False, "Skip (and list) cases without a prediction instead of failing."
)
flags.mark_flags_as_required(["predictions", "manifest", "output_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with atomic.claim_dir(_OUTPUT_DIR.value):  # checked and locked before any computation
    results = dataset.evaluate_dataset(
      _PREDICTIONS.value, _MANIFEST.value, split=_SPLIT.value, allow_missing=_ALLOW_MISSING.value
    )
    print(
      dataset.write_report(results, _OUTPUT_DIR.value, predictions_dir=_PREDICTIONS.value),
      end="",
    )


def flag_paths():
  return {
    "--predictions": _PREDICTIONS.value,
    "--manifest": _MANIFEST.value,
    "--output_dir": _OUTPUT_DIR.value,
  }


def run() -> None:  # console script cac-evaluate
  _cli.run(main, flag_paths=flag_paths)


if __name__ == "__main__":
  run()
