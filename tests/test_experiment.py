"""The phantom Table-2 experiment end to end at toy size: structure, reuse, figures."""

import json
import math
import os
import re
import types

import jax
import numpy as np
import pytest

from cac_jax import checkpoints
from cac_jax.studies import experiment
from configs import tiny


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  c = tiny.get_config()
  c.experiment.n_source_train = 2
  c.experiment.n_adapt_source = 1
  c.experiment.n_adapt_target = 1
  c.experiment.n_ccta_test = 3
  c.experiment.n_ncct_test = 1
  c.experiment.n_ccta_val = 1
  c.source.num_steps = 6
  c.adapt.critic_pretrain_steps = 2
  c.adapt.num_generator_steps = 2
  wd = str(tmp_path_factory.mktemp("exp"))
  return c, wd, experiment.run(c, wd, seed=0)


def test_table_has_every_column_row_and_measure(toy):
  _, _, res = toy
  c, _, _ = toy
  assert (
    list(res["table"])
    == [col.name for col in experiment.columns(c)]
    == [col.name for col in experiment.COLUMNS]
  )
  for col in res["table"].values():
    assert list(col) == list(experiment.ROWS)
    for row in col.values():
      assert set(row) == {m for m, _ in experiment.MEASURES + experiment.AUTHORS_MEASURES}
      fp_mean, _, n = row["fp_mm3"]
      assert fp_mean >= 0 and n >= 1  # FP volume is defined for every scan
  md = experiment.table_markdown(res["table"])
  selected = experiment.table_markdown(res["table"], which="selected")
  for col in experiment.COLUMNS:
    header = f"| {col.name} |"
    assert (header in md.splitlines()[0] + " |") == (col.table == "main")
    assert (header in selected.splitlines()[0] + " |") == (col.table == "selected")
  assert md.count("\n| ") == 12 and selected.count("\n| ") == 12


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
  assert (
    os.path.getmtime(os.path.join(again["exports"]["adv_cls"], "cac_jax_inference.json")) == stamp
  )
  both = experiment.combine_seeds([res, again])
  mean, sd, n = both["CCTA no adaptation"]["total"]["fp_mm3"]
  assert (
    n == 2
    and sd == 0
    and math.isclose(mean, res["table"]["CCTA no adaptation"]["total"]["fp_mm3"][0])
  )


def test_figures_are_written(toy, tmp_path):
  c, _, res = toy
  paths = experiment.write_figures(res, c, str(tmp_path))
  assert paths and all(os.path.getsize(p) > 1000 for p in paths.values())


def test_oracle_is_trained_on_the_labelled_target_and_scored(toy):
  """The oracle column scores a network trained from the adapt_target labels (the same
  schedule as the source network), on the same CCTA test scans as the source network."""
  from cac_jax import checkpoints

  c, _, res = toy
  oracle, _ = checkpoints.load_inference(res["exports"]["oracle"])
  source_params, _ = checkpoints.load_inference(res["exports"]["no_adaptation"])
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(oracle), jax.tree.leaves(source_params))
  )
  with open(
    os.path.join(os.path.dirname(res["exports"]["oracle"]), "metrics.jsonl"), encoding="utf-8"
  ) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert max(steps) == c.source.num_steps
  a, b = res["per_scan"]["CCTA oracle"], res["per_scan"]["CCTA no adaptation"]
  assert [s["id"] for s in a] == [s["id"] for s in b]
  cases = experiment._load(res["manifest"], c, "adapt_target", labels=True)
  assert cases and all(case.labels is not None for case in cases)
  # Every export says it was trained on phantoms (scores from it then carry that warning).
  for m in ("no_adaptation", "oracle", "adv_cls"):
    data = checkpoints.provenance(res["exports"][m])["training_data"]
    assert data["phantoms_only"] is True and "phantom data set" in data["description"], (m, data)


def test_validation_selection_is_recorded_and_scored(toy):
  c, wd, res = toy
  for m in ("adv_cls", "adv_only"):
    sel = res["selection"][m]
    # tiny: snapshot_every > num_generator_steps, so the final step is the only snapshot.
    assert sel["step"] == c.adapt.num_generator_steps and list(sel["f1_by_step"]) == [
      str(sel["step"])
    ]
    assert "target (CCTA) labels" in sel["note"]
    assert os.path.exists(os.path.join(wd, m, "selection.json"))
  # The final generator was picked: its val-selected columns equal the final ones.
  assert res["table"]["CCTA Ladv+Lcls, val-selected"] == res["table"]["CCTA Ladv+Lcls"]


