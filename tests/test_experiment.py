"""The phantom Table-2 experiment end to end at toy size: structure, reuse, figures, and a
`cac-reproduce` killed in every phase that finishes with the same tables."""

import csv
import filecmp
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from cac_jax import checkpoints
from cac_jax.data import manifest
from cac_jax.evaluation import gates, paired
from cac_jax.studies import experiment, report
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The toy experiment: configs/tiny.py with these settings (also `cac-reproduce`'s
# --config.KEY=VALUE flags in the kill test). Checkpoints every 2 source steps and every
# generator step, so that a run killed inside a training resumes from a checkpoint.
TOY = {
  "experiment.n_source_train": 2,
  "experiment.n_adapt_source": 1,
  "experiment.n_adapt_target": 1,
  "experiment.n_ccta_test": 3,
  "experiment.n_ncct_test": 1,
  "experiment.n_ccta_val": 1,
  "source.num_steps": 6,
  "source.log_every": 2,
  "source.checkpoint_every": 2,
  "adapt.critic_pretrain_steps": 2,
  "adapt.num_generator_steps": 2,
  "adapt.checkpoint_every": 1,
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  c = tiny.get_config()
  for key, value in TOY.items():
    section, field = key.split(".")
    c[section][field] = value
  wd = str(tmp_path_factory.mktemp("exp"))
  return c, wd, experiment.run(c, wd, seed=0)


@pytest.fixture(scope="module")
def toy_paired(toy, tmp_path_factory):
  """The toy experiment's folder, copied, run again with 2 paired patients: (config, workdir,
  result, log lines). Its data, networks and Table 2 scores are the toy's, reused."""
  c, wd, _ = toy
  cp = c.copy_and_resolve_references()
  cp.experiment.n_paired_test = 2
  wd2 = str(tmp_path_factory.mktemp("paired") / "run")
  shutil.copytree(wd, wd2)
  logs = []
  return cp, wd2, experiment.run(cp, wd2, seed=0, log=logs.append), logs


def test_paired_test_set_leaves_table2_alone_and_is_scored_by_both_networks(toy, toy_paired):
  c, wd, res = toy
  cp, wd2, rp, logs = toy_paired
  assert res["paired"] is None and "Same patient" not in report.report_markdown([res])
  assert not os.path.exists(experiment.paired_manifest(os.path.join(wd, "data")))
  # The other roles' data and Table 2 scores are the toy's: reused, not made again.
  assert filecmp.cmp(res["manifest"], rp["manifest"], shallow=False)
  assert any(line.startswith("reusing the test scores") for line in logs), logs
  assert "scoring the paired test scores" in logs
  assert json.dumps(rp["table"], sort_keys=True) == json.dumps(res["table"], sort_keys=True)
  # Two patients, each one cardiac NCCT and one CCTA, case seeds of no other role.
  pairs = paired.read_pairs(experiment.paired_manifest(os.path.join(wd2, "data")))
  assert [p.patient for p in pairs] == rp["paired"]["patients"] and len(pairs) == 2
  with open(rp["manifest"], newline="", encoding="utf-8") as f:
    others = {r["id"] for r in csv.DictReader(f)}
  assert not others & {row.id for p in pairs for row in (p.ncct, p.ccta)}
  assert {p.ncct.split for p in pairs} == {experiment.PAIRED_ROLE}
  scores = {ref for _, ref, _ in experiment.PAIRED_COMPARISONS}
  scores |= {other for _, _, other in experiment.PAIRED_COMPARISONS}
  assert set(rp["paired"]["agatston"]) == set(rp["paired"]["volume_mm3"]) == scores
  assert all(len(v) == 2 for v in rp["paired"]["agatston"].values())
  # The label scores are the labels' Agatston on the working grid.
  case = manifest.load_case(pairs[1].ncct, cp)
  assert rp["paired"]["agatston"]["ncct_label"][1] == pytest.approx(
    paired.coronary_scores(case.labels, case.scan)[0]
  )
  # The paired scores' key has the paired settings; the Table 2 scores' key does not.
  params = {"m": {"w": np.ones(3)}}
  assert experiment.scores_key(cp, params) == experiment.scores_key(c, params)
  assert experiment.scores_key(cp, params, paired=True) != experiment.scores_key(c, params, True)
  again = []
  experiment.run(cp, wd2, seed=0, log=again.append)
  assert any(line.startswith("reusing the paired test scores") for line in again), again


def test_report_prints_the_same_patient_section_for_both_networks(toy_paired, tmp_path):
  cp, _, rp, _ = toy_paired
  md, paths = report.write_results([rp], cp, str(tmp_path))
  section = md[md.index("## Same patient, NCCT and CCTA") :]
  agreements = experiment.paired_agreements([rp])
  assert list(agreements) == [title for title, _, _ in experiment.PAIRED_COMPARISONS]
  for title, ref, other in experiment.PAIRED_COMPARISONS:
    a = agreements[title]
    text = section[section.index(f"### {title}") :]
    assert a.kappa.format(3) in text.split("\n")[2]
    corner = f"| {report.PAIRED_SIDES[ref]} \\ {report.PAIRED_SIDES[other]} |"
    assert corner in text and a.confusion.sum() == 2
    assert "Category moves for" in text and "Spearman" in text
  with open(tmp_path / "table2.json", encoding="utf-8") as f:
    saved = json.load(f)["paired"]
  first = experiment.PAIRED_COMPARISONS[1][0]  # the adapted network against NCCT
  assert saved[first]["confusion"] == agreements[first].confusion.tolist()
  assert [r["patient"] for r in saved[first]["patients"]] == rp["paired"]["patients"]
  for tag in ("no_adaptation", "adapted"):
    assert os.path.getsize(paths[f"paired_confusion_{tag}"]) > 1000
  # Two seeds (here the same twice): patients pooled, named by seed.
  two = experiment.paired_agreements([rp, dict(rp, seed=1)], n_resamples=50)
  assert two[first].patients[0].startswith("seed0/") and len(two[first].patients) == 4


def test_the_benchmark_has_a_paired_test_set_and_the_demo_none():
  from configs import benchmark, demo

  assert benchmark.get_config().experiment.n_paired_test >= 16
  assert (
    demo.get_config().experiment.n_paired_test == 0 == tiny.get_config().experiment.n_paired_test
  )


def test_table_has_every_column_row_and_measure(toy):
  _, _, res = toy
  c, _, _ = toy
  assert (
    list(res["table"])
    == [col.name for col in experiment.columns(c)]
    == [col.name for col in experiment.COLUMNS if col.table != "tested"]  # tiny: no tested step
  )
  for col in res["table"].values():
    assert list(col) == list(experiment.ROWS)
    for row in col.values():
      assert set(row) == {m for m, _ in experiment.MEASURES + experiment.AUTHORS_MEASURES}
      fp_mean, _, n = row["fp_mm3"]
      assert fp_mean >= 0 and n >= 1  # FP volume is defined for every scan
  md = report.table_markdown(res["table"])
  selected = report.table_markdown(res["table"], which="selected")
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
  both = report.combine_seeds([res, again])
  mean, sd, n = both["CCTA no adaptation"]["total"]["fp_mm3"]
  assert (
    n == 2
    and sd == 0
    and math.isclose(mean, res["table"]["CCTA no adaptation"]["total"]["fp_mm3"][0])
  )


def test_rerun_reuses_the_test_scores_of_the_same_weights_and_settings(toy):
  c, wd, res = toy
  calls = []

  def compute():
    calls.append(1)
    return res["table"], res["per_scan"]

  path = os.path.join(wd, "scores.pkl")
  key = experiment.scores_key(c, {"m": {"w": np.ones(3)}})
  assert os.path.exists(path)  # written by the toy run
  table, per_scan = experiment.cached_scores(path, key, compute)
  again = experiment.cached_scores(path, key, compute)
  assert len(calls) == 1  # the first call had another key (the toy's models), the second reused
  col = "CCTA Ladv+Lcls+FP red."
  for a, b in zip(again[1][col], res["per_scan"][col]):
    assert a["id"] == b["id"] and a["classes"] == b["classes"]
  assert json.dumps(again[0], sort_keys=True) == json.dumps(
    res["table"], sort_keys=True
  )  # NaN-safe
  renamed = c.copy_and_resolve_references()
  renamed.name = "benchmark"
  assert experiment.scores_key(renamed, {"m": {"w": np.ones(3)}}) == key
  assert experiment.scores_key(c, {"m": {"w": np.zeros(3)}}) != key
  changed = c.copy_and_resolve_references()
  changed.scoring.slab_slices += 1
  assert experiment.scores_key(changed, {"m": {"w": np.ones(3)}}) != key


def test_figures_are_written(toy, tmp_path):
  c, _, res = toy
  paths = report.write_figures(res, c, str(tmp_path))
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
  md = report.report_markdown([res])
  print(md)
  for g in ("| G1 |", "| G2 |", "| G3 |", "Table 2", "val-selected", "oracle gap"):
    assert g in md
  # The authors' averaging, per artery too, with the value the table holds.
  lcx = res["table"]["CCTA Ladv+Lcls+FP red."]["LCX"]["f1_authors"]
  assert "| LCX | F1 |" in md and f"{lcx[0]:.2f}" in md.split("| LCX | F1 |")[1].split("\n")[0]
  assert "Reference: the phantoms' labels as drawn" in md
  assert [g.name for g in res["gates"]] == ["G1", "G2", "G3"]

  def calcium_mean(col: str) -> float:
    f1 = gates.calcium_f1([s["metrics"] for s in res["per_scan"][col]])
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else math.nan

  # The gates read F1 over the test scans with reference calcium, FP over all of them.
  ncct = res["table"]["NCCT test"]["total"]
  g1_f1 = calcium_mean("NCCT test")
  assert res["gates"][0].estimates["F1"][0] == pytest.approx(g1_f1, nan_ok=True)
  assert res["gates"][0].estimates["FP"][0] == pytest.approx(ncct["fp_mm3"][0])
  assert res["gates"][0].passed == (g1_f1 >= 0.6 and ncct["fp_mm3"][0] <= 100)
  # Only the set after FP reduction decides; the other is a reading.
  assert all(g.passed is not None for g in res["gates"])
  assert all(g.passed is None for g in res["gates_no_fp"])
  for key, which in (("gates", "after FP reduction"), ("gates_no_fp", "without FP reduction")):
    for g in res[key]:
      col = experiment.GATE_SETS[which][g.name]
      assert g.estimates["F1"][0] == pytest.approx(calcium_mean(col), nan_ok=True)
      scans = res["per_scan"][col]
      free = [s for s in scans if not s["metrics"]["total"].has_reference]
      assert g.calcium_free.startswith(f"{len(free)} of {len(scans)} scans calcium-free")
      assert g.calcium_free in md
      # Each interval, where defined, holds its value.
      for v, lo, hi in g.estimates.values():
        assert not np.isfinite(lo) or lo - 1e-9 <= v <= hi + 1e-9, g
  assert "In brackets: 95 % bootstrap interval" in md
  # Two seeds pooled (here the same seed twice): the same means, printed after the per-seed sets.
  assert not report.pooled_gates([res])
  pooled = report.pooled_gates([res, res])
  assert [g.passed for g in pooled["after FP reduction"]] == [g.passed for g in res["gates"]]
  for a, b in zip(pooled["without FP reduction"], res["gates_no_fp"]):
    assert a.estimates["F1"][0] == pytest.approx(b.estimates["F1"][0], nan_ok=True)
  two = report.report_markdown([res, res])
  assert "pooled, after FP reduction" in two and "seed 0:\n" in two
  assert "without FP reduction (a reading" in md
  # Gap shares per structure, read like the gates; the F1 they read, with intervals.
  for r in experiment.ROWS:
    assert f"{r} [95 % CI]" in md
  shares = experiment.gap_shares([res])
  assert set(shares) >= {"Ladv", "Ladv+Lcls", "Ladv+Lcls+FP red."}
  f1 = experiment.artery_f1([res])
  assert f1["CCTA oracle+FP red."]["total"].value == pytest.approx(
    calcium_mean("CCTA oracle+FP red."), nan_ok=True
  )


def test_write_results_writes_what_reproduce_prints(toy, tmp_path):
  c, _, res = toy
  md, paths = report.write_results([res], c, str(tmp_path))
  with open(paths["table"], encoding="utf-8") as f:
    assert f.read() == md + "\n"
  with open(tmp_path / "table2.json", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["seeds"] == [0] and [g["name"] for g in saved["gates"][0]] == ["G1", "G2", "G3"]
  assert "paired" not in saved and not any(name.startswith("paired") for name in paths)
  assert [g["name"] for g in saved["gates_no_fp"][0]] == ["G1", "G2", "G3"]
  assert paths["html_report"].endswith("report.html") and all(
    os.path.exists(p) for p in paths.values()
  )
  with open(paths["html_report"], encoding="utf-8") as f:
    page = f.read()
  assert page.index('id="summary"') < page.index("Full tables")
  assert "overlay_ccta_side_by_side.png" in page and "f1_per_column.png" in page
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


def test_test_roles_have_enough_scans_with_labelled_calcium_for_the_benchmark_seeds():
  from configs import benchmark

  c = benchmark.get_config()
  for seed in experiment.seeds_of(c):
    counts = experiment.calcium_scan_counts(c, seed)
    for role, minimum in experiment.MIN_CALCIUM_SCANS.items():
      assert counts[role][0] >= minimum, (seed, role, counts)
  assert c.experiment.n_ncct_test >= 16 and c.experiment.n_ccta_test >= 24


def test_each_role_draws_its_own_calcium_prevalence():
  from cac_jax import phantoms

  c = tiny.get_config()
  c.experiment.p_no_coronary_calcium = {"ncct_test": 0.0}
  coronary = ("lm", "lad", "lcx", "rca")

  def free_share(role: str) -> float:
    cfg = experiment.role_config(c, role)
    first = experiment.first_case_seed(role, 0)
    plans = [phantoms.plan_case_calcium("chest_ncct", first + k, cfg) for k in range(150)]
    return float(np.mean([not any(p.site in coronary for p in ps) for ps in plans]))

  assert free_share("ncct_test") == 0.0
  assert 0.2 < free_share("source_train") < 0.45  # the phantoms' own 1/3
  assert experiment.role_config(c, "source_train") is c


def test_the_reference_tested_step_is_the_snapshot_nearest_its_fraction_of_training():
  from configs import paper

  c = paper.get_config()
  assert experiment.tested_step(c) == 750  # G_15 of the reference's 10,000 steps
  names = [col.name for col in experiment.columns(c)]
  assert "CCTA Ladv+Lcls+FP red., tested step" in names
  c.adapt.num_generator_steps, c.adapt.snapshot_every = 200, 50
  assert experiment.tested_step(c) == 50  # 15 steps: the first snapshot
  c.adapt.tested_fraction = 0.0
  assert experiment.tested_step(c) is None
  assert not any(col.table == "tested" for col in experiment.columns(c))


def test_sparse_class_maps_give_the_dense_map_back():
  dense = np.zeros((3, 4, 5), np.uint8)
  dense[1, 2, 3], dense[2, 0, 0] = 8, 15
  sparse = experiment.SparseClasses.of(dense)
  assert sparse.index.size == 2
  np.testing.assert_array_equal(sparse.dense(), dense)
  other = dense.copy()
  other[0, 0, 0] = 9
  assert sparse == experiment.SparseClasses.of(dense.copy())
  assert sparse != experiment.SparseClasses.of(other)


def test_columns_without_fp_reduction_score_the_first_scans_only(toy):
  c, _, res = toy
  sub = c.copy_and_resolve_references()
  sub.experiment.n_no_fp_scans = 1
  cols = [col for col in experiment.columns(c) if col.model in ("no_adaptation", "oracle")]
  tests = {r: experiment._load(res["manifest"], c, r) for r in ("ccta_test", "ncct_test")}
  params = {
    m: checkpoints.load_inference(res["exports"][m])[0] for m in ("no_adaptation", "oracle")
  }
  _, per_scan = experiment.score_tests(sub, cols, tests, params)
  for col in cols:
    got, full = per_scan[col.name], res["per_scan"][col.name]
    want = full if col.fp_reduction else full[:1]
    assert [s["id"] for s in got] == [s["id"] for s in want]
    assert [s["classes"] for s in got] == [s["classes"] for s in want]
  assert experiment.no_fp_scans(sub, 3) == 1 and experiment.no_fp_scans(c, 3) == 3
  note = report.no_fp_note([{"no_fp_scans": {"ccta_test": (1, 3), "ncct_test": (1, 1)}}])
  assert "the first 1 of 3 CCTA test scans" in note and "NCCT" not in note
  assert report.no_fp_note([res]) == ""  # the toy scores every scan


# `cac-reproduce` of the toy experiment killed at one point of each phase, in this order, each
# run started again with the same command (tests/killed_run.py's points; each kill is at a fixed
# point of the program, so the sequence replays the same way), with what that run's log says
# about the work the runs before it left.
KILLS = (
  ("log:phantoms: 1 cardiac_ncct#1", None),  # phantoms: source_train written, the rest not
  ("log:source step 4/6#1", None),  # source training: checkpoint 2 written, 4 not
  ("log:source step 4/6#2", "resumed source training at step 2"),  # the oracle, the same
  ("log:adapt step 1/2#1", "resumed source training at step 2"),  # Ladv+Lcls: critic pre-trained
  ("save:2", "resumed adaptation at generator step 0"),  # after its last checkpoint, not exported
  ("log:scoring 1/1 scans#1", "resumed adaptation at generator step 2"),  # selecting its snapshot
  ("log:adapt step 1/2#1", "reusing the adapted network"),  # Ladv
  ("log:scoring ncct_test: 1/1#1", "resumed adaptation at generator step 0"),  # the test scores
  ("write:table2.json", "scoring the test sets"),  # the report: table2.md written, the rest not
)


@pytest.mark.slow
def test_reproduce_killed_in_every_phase_finishes_with_an_uninterrupted_runs_tables(toy, tmp_path):
  """Each run is killed with SIGKILL at the next phase's point; the last one finishes, reusing
  every finished phase, and its tables equal the uninterrupted toy run's digit for digit. Its
  folder, as seed 0 of a 2-seed run, is reused, and seed 1's folder resumes the same way."""
  c, ref_wd, res = toy
  wd = str(tmp_path / "wd")
  cmd = [
    sys.executable,
    os.path.join(ROOT, "tests", "killed_run.py"),
    "launch.reproduce",
    "--config",
    "tiny",
    "--workdir",
    wd,
    "--seeds",
    "0",
    *[f"--config.{k}={v}" for k, v in TOY.items()],
  ]

  def reproduce(point: str, command: list[str] = cmd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CAC_JAX_KILL_AT"}
    if point:
      env["CAC_JAX_KILL_AT"] = point
    return subprocess.run(
      command,
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      encoding="utf-8",
      timeout=600,
    )

  for point, says in KILLS:
    r = reproduce(point)
    assert r.returncode == -signal.SIGKILL, (point, r.stderr[-3000:])  # the point was reached
    assert says is None or says in r.stderr, (point, says, r.stderr[-3000:])
  final = reproduce("")
  assert final.returncode == 0, final.stderr[-3000:]
  log = final.stderr
  for phase in (
    "phantoms: reusing",
    "reusing the source network",
    "reusing the oracle",
    "reusing the test scores",
  ):
    assert phase in log, (phase, log[-3000:])
  assert log.count("reusing the adapted network") == 2
  assert "training the" not in log and "adapting to" not in log and "scoring the test" not in log

  # The tables, digit for digit: table2.md as the uninterrupted run writes it, and table2.json
  # (whose selection records name each run's own work folder).
  md, _ = report.write_results([res], c, str(tmp_path / "ref"))
  with open(os.path.join(wd, "results", "table2.md"), encoding="utf-8") as f:
    assert f.read() == md + "\n"
  with open(tmp_path / "ref" / "table2.json", encoding="utf-8") as f:
    ref_json = f.read().replace(ref_wd, "WORKDIR")
  with open(os.path.join(wd, "results", "table2.json"), encoding="utf-8") as f:
    assert f.read().replace(wd, "WORKDIR") == ref_json
  assert os.path.exists(os.path.join(wd, "results", "report.html"))

  # The same folder as seed 0 of a 2-seed run (the benchmark's layout, W/seed<S>): seed 0 is
  # reused whole, and seed 1 resumes as a single seed does (its phantoms are reused and its
  # source training continues from its checkpoint; not run to the end, which would double the
  # test's cost).
  bench = str(tmp_path / "bench")
  os.makedirs(bench)
  os.rename(wd, os.path.join(bench, "seed0"))
  two_seeds = list(cmd)
  two_seeds[cmd.index("--workdir") + 1], two_seeds[cmd.index("--seeds") + 1] = bench, "0,1"
  r = reproduce("log:source step 4/6#1", two_seeds)
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert "[seed 0] reusing the test scores" in r.stderr and "[seed 1] phantoms: 2" in r.stderr
  r = reproduce("log:source step 4/6#1", two_seeds)
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  for line in (
    "[seed 0] reusing the test scores",
    "[seed 1] phantoms: reusing",
    "resumed source training at step 2",
  ):
    assert line in r.stderr, (line, r.stderr[-3000:])
  assert "[seed 0] training" not in r.stderr and "[seed 1] phantoms: 2" not in r.stderr
