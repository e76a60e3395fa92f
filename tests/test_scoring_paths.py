"""One scoring path: `launch.score` and the experiment behind `launch.reproduce` give the same labels."""

import os

import numpy as np
import pytest

from cac_jax import checkpoints, phantoms
from cac_jax.data import manifest, volume_io
from cac_jax.scoring import score_files
from cac_jax.studies import experiment


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_config):
  """A CCTA phantom (at the tiny config's working spacing, as the experiment writes them)."""
  return phantoms.write_dataset(
    str(tmp_path_factory.mktemp("phantoms")), "ccta", 1, 3, tiny_config, split="test"
  )


@pytest.mark.parametrize("fp_reduction", [True, False])
def test_launch_score_and_reproduce_give_identical_labels(
  data, tiny_config, tiny_export, tmp_path, fp_reduction
):
  """A Table 2 column's classes (`experiment.predict_columns` + `evaluate_predictions`, as
  `experiment.run` computes them: the FP-reduction column from the whole-scan network outputs
  restricted to the heart region) equal the calcium_labels.nii.gz that `launch.score
  --manifest` writes for the same scan and weights with that column's FP-reduction flags."""
  out = str(tmp_path / "scored")
  s = experiment.column_settings(tiny_config, fp_reduction)
  steps = ("region_growing", "size_limits", "heart_filter", "aorta_threshold")
  fp = {k: getattr(s, k) for k in steps}
  score_files.score_manifest(data, tiny_export, out, fp=fp)
  [case] = manifest.load_cases(data, tiny_config)  # what experiment.run scores
  params, _ = checkpoints.load_inference(tiny_export)
  got = experiment.predict_columns({"m": params}, tiny_config, [case], {"m": {False, True}})
  [raw] = got[("m", fp_reduction)]
  [scan] = experiment.evaluate_predictions(tiny_config, [case], [raw], fp_reduction)
  written = volume_io.read_labels(
    os.path.join(out, case.case_id, "calcium_labels.nii.gz"), case.scan
  )
  classes = scan["classes"].dense()
  assert written.shape == classes.shape
  np.testing.assert_array_equal(written, classes)
  assert classes.any()  # the random network calls some calcium