def test_report_prints_gates_table_and_gap_shares(toy):
  _, _, res = toy
  md = experiment.report_markdown([res])
  print(md)
  for g in ("| G1 |", "| G2 |", "| G3 |", "Table 2", "val-selected", "oracle gap"):
    assert g in md
  assert [g.name for g in res["gates"]] == ["G1", "G2", "G3"]
  ncct = res["table"]["NCCT test"]["total"]
  # The gates average F1 as the authors' evaluation does (the thresholds are the paper's numbers).
  assert res["gates"][0].passed == (ncct["f1_authors"][0] >= 0.6 and ncct["fp_mm3"][0] <= 100)
  assert f"F1 {ncct['f1_authors'][0]:.2f}" in res["gates"][0].value
  assert "averaged as the authors' evaluation does" in md
  # Two sets of gates, each like with like: after FP reduction and without it.
  for key, which in (("gates", "after FP reduction"), ("gates_no_fp", "without FP reduction")):
    for g in res[key]:
      col = experiment.GATE_SETS[which][g.name]
      assert f"F1 {res['table'][col]['total']['f1_authors'][0]:.2f}" in g.value
  assert experiment.GATE_SETS["without FP reduction"]["G1"] in res["table"]
  # Each gate value carries its bootstrap interval over the test scans, which holds the mean.
  for g in res["gates"] + res["gates_no_fp"]:
    lo, hi = (
      float(x) for x in re.search(r"F1 ([\d.]+) \[([\d.]+), ([\d.]+)\]", g.value).groups()[1:]
    )
    assert lo <= float(g.value.split()[1]) <= hi, g.value
  assert "In brackets: 95 % bootstrap interval" in md
  # Two seeds pooled (here the same seed twice): the same means, printed after the per-seed sets.
  assert not experiment.pooled_gates([res])
  pooled = experiment.pooled_gates([res, res])
  assert [g.passed for g in pooled["after FP reduction"]] == [g.passed for g in res["gates"]]
  assert [g.value.split(" [")[0] for g in pooled["without FP reduction"]] == [
    g.value.split(" [")[0] for g in res["gates_no_fp"]
  ]
  assert "pooled, after FP reduction" in experiment.report_markdown([res, res])
  assert "without FP reduction (as the paper's source-only row was scored)" in md
  # Under each seed's gates: how each gate's mean splits between scans with and without calcium.
  for which, cols in experiment.GATE_SETS.items():
    lines = experiment.gate_readings_markdown(res["per_scan"], which)
    assert lines in md
    for gate, col in cols.items():
      scans = res["per_scan"][col]
      free = [s for s in scans if not s["metrics"]["total"].has_reference]
      assert f"- {gate} ({col}): {len(free)} of {len(scans)} scans without reference" in lines


def test_write_results_writes_what_reproduce_prints(toy, tmp_path):
  c, _, res = toy
  md, paths = experiment.write_results([res], c, str(tmp_path))
  with open(paths["table"], encoding="utf-8") as f:
    assert f.read() == md + "\n"
  with open(tmp_path / "table2.json", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["seeds"] == [0] and [g["name"] for g in saved["gates"][0]] == ["G1", "G2", "G3"]
  assert [g["name"] for g in saved["gates_no_fp"][0]] == ["G1", "G2", "G3"]
  assert paths["html_report"].endswith("report.html") and all(
    os.path.exists(p) for p in paths.values()
  )
  assert experiment.seeds_of(c, ["3", "4"]) == [3, 4] and experiment.seeds_of(c) == [c.seed]


def test_a_recorded_selection_is_found_again_after_the_work_folder_moves(tmp_path):
  """selection.json from a run started elsewhere (relative, now stale path) is reused with the
  snapshot under the current folder, without rescoring (no config or cases needed)."""
  adapt_dir = tmp_path / "moved" / "adv_cls"
  for step in (50, 100):
    snap = adapt_dir / "snapshots" / f"step_{step:06d}"
    snap.mkdir(parents=True)
    (snap / checkpoints.MARKER).write_text("", encoding="utf-8")
  recorded = {
    "step": 100,
    "export": "runs/demo/adv_cls/snapshots/step_000100",
    "f1_by_step": {"50": 0.5, "100": 0.75},
    "val_cases": ["v0"],
  }
  (adapt_dir / "selection.json").write_text(json.dumps(recorded), encoding="utf-8")
  val = [types.SimpleNamespace(case_id="v0")]
  got = experiment.select_snapshot(None, str(adapt_dir), val)
  assert got["step"] == 100 and got["f1_by_step"] == recorded["f1_by_step"]
  assert got["export"] == str(adapt_dir / "snapshots" / "step_000100")
