"""The phantom Table-2 experiment end to end at toy size: structure, reuse, figures."""

import math
import os

import pytest

from cac_jax import experiment
from configs import tiny


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  c = tiny.get_config()
  c.experiment.n_source_train = 2
  c.experiment.n_adapt_source = 1
  c.experiment.n_adapt_target = 1
  c.experiment.n_ccta_test = 3
  c.experiment.n_ncct_test = 1
  c.source.num_steps = 6
  c.adapt.critic_pretrain_steps = 2
  c.adapt.num_generator_steps = 2
  wd = str(tmp_path_factory.mktemp("exp"))
  return c, wd, experiment.run(c, wd, seed=0)


def test_table_has_every_column_row_and_measure(toy):
  _, _, res = toy
  assert list(res["table"]) == [c[0] for c in experiment.COLUMNS]
  for col in res["table"].values():
    assert list(col) == list(experiment.ROWS)
    for row in col.values():
      assert set(row) == {m for m, _ in experiment.MEASURES}
      fp_mean, _, n = row["fp_mm3"]
      assert fp_mean >= 0 and n >= 1  # FP volume is defined for every scan
  md = experiment.table_markdown(res["table"])
  assert all(c[0] in md for c in experiment.COLUMNS) and md.count("\n| ") == 12


def test_adapt_target_labels_are_never_loaded(toy):
  c, _, res = toy
  cases = experiment._load(res["manifest"], c, "adapt_target")
  assert cases and all(case.labels is None for case in cases)


def test_fp_reduction_columns_share_raw_predictions(toy):
  _, _, res = toy
  # Same model and test set: FP reduction can only remove or regrow lesions, so its FP volume
  # is computed on the same scans as the raw column.
  a = res["per_scan"]["CCTA Ladv+Lcls"]
  b = res["per_scan"]["CCTA Ladv+Lcls+FP red."]
  assert [s["id"] for s in a] == [s["id"] for s in b]


def test_rerun_reuses_data_and_models_and_combines_seeds(toy):
  c, wd, res = toy
  stamp = os.path.getmtime(os.path.join(res["exports"]["adv_cls"], "cac_jax_inference.json"))
  again = experiment.run(c, wd, seed=0)
  assert os.path.getmtime(os.path.join(again["exports"]["adv_cls"], "cac_jax_inference.json")) == stamp
  both = experiment.combine_seeds([res, again])
  mean, sd, n = both["CCTA no adaptation"]["total"]["fp_mm3"]
  assert n == 2 and sd == 0 and math.isclose(mean, res["table"]["CCTA no adaptation"]["total"]["fp_mm3"][0])


def test_figures_are_written(toy, tmp_path):
  c, _, res = toy
  paths = experiment.write_figures(res, c, str(tmp_path))
  assert paths and all(os.path.getsize(p) > 1000 for p in paths.values())


def test_target_supervised_reference(toy, tmp_path):
  """cac_jax.target_supervised trains on the labelled adapt_target phantoms and scores ccta_test
  with the same numbers as scoring the source network directly."""
  from cac_jax import target_supervised
  c, wd, res = toy
  out = str(tmp_path / "ts")
  text = target_supervised.run(wd, negatives_in_heart=True, output_dir=out)
  with open(os.path.join(out, "target_supervised.md"), encoding="utf-8") as f:
    assert f.read() == text
  rows = [line for line in text.splitlines() if line.startswith("| ") and "network" not in line]
  assert len(rows) == 2 and "trained on 1 labelled CCTA (negatives in the dilated heart)" in rows[1]
  cases = experiment._load(res["manifest"], c, "ccta_test")
  from cac_jax import checkpoints
  src = target_supervised.score(c, checkpoints.load_inference(res["exports"]["no_adaptation"])[0], cases)
  assert rows[0] == (f"| source (NCCT), no adaptation | {src['sensitivity']:.2f} | {src['fp_mm3']:.1f} | "
                     f"{src['f1']:.2f} |")
  assert os.path.exists(os.path.join(out, "export", "cac_jax_inference.json"))
  with pytest.raises(FileNotFoundError, match="launch.reproduce workdir"):
    target_supervised.run(str(tmp_path / "nowhere"), False, str(tmp_path / "o2"))
