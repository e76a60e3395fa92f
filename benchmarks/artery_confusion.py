r"""Where a network's calls on reference calcium land: a voxel confusion table per class.

  python benchmarks/artery_confusion.py --config demo --export runs/demo/source/export \
      --workdir runs/demo --role ncct_test [--experiment_seed 0] [--nofp_reduction]

Scores the experiment's cases of --role (the phantoms `cac-reproduce` wrote under
--workdir/data) with one export, as Table 2's column with (default) or without FP reduction,
and prints, for each reference class, the share of its voxels the network gave each class
(rows: reference, columns: prediction; background = missed), plus reference lesions per class.
A probe, not a package entry point.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from cac_jax import checkpoints  # noqa: E402
from cac_jax import labels as labels_lib  # noqa: E402
from cac_jax.launch import _cli  # noqa: E402
from cac_jax.studies import experiment  # noqa: E402

FLAGS = flags.FLAGS
_cli.define_config("demo", "Experiment config.")
_EXPORT = flags.DEFINE_string("export", None, "Inference export to score with.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "The experiment's work folder (data/).")
_ROLE = flags.DEFINE_enum("role", "ncct_test", list(experiment.ROLES), "Data role to score.")
_FP = flags.DEFINE_bool("fp_reduction", True, "Score with the config's FP reduction.")
flags.mark_flags_as_required(["export"])

NAMES = ("background", "LAD", "LCX", "RCA", "aorta", "aortic valve", "mitral valve")


def confusion(cases, predictions) -> np.ndarray:
  """(7, 7) voxel counts: reference class (row) x predicted class (column)."""
  table = np.zeros((labels_lib.NUM_CLASSES,) * 2, dtype=np.int64)
  for case, pred in zip(cases, predictions):
    ref = np.asarray(case.labels)
    np.add.at(table, (ref[ref > 0], np.asarray(pred)[ref > 0].astype(np.int64)), 1)
  return table


def main(argv):
  del argv
  config = FLAGS.config
  manifest_csv = os.path.join(_WORKDIR.value, "data", "manifest.csv")
  cases = experiment._load(manifest_csv, config, _ROLE.value)
  params = {"net": checkpoints.load_inference(_EXPORT.value)[0]}
  raw = experiment.predict_raw(params, config, cases, _FP.value)["net"]
  scans = experiment.evaluate_predictions(config, cases, raw, _FP.value)
  table = confusion(cases, [s["classes"].dense() for s in scans])
  print(f"{_ROLE.value}, {len(cases)} scans, FP reduction {'on' if _FP.value else 'off'}")
  print("| reference \\ predicted | voxels | " + " | ".join(NAMES) + " |")
  print("|---|---|" + "---|" * len(NAMES))
  for k in range(1, labels_lib.NUM_CLASSES):
    n = table[k].sum()
    shares = " | ".join(f"{v / n:.2f}" if n else "-" for v in table[k])
    print(f"| {NAMES[k]} | {n} | {shares} |")
  lesions = {NAMES[k]: sum(s["metrics"][NAMES[k]].ref_lesions for s in scans) for k in (1, 2, 3)}
  print(f"reference lesions: {lesions}")


if __name__ == "__main__":
  _cli.run(main)
