"""The paper's experiment on phantoms (Table 2, the benchmark gates, the gap share), end to end.

Data roles mirror the paper:
  source_train  labelled chest NCCT      -> supervised source training
  adapt_source  labelled cardiac NCCT    -> source side of adaptation (critic + L_cls)
  adapt_target  unlabelled CCTA          -> target side of adaptation (labels never read by
                                            adaptation; the oracle is trained with them)
  ccta_val      labelled CCTA            -> only to pick an adaptation snapshot (optional:
                                            model selection with target labels, as the reference)
  ccta_test     labelled CCTA            -> test only, never used in training or selection
  ncct_test     labelled chest NCCT      -> held-out source-domain test
  paired_test   labelled cardiac NCCT and CCTA of the same patients (`experiment.n_paired_test`;
                its own folder and manifest) -> the CCTA risk category against the NCCT one

Models: "no adaptation" (source network), "Ladv" (adapted with alpha = 0), "Ladv+Lcls"
(adapted with the configured alpha), the "oracle" (source architecture and schedule trained
on the labelled adapt_target CCTA, which the configs size like source_train so that the oracle
has the source network's data: the ceiling the gates need) and, with a validation split,
the adapted snapshots that validation picks ("val-selected": these used target labels). Each
is scored with or without false-positive reduction. All volumes in mm³, per scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import hashlib
import json
import os
import pickle
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from cac_jax import atomic, checkpoints, phantoms
from cac_jax import labels as labels_lib
from cac_jax.data import manifest
from cac_jax.evaluation import gates as gates_lib
from cac_jax.evaluation import metrics, paired
from cac_jax.phantoms import variants
from cac_jax.scoring import pipeline, postprocess
from cac_jax.train import data as data_lib
from cac_jax.train import loop

ROLES = {  # role: (phantom domain, split, config count field, seed offset)
  "source_train": ("chest_ncct", "train", "n_source_train", 0),
  "adapt_source": ("cardiac_ncct", "adapt", "n_adapt_source", 10_000),
  "adapt_target": ("ccta", "adapt", "n_adapt_target", 20_000),
  "ccta_test": ("ccta", "test", "n_ccta_test", 30_000),
  "ncct_test": ("chest_ncct", "test", "n_ncct_test", 40_000),
  "ccta_val": ("ccta", "val", "n_ccta_val", 50_000),
}
# The paired test set: per patient one cardiac NCCT and one CCTA (`variants.paired_cases`), in
# data/<PAIRED_ROLE>/ with its own manifest (a `patient` column), so that the other roles' data
# and manifest are the same with it or without it. Patient k has seed seed * 100_000 + offset + k.
PAIRED_ROLE, PAIRED_FIELD, PAIRED_SEED_OFFSET = "paired_test", "n_paired_test", 60_000


@dataclasses.dataclass(frozen=True)
class Column:
  """A Table 2 column: `name`, test `role`, `model`, FP reduction on?, and its `table`.

  `table`: "main": the paper's columns and the oracle; "selected": validation-selected snapshots;
  "tested": the snapshot at the reference's tested step."""

  name: str
  role: str
  model: str
  fp_reduction: bool
  table: str = "main"


COLUMNS = (
  Column("NCCT test", "ncct_test", "no_adaptation", True),
  Column("NCCT test, no FP red.", "ncct_test", "no_adaptation", False),
  Column("CCTA Ladv+Lcls+FP red.", "ccta_test", "adv_cls", True),
  Column("CCTA Ladv+Lcls", "ccta_test", "adv_cls", False),
  Column("CCTA Ladv", "ccta_test", "adv_only", False),
  Column("CCTA no adaptation", "ccta_test", "no_adaptation", False),
  Column("CCTA no adaptation+FP red.", "ccta_test", "no_adaptation", True),
  Column("CCTA oracle+FP red.", "ccta_test", "oracle", True),
  Column("CCTA oracle", "ccta_test", "oracle", False),
  Column("CCTA Ladv+Lcls+FP red., val-selected", "ccta_test", "adv_cls_val", True, "selected"),
  Column("CCTA Ladv+Lcls, val-selected", "ccta_test", "adv_cls_val", False, "selected"),
  Column("CCTA Ladv, val-selected", "ccta_test", "adv_only_val", False, "selected"),
  Column("CCTA Ladv+Lcls+FP red., tested step", "ccta_test", "adv_cls_tested", True, "tested"),
  Column("CCTA Ladv+Lcls, tested step", "ccta_test", "adv_cls_tested", False, "tested"),
)
ROWS = ("total", "LAD", "LCX", "RCA")
# ROI shapes of the experiment's scoring (`infer.predict_candidates_many`): every ROI at its own
# bucket size instead of at most 4 shapes per scan (`launch.score`'s default). The compiled
# shapes are shared by every scan and model of the experiment, and the towers process about a
# quarter fewer pixels; the outputs are the same bits (docs/performance.md).
INFER_OPTIONS = {"max_shapes": 64, "min_gain": 0.0}
MEASURES = (("sensitivity", "sensitivity"), ("fp_mm3", "FP volume (mm³)"), ("f1", "F1"))
# The same, averaged as the authors' evaluation script does (every test scan counts; a scan
# without reference calcium is sensitivity 1 and F1 1 or 0: `metrics.StructureMetrics.f1_authors`):
# the rows to set beside the paper's numbers. The gates read F1 over the scans with calcium.
AUTHORS_MEASURES = (("sensitivity_authors", "sensitivity"), ("f1_authors", "F1"))
# Gap shares: (label, adapted column, source column, oracle column); like is compared with like.
GAP_SHARES = (
  ("Ladv", "CCTA Ladv", "CCTA no adaptation", "CCTA oracle"),
  ("Ladv+Lcls", "CCTA Ladv+Lcls", "CCTA no adaptation", "CCTA oracle"),
  (
    "Ladv+Lcls+FP red.",
    "CCTA Ladv+Lcls+FP red.",
    "CCTA no adaptation+FP red.",
    "CCTA oracle+FP red.",
  ),
  ("Ladv, val-selected", "CCTA Ladv, val-selected", "CCTA no adaptation", "CCTA oracle"),
  ("Ladv+Lcls, val-selected", "CCTA Ladv+Lcls, val-selected", "CCTA no adaptation", "CCTA oracle"),
  (
    "Ladv+Lcls+FP red., val-selected",
    "CCTA Ladv+Lcls+FP red., val-selected",
    "CCTA no adaptation+FP red.",
    "CCTA oracle+FP red.",
  ),
)


def columns(config: ml_collections.ConfigDict) -> tuple[Column, ...]:
  """The columns this config produces.

  The oracle's with `experiment.oracle`, the validation-selected ones with
  `experiment.n_ccta_val` > 0 and adaptation snapshots, the tested-step ones with
  `adapt.tested_fraction` > 0."""
  e = config.experiment
  oracle = bool(e.get("oracle", False))
  selected = int(e.get("n_ccta_val", 0)) > 0 and int(config.adapt.get("snapshot_every", 0)) > 0
  tested = tested_step(config) is not None
  return tuple(
    c
    for c in COLUMNS
    if (oracle or c.model != "oracle")
    and (selected or not c.model.endswith("_val"))
    and (tested or not c.model.endswith("_tested"))
  )


def tested_step(config: ml_collections.ConfigDict) -> int | None:
  """The generator step of the reference's tested snapshot at this config's length, or None.

  The snapshot nearest to `adapt.tested_fraction` of training (the reference tests G_15, 750 of
  10,000 steps: TestNet_transf.py:89, snapshots every 250 steps, trainGAN_adv_cls_MMD.py:285),
  or None (fraction 0, or no snapshots). The authors chose it; it read no target labels."""
  a = config.adapt
  fraction, every = float(a.get("tested_fraction", 0.0)), int(a.get("snapshot_every", 0))
  if fraction <= 0 or every <= 0:
    return None
  n = int(a.num_generator_steps)
  return min(max(every, every * round(fraction * n / every)), n)


def first_case_seed(role: str, seed: int) -> int:
  """Phantom seed of the first case of `role` in the experiment with `seed`.

  `role` is a key of ROLES, or PAIRED_ROLE (its first patient); case k has seed first + k."""
  return seed * 100_000 + (PAIRED_SEED_OFFSET if role == PAIRED_ROLE else ROLES[role][3])


# The fewest test/validation scans with labelled coronary calcium (visible at the scan's
# calcium threshold) a benchmark needs so that gates read over those scans can decide.
MIN_CALCIUM_SCANS = {"ncct_test": 12, "ccta_test": 18, "ccta_val": 8}


def calcium_scan_counts(
  config: ml_collections.ConfigDict, seed: int, roles: Sequence[str] = tuple(MIN_CALCIUM_SCANS)
) -> dict[str, tuple[int, int]]:
  """{role: (scans with labelled coronary calcium, scans)} of the phantoms `make_data` writes.

  For experiment `seed` (each case generated in memory)."""
  out = {}
  for role in roles:
    domain, _, field, _ = ROLES[role]
    n, cfg = int(config.experiment.get(field, 0)), role_config(config, role)
    first = first_case_seed(role, seed)
    with_calcium = sum(
      bool(
        np.isin(
          phantoms.generate_case(domain, first + k, cfg).labels, labels_lib.CORONARY_CLASSES
        ).any()
      )
      for k in range(n)
    )
    out[role] = (with_calcium, n)
  return out


def role_config(config: ml_collections.ConfigDict, role: str) -> ml_collections.ConfigDict:
  """`config` with the phantoms' coronary-calcium prevalence of `role`.

  From config.experiment.p_no_coronary_calcium[role], else config.phantoms'."""
  shares = config.experiment.get("p_no_coronary_calcium", None) or {}
  if role not in shares:
    return config
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.phantoms.p_no_coronary_calcium = float(shares[role])
  return cfg


def make_data(
  config: ml_collections.ConfigDict,
  data_dir: str,
  seed: int,
  log: Callable[[str], None] = lambda s: None,
) -> str:
  """Write every role's phantoms into data_dir (one manifest, split = role). Returns the manifest.

  Case seeds are disjoint across roles and experiment seeds; each role draws its own calcium
  prevalence (`role_config`). Existing complete data is reused. The paired test set, where the
  config asks for one, goes to its own folder (`make_paired_data`).
  """
  make_paired_data(config, data_dir, seed, log)
  manifest_csv = os.path.join(data_dir, "manifest.csv")
  done_marker = os.path.join(data_dir, ".complete.json")
  wanted = {role: int(config.experiment.get(field, 0)) for role, (_, _, field, _) in ROLES.items()}
  prevalence = {
    role: float(
      role_config(config, role).phantoms.get(
        "p_no_coronary_calcium", phantoms.lesions.P_NO_CORONARY_CALCIUM
      )
    )
    for role in ROLES
  }
  marker = {"seed": seed, "counts": wanted, "p_no_coronary_calcium": prevalence}
  if os.path.exists(done_marker):
    with open(done_marker, encoding="utf-8") as f:
      if json.load(f) == marker:
        log(f"phantoms: reusing {manifest_csv}")
        return manifest_csv
  for role, (domain, _, _, _) in ROLES.items():
    if not wanted[role]:
      continue
    log(f"phantoms: {wanted[role]} {domain} cases for {role}")
    phantoms.write_dataset(
      data_dir,
      domain,
      wanted[role],
      first_case_seed(role, seed),
      role_config(config, role),
      split=role,
    )
  atomic.write_text(done_marker, json.dumps(marker) + "\n")
  return manifest_csv


def paired_manifest(data_dir: str) -> str:
  """The paired test set's manifest in an experiment's data folder (it may not exist)."""
  return os.path.join(data_dir, PAIRED_ROLE, "manifest.csv")


def make_paired_data(
  config: ml_collections.ConfigDict,
  data_dir: str,
  seed: int,
  log: Callable[[str], None] = lambda s: None,
) -> str | None:
  """Write the paired test set; returns its manifest, or None when the config asks for none.

  `experiment.n_paired_test` patients, each as cardiac NCCT and as CCTA with their reference
  labels (`variants.write_paired_dataset`, split PAIRED_ROLE), into data_dir/PAIRED_ROLE.
  Existing complete data is reused."""
  n = int(config.experiment.get(PAIRED_FIELD, 0))
  if n <= 0:
    return None
  out, first = os.path.join(data_dir, PAIRED_ROLE), first_case_seed(PAIRED_ROLE, seed)
  cfg = role_config(config, PAIRED_ROLE)
  prevalence = float(
    cfg.phantoms.get("p_no_coronary_calcium", phantoms.lesions.P_NO_CORONARY_CALCIUM)
  )
  marker = {"first_seed": first, "patients": n, "p_no_coronary_calcium": prevalence}
  done_marker = os.path.join(out, ".complete.json")
  if os.path.exists(done_marker):
    with open(done_marker, encoding="utf-8") as f:
      if json.load(f) == marker:
        log(f"phantoms: reusing {paired_manifest(data_dir)}")
        return paired_manifest(data_dir)
  log(f"phantoms: {n} patients as cardiac NCCT and as CCTA for {PAIRED_ROLE}")
  path = variants.write_paired_dataset(out, n, first, cfg, split=PAIRED_ROLE)
  atomic.write_text(done_marker, json.dumps(marker) + "\n")
  return path


def _load(manifest_csv: str, config, role: str, labels: bool = False):
  """Cases of `role` at working spacing.

  adapt_target is unlabelled by design (its labels are dropped so adaptation cannot read them)
  unless `labels` (the oracle trains with them)."""
  cases = manifest.load_cases(manifest_csv, config, split=role)
  if role == "adapt_target" and not labels:
    cases = [dataclasses.replace(c, labels=None) for c in cases]
  return cases


def mean_f1(
  config,
  params_by_model: dict[str, Any],
  cases,
  log: Callable[[str], None] = lambda s: None,
) -> dict[str, float]:
  """Mean total-coronary F1 over `cases` (labelled) after FP reduction, per model.

  The labels are `launch.score`'s with config.scoring's settings."""
  raw = predict_raw(
    params_by_model, config, cases, True, progress=scoring_progress(log, "", len(params_by_model))
  )
  out = {}
  for m in params_by_model:
    scans = evaluate_predictions(config, cases, raw[m], True)
    out[m] = float(metrics.aggregate([s["metrics"] for s in scans])["total"].per_scan["f1"].mean)
  return out


def select_snapshot(
  config, adapt_dir: str, val_cases, log: Callable[[str], None] = lambda s: None
) -> dict:
  """Pick the adaptation snapshot with the best validation F1 (labelled CCTA: uses target labels).

  Every snapshot of `adapt_dir` (`cac_jax.train.loop.snapshots`) is scored on `val_cases`
  (mean total-coronary F1 after FP reduction); ties go to the earliest. The choice is stored
  in `adapt_dir/selection.json` and reused. Returns {"step", "export", "f1_by_step"}.
  """
  path = os.path.join(adapt_dir, "selection.json")
  snaps = loop.snapshots(adapt_dir)
  if not snaps:
    raise ValueError(
      f"{adapt_dir}: no adaptation snapshots to select from (config.adapt.snapshot_every)"
    )
  ids = [c.case_id for c in val_cases]
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      done = json.load(f)
    if done.get("val_cases") == ids and sorted(int(k) for k in done["f1_by_step"]) == sorted(snaps):
      # The stored path is as the first run spelled it (relative to its working folder); the
      # snapshot is found again under this `adapt_dir`, wherever the work folder now is.
      return {**done, "export": snaps[int(done["step"])]}
  log(
    f"selecting an adaptation snapshot of {os.path.basename(adapt_dir)} on {len(val_cases)} labelled CCTA "
    f"validation scans ({len(snaps)} snapshots)"
  )
  f1 = mean_f1(
    config, {str(k): checkpoints.load_inference(v)[0] for k, v in snaps.items()}, val_cases, log
  )
  f1_by_step = {int(k): v for k, v in f1.items()}
  best = min(snaps, key=lambda k: (-np.nan_to_num(f1_by_step[k], nan=-1.0), k))
  out = {
    "step": best,
    "export": snaps[best],
    "f1_by_step": {str(k): v for k, v in sorted(f1_by_step.items())},
    "val_cases": ids,
    "note": "model selection with target (CCTA) labels: not unsupervised",
  }
  atomic.write_text(path, json.dumps(out, indent=1) + "\n")
  return out


def _provenance(manifest_csv: str, roles: str) -> dict:
  return data_lib.manifest_provenance([manifest_csv], roles)


def train_models(
  config, manifest_csv: str, workdir: str, log: Callable[[str], None] = lambda s: None
) -> dict[str, str]:
  """Train the source network, the two adapted variants and the configured extras.

  As configured, also the oracle and the validation-selected snapshots. Returns {model: export
  dir}."""
  exports = {}
  src_dir = os.path.join(workdir, "source")
  exports["no_adaptation"] = os.path.join(src_dir, "export")
  if checkpoints.is_exported(exports["no_adaptation"]):
    log(f"reusing the source network {exports['no_adaptation']}")
  else:
    log("training the source network on labelled chest NCCT")
    loop.train_source(
      config,
      src_dir,
      data_lib.sampler_streams(
        _load(manifest_csv, config, "source_train"),
        None,
        config,
        config.seed,
        _provenance(manifest_csv, "source_train"),
      ),
      resume=True,  # a run killed mid-training continues from its last checkpoint
    )
  models_wanted = {c.model for c in columns(config)}
  if "oracle" in models_wanted:
    exports["oracle"] = os.path.join(workdir, "oracle", "export")
    if checkpoints.is_exported(exports["oracle"]):
      log(f"reusing the oracle {exports['oracle']}")
    else:
      log("training the oracle on labelled CCTA (adapt_target labels; adaptation never reads them)")
      labelled = _load(manifest_csv, config, "adapt_target", labels=True)
      loop.train_source(
        config,
        os.path.join(workdir, "oracle"),
        data_lib.sampler_streams(
          labelled, None, config, config.seed, _provenance(manifest_csv, "adapt_target")
        ),
        resume=True,
      )
  source_params, _ = checkpoints.load_inference(exports["no_adaptation"])
  adapt_data = data_lib.sampler_streams(
    _load(manifest_csv, config, "adapt_source"),
    _load(manifest_csv, config, "adapt_target"),
    config,
    config.seed + 100,
    _provenance(manifest_csv, "adapt_source + adapt_target"),
  )
  for name, alpha in (("adv_cls", float(config.adapt.alpha)), ("adv_only", 0.0)):
    d = os.path.join(workdir, name)
    exports[name] = os.path.join(d, "export")
    if checkpoints.is_exported(exports[name]):
      log(f"reusing the adapted network {exports[name]}")
    else:
      log(f"adapting to CCTA ({name}: alpha = {alpha})")
      cfg = ml_collections.ConfigDict(config.to_dict())
      cfg.adapt.alpha = alpha
      loop.adapt(cfg, d, source_params, adapt_data, resume=True)
    if f"{name}_val" in models_wanted:
      chosen = select_snapshot(config, d, _load(manifest_csv, config, "ccta_val"), log)
      exports[f"{name}_val"] = chosen["export"]
    if f"{name}_tested" in models_wanted:
      step = tested_step(config)
      if step not in loop.snapshots(d):
        raise ValueError(f"{d}: no snapshot at the tested step {step} (adapt.snapshot_every)")
      exports[f"{name}_tested"] = loop.snapshots(d)[step]
  return exports


def column_settings(config, fp_reduction: bool) -> postprocess.FPReductionSettings:
  """The scoring settings of a Table 2 column.

  config.scoring's false-positive reduction, or every step off (`launch.score
  --noregion_growing --nosize_limits --noheart_filter --noaorta_threshold`: the network
  classifies every voxel >= 130 HU of the scan, CCTA contrast lumen included, as the authors'
  test script does without FP reduction; see `postprocess.FPReductionSettings.aorta_threshold`)."""
  off = (
    {}
    if fp_reduction
    else dict(region_growing=False, size_limits=False, heart_filter=False, aorta_threshold=False)
  )
  return postprocess.FPReductionSettings.from_config(config.scoring, **off)


def scoring_progress(
  log: Callable[[str], None], what: str, n_models: int
) -> Callable[[int, int], None]:
  """A `predict_columns` progress callback, timed from its creation.

  It logs 'scoring <what>k/n scans x m networks (s/scan, ETA)'."""
  started = time.monotonic()

  def progress(done: int, total: int) -> None:
    rate = done / max(time.monotonic() - started, 1e-9)
    log(
      f"scoring {what}{done}/{total} scans x {n_models} networks "
      f"({1 / rate:.1f} s/scan, {loop.eta(total - done, rate)})"
    )

  return progress


def predict_raw(
  params_by_model: dict[str, Any],
  config,
  cases,
  fp_reduction: bool,
  progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, list[tuple[np.ndarray, pipeline.Setup]]]:
  """Raw network classes (before FP reduction) per model and case, as `launch.score` computes them.

  With the settings of `column_settings(config, fp_reduction)` (`pipeline.prepare` and
  `pipeline.raw_classes`; the case's manifest domain, heart and aorta masks). The setup (threshold,
  heart region) and ROI plan of a case are made once for all models (`predict_columns`).

  Returns {model: [(uint8 (z, y, x) classes 0..6, `pipeline.Setup`) per case]}; a case scoring
  cannot score (CCTA without an aorta, empty heart mask) gives all-zero classes.
  """
  got = predict_columns(
    params_by_model, config, cases, {m: {fp_reduction} for m in params_by_model}, progress=progress
  )
  return {m: got[(m, fp_reduction)] for m in params_by_model}


def predict_columns(
  params_by_model: dict[str, Any],
  config,
  cases,
  wanted: dict[str, set[bool]],
  infer_options: dict[str, Any] | None = None,
  progress: Callable[[int, int], None] = lambda done, total: None,
) -> dict[tuple[str, bool], list[tuple[np.ndarray, pipeline.Setup]]]:
  """`predict_raw` for several FP-reduction settings at once.

  Returns {(model, fp_reduction): [(uint8 (z, y, x) classes, `pipeline.Setup`) per case]} for
  each model's flags in `wanted`.

  Per case, every model runs on one ROI plan (`pipeline.raw_classes_many`). A model wanted
  with and without FP reduction runs once, over the whole scan's candidates: its classes with
  FP reduction are those restricted to the heart region (and, in CCTA, to the aortic-lumen
  threshold), which is what `launch.score` computes there, because a voxel's network output
  depends only on the scan around it, not on which other voxels are candidates or on the ROI
  that holds it (XLA's convolutions and the classifier give each output the same arithmetic
  whatever the ROI's shape; tests/test_scoring_paths.py checks the labels). `infer_options` go to
  `infer.predict_candidates_many` (default `INFER_OPTIONS`: ROI shapes, which do not change
  the outputs). `progress(done, total)` is called after each case.
  """
  infer_options = INFER_OPTIONS if infer_options is None else infer_options
  out = {(m, fp): [] for m, flags in wanted.items() for fp in flags}
  both = [m for m, flags in wanted.items() if flags == {False, True}]
  for k, case in enumerate(cases):
    setups = {
      fp: pipeline.prepare_case(case, config, column_settings(config, fp))
      for fp in set().union(*wanted.values())
    }
    shared = both if len(setups) == 2 and _nested(setups[True], setups[False]) else []
    for fp, setup in setups.items():
      names = [m for m, flags in wanted.items() if fp in flags and not (fp and m in shared)]
      if not names:
        continue
      raws = pipeline.raw_classes_many(
        setup, case.scan, [params_by_model[m] for m in names], config, **infer_options
      )
      for m, raw in zip(names, raws):
        out[(m, fp)].append((raw.astype(np.uint8), setup))
    if shared:
      inner = setups[True]  # its candidates, once per case for every shared model
      keep = (
        None
        if inner.skip_reason
        else pipeline.candidate_mask(case.scan.hu, inner.threshold_hu, inner.region)
      )
      for m in shared:
        out[(m, True)].append((_restrict(out[(m, False)][-1][0], keep), inner))
    progress(k + 1, len(cases))
  return out


def _nested(inner: pipeline.Setup, outer: pipeline.Setup) -> bool:
  """Whether `inner`'s candidates are among `outer`'s (no region there, a threshold as low)."""
  return bool(inner.skip_reason) or (
    not outer.skip_reason and outer.region is None and outer.threshold_hu <= inner.threshold_hu
  )


def _restrict(raw: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
  """Whole-scan raw classes kept at `keep`, the candidates of the FP-reduced setup.

  `keep` is `pipeline.candidate_mask` (region and HU >= threshold) of that setup, e.g. a CCTA
  column at the aortic-lumen threshold from one classified at 130 HU; None (an empty setup):
  all zero."""
  if keep is None:
    return np.zeros_like(raw)
  return np.where(keep, raw, 0).astype(raw.dtype)


@dataclasses.dataclass(frozen=True)
class SparseClasses:
  """A (z, y, x) uint8 class map stored as its nonzero voxels; `dense()` gives the array back.

  The experiment keeps every column's map of every test scan, and those are almost all
  background."""

  shape: tuple[int, ...]
  index: np.ndarray  # flat indices of the nonzero voxels, ascending
  values: np.ndarray  # their classes, uint8

  @classmethod
  def of(cls, classes: np.ndarray) -> SparseClasses:
    flat = np.asarray(classes).reshape(-1)
    index = np.flatnonzero(flat)
    return cls(tuple(np.shape(classes)), index, flat[index].astype(np.uint8))

  def dense(self) -> np.ndarray:
    out = np.zeros(self.shape, np.uint8)
    out.reshape(-1)[self.index] = self.values
    return out

  def __eq__(self, other) -> bool:
    return (
      isinstance(other, SparseClasses)
      and self.shape == other.shape
      and np.array_equal(self.index, other.index)
      and np.array_equal(self.values, other.values)
    )

  __hash__ = None


def reference_min_voxels(config) -> int:
  """`config.evaluation.reference_min_voxels`: the size of reference specks left out.

  Reference components of at most this many voxels are left out before scoring
  (`metrics.drop_small_components`; 0: none)."""
  return int(config.get("evaluation", {}).get("reference_min_voxels", 0))


def evaluate_predictions(
  config, cases, raw: list[tuple[np.ndarray, pipeline.Setup]], fp_reduction: bool
) -> list[dict]:
  """Per-scan metrics of `predict_raw(..., fp_reduction)`'s predictions after FP reduction.

  The reduction is `pipeline.reduced_classes` with the same settings (so a column's classes are
  `launch.score`'s labels)."""
  settings = column_settings(config, fp_reduction)
  min_voxels = reference_min_voxels(config)
  out = []
  for case, (classes, setup) in zip(cases, raw):
    classes, _ = pipeline.reduced_classes(setup, case.scan, classes, settings)
    vox = case.scan.voxel_volume_mm3
    ref = metrics.drop_small_components(case.labels, min_voxels)
    out.append(
      {
        "id": case.case_id,
        "metrics": metrics.scan_metrics(ref, classes, case.scan.spacing),
        "ref_mm3": float(np.isin(ref, labels_lib.CORONARY_CLASSES).sum() * vox),
        "pred_mm3": float(np.isin(classes, labels_lib.CORONARY_CLASSES).sum() * vox),
        "classes": SparseClasses.of(classes),
      }
    )
  return out


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  seed: int | None = None,
  log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
  """Data, training, adaptation, selection and evaluation for one experiment seed.

  Returns {"table": {column: {row: {measure: (mean, sd, n)}}}, "per_scan", "exports",
  "columns", "gates" (after FP reduction), "gates_no_fp" (without), "selection"}.
  """
  seed = int(config.seed if seed is None else seed)
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = seed
  os.makedirs(workdir, exist_ok=True)
  manifest_csv = make_data(config, os.path.join(workdir, "data"), seed, log)
  exports = train_models(config, manifest_csv, workdir, log)
  cols = columns(config)
  # In column order (NCCT first), the same in every process: a resumed run logs as the first did.
  tests = {role: _load(manifest_csv, config, role) for role in dict.fromkeys(c.role for c in cols)}
  params = {m: checkpoints.load_inference(d)[0] for m, d in exports.items()}
  # A validation-selected snapshot that is the final generator reuses its predictions.
  alias = {
    m: m[:-4] for m in params if m.endswith("_val") and _same_params(params[m], params[m[:-4]])
  }
  table, per_scan = cached_scores(
    os.path.join(workdir, "scores.pkl"),
    scores_key(config, params),
    lambda: score_tests(config, cols, tests, params, alias, log),
    log,
  )
  paired_scores = None
  if int(config.experiment.get(PAIRED_FIELD, 0)) > 0:
    paired_csv = paired_manifest(os.path.join(workdir, "data"))
    paired_scores = cached(
      os.path.join(workdir, "paired_scores.pkl"),
      scores_key(config, params, paired=True),
      lambda: score_paired(config, paired_csv, params, log),
      log,
      "the paired test scores",
    )
  selection = {}
  for m in ("adv_cls", "adv_only"):
    p = os.path.join(workdir, m, "selection.json")
    if f"{m}_val" in exports and os.path.exists(p):
      with open(p, encoding="utf-8") as f:
        selection[m] = json.load(f)
  return {
    "seed": seed,
    "table": table,
    "per_scan": per_scan,
    "exports": exports,
    "manifest": manifest_csv,
    "columns": [c.name for c in cols],
    "gates": benchmark_gates([per_scan]),
    "gates_no_fp": benchmark_gates([per_scan], "without FP reduction"),
    "selection": selection,
    "reference_min_voxels": reference_min_voxels(config),
    "no_fp_scans": {role: (no_fp_scans(config, len(c)), len(c)) for role, c in tests.items()},
    "paired": paired_scores,
  }


# The networks that score the paired test set's scans, per domain (`score_paired`), each with
# FP reduction as `launch.score` scores by default: the NCCT scan by the NCCT network (what a
# clinician compares with: the same patient's non-contrast score), its CCTA twin by both.
PAIRED_NETWORKS = {"ncct": ("no_adaptation",), "ccta": ("no_adaptation", "adv_cls")}
# The agreements the report prints (`paired_agreements`): (title, reference, compared score),
# each a key of `score_paired`'s scores: "<domain>_label" (the reference labels) or
# "<domain>_<model>" (that network's prediction after FP reduction). The last two are ceilings:
# the NCCT network on NCCT (the phantoms' counterpart of published NCCT tools against manual
# scoring) and the CCTA labels themselves (calcium labelled above the lumen threshold, as the
# authors labelled CCTA: what a CCTA score that matched its reference would reach).
PAIRED_COMPARISONS = (
  ("NCCT network on CCTA, against its NCCT score", "ncct_no_adaptation", "ccta_no_adaptation"),
  (
    "adapted network on CCTA, against the NCCT network's NCCT score",
    "ncct_no_adaptation",
    "ccta_adv_cls",
  ),
  ("NCCT network on CCTA, against the NCCT labels", "ncct_label", "ccta_no_adaptation"),
  ("adapted network on CCTA, against the NCCT labels", "ncct_label", "ccta_adv_cls"),
  ("NCCT network on NCCT, against the NCCT labels", "ncct_label", "ncct_no_adaptation"),
  ("CCTA labels, against the NCCT labels", "ncct_label", "ccta_label"),
)


def score_paired(
  config, manifest_csv: str, params: dict[str, Any], log: Callable[[str], None] = lambda s: None
) -> dict:
  """Total coronary Agatston and volume of each paired patient's scans (`make_paired_data`).

  The NCCT scan from its labels and from the NCCT network, the CCTA twin from its labels, the
  NCCT network and the adapted network (adv_cls), each network after FP reduction through the
  test columns' path (`predict_columns`, `evaluate_predictions`); Agatston on the working grid
  (`paired.coronary_scores`), labels without components of at most `reference_min_voxels`.

  Returns {"patients": [id], "agatston": {score: [per patient]}, "volume_mm3": {score: [...]}}
  with the scores of `PAIRED_COMPARISONS` ("ncct_label", "ncct_no_adaptation", "ccta_label",
  "ccta_no_adaptation", "ccta_adv_cls").
  """
  pairs = paired.read_pairs(manifest_csv)
  out = {"patients": [p.patient for p in pairs], "agatston": {}, "volume_mm3": {}}
  min_voxels = reference_min_voxels(config)
  progress = scoring_progress(log, f"{PAIRED_ROLE}: ", len(PAIRED_NETWORKS["ccta"]))

  def add(name: str, classes: np.ndarray, scan) -> None:
    agatston, volume = paired.coronary_scores(classes, scan)
    out["agatston"].setdefault(name, []).append(agatston)
    out["volume_mm3"].setdefault(name, []).append(volume)

  for k, pair in enumerate(pairs):
    for domain, row in (("ncct", pair.ncct), ("ccta", pair.ccta)):
      case = manifest.load_case(row, config)
      add(f"{domain}_label", metrics.drop_small_components(case.labels, min_voxels), case.scan)
      models = PAIRED_NETWORKS[domain]
      got = predict_columns(
        {m: params[m] for m in models}, config, [case], {m: {True} for m in models}
      )
      for m in models:
        (scan,) = evaluate_predictions(config, [case], got[(m, True)], True)
        add(f"{domain}_{m}", scan["classes"].dense(), case.scan)
    progress(k + 1, len(pairs))
  return out


def paired_agreements(
  results: Sequence[dict], n_resamples: int = gates_lib.N_RESAMPLES
) -> dict[str, paired.Agreement]:
  """{title: `paired.agreement`} for each of `PAIRED_COMPARISONS` over the paired patients.

  The patients of every seed of `results`, each scored by its own seed's networks (pooled, the
  bootstrap resamples patients); {} when no seed has a paired test set."""
  with_pairs = [r for r in results if r.get("paired")]
  if not with_pairs:
    return {}
  several = len(with_pairs) > 1
  patients = [
    f"seed{r['seed']}/{p}" if several else p for r in with_pairs for p in r["paired"]["patients"]
  ]

  def values(kind: str, score: str) -> list[float]:
    return [v for r in with_pairs for v in r["paired"][kind][score]]

  return {
    title: paired.agreement(
      patients,
      values("agatston", ref),
      values("agatston", other),
      values("volume_mm3", ref),
      values("volume_mm3", other),
      n_resamples=n_resamples,
    )
    for title, ref, other in PAIRED_COMPARISONS
  }


def score_tests(
  config,
  cols,
  tests: dict[str, list],
  params: dict[str, Any],
  alias: dict[str, str] | None = None,
  log: Callable[[str], None] = lambda s: None,
) -> tuple[dict, dict]:
  """Table 2's columns `cols` on the test sets `tests` ({role: cases}) with `params`.

  `params`: {model: inference params}; `alias` maps a model to one whose predictions it shares.

  Each column is what `launch.score` gives with its settings; a column without FP reduction
  scores the first `no_fp_scans` scans of its test set only. Per case the network runs once
  for all models and both FP-reduction settings (`predict_columns`), and the case's columns are
  evaluated before the next case is scored, so that only one case's raw class maps are held.
  Returns (table {column: {row: {measure: (mean, sd, n)}}}, per_scan {column: [scan dicts]}).
  """
  alias = alias or {}
  per_scan = {c.name: [] for c in cols}
  for role, cases in tests.items():
    mine = [c for c in cols if c.role == role]
    n_no_fp = no_fp_scans(config, len(cases))
    progress = scoring_progress(log, f"{role}: ", len({alias.get(c.model, c.model) for c in mine}))
    for k, case in enumerate(cases):
      now = [c for c in mine if c.fp_reduction or k < n_no_fp]
      wanted = {}
      for c in now:
        wanted.setdefault(alias.get(c.model, c.model), set()).add(c.fp_reduction)
      got = predict_columns({m: params[m] for m in wanted}, config, [case], wanted)
      for c in now:
        raw = got[(alias.get(c.model, c.model), c.fp_reduction)]
        per_scan[c.name] += evaluate_predictions(config, [case], raw, c.fp_reduction)
      progress(k + 1, len(cases))
  table = {}
  for c in cols:
    agg = metrics.aggregate([s["metrics"] for s in per_scan[c.name]])
    table[c.name] = {
      r: {m: _cell(agg[r].per_scan[m]) for m, _ in MEASURES + AUTHORS_MEASURES} for r in ROWS
    }
  return table, per_scan


def no_fp_scans(config: ml_collections.ConfigDict, n_scans: int) -> int:
  """How many of a test set's `n_scans` scans the columns without FP reduction score.

  The first `experiment.n_no_fp_scans` ones, every scan when negative."""
  n = int(config.experiment.get("n_no_fp_scans", -1))
  return n_scans if n < 0 else min(n, n_scans)


def scores_key(
  config: ml_collections.ConfigDict, params: dict[str, Any], paired: bool = False
) -> str:
  """A digest of everything the test scores depend on: the config and every model's weights.

  The config is taken less its name and seed list, so that a demo folder serves as the
  benchmark's seed folder. The Table 2 test scores' key (`paired` False) leaves out the paired
  test set's settings too, which they do not read; the paired scores' key (`paired` True) has
  them."""
  cfg = config.to_dict()
  cfg.pop("name", None)
  cfg.get("experiment", {}).pop("seeds", None)
  if not paired:
    cfg.get("experiment", {}).pop(PAIRED_FIELD, None)
    (cfg.get("experiment", {}).get("p_no_coronary_calcium") or {}).pop(PAIRED_ROLE, None)
  h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
  for model in sorted(params):
    h.update(model.encode())
    for leaf in jax.tree.leaves(params[model]):
      h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def cached_scores(
  path: str,
  key: str,
  compute: Callable[[], tuple[dict, dict]],
  log: Callable[[str], None] = lambda s: None,
) -> tuple[dict, dict]:
  """`compute()`'s (table, per_scan), stored at `path` under `key`, reused while the key matches.

  So a stopped benchmark resumes after its scored seeds (scoring is its longest phase). Class
  maps are already sparse (`SparseClasses`).
  The file is a pickle of this package's own results, read only from the run's own folder."""
  stored = cached(
    path,
    key,
    lambda: dict(zip(("table", "per_scan"), compute())),
    log,
    "the test scores",
    "the test sets",
  )
  return stored["table"], stored["per_scan"]


def cached(
  path: str,
  key: str,
  compute: Callable[[], dict],
  log: Callable[[str], None] = lambda s: None,
  what: str = "the scores",
  scoring: str | None = None,
) -> dict:
  """`compute()`'s dict, stored at `path` (a pickle, with `key`), reused while the key matches.

  `what` and `scoring` (default `what`) name it in the log."""
  if os.path.exists(path):
    with open(path, "rb") as f:
      stored = pickle.load(f)
    if stored.get("key") == key:
      log(f"reusing {what} {path}")
      return {k: v for k, v in stored.items() if k != "key"}
    log(f"{path}: scored with other settings or weights; scoring again")
  log(f"scoring {scoring or what}")
  value = compute()
  atomic.write_with(path, lambda tmp: _dump_pickle(tmp, {"key": key, **value}))
  return value


def _dump_pickle(path: str, obj) -> None:
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def _same_params(a: dict, b: dict) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


# The columns each set of gates reads (`cac_jax.evaluation.gates`), like with like: after FP
# reduction (the set that decides) and without it (a reading: CCTA classified at every voxel
# >= 130 HU, as the authors' test script scored the paper's source-only row; NCCT at 130 HU over
# the whole scan).
GATE_SETS = {
  "after FP reduction": {
    "G1": "NCCT test",
    "G2": "CCTA no adaptation+FP red.",
    "G3": "CCTA oracle+FP red.",
  },
  "without FP reduction": {
    "G1": "NCCT test, no FP red.",
    "G2": "CCTA no adaptation",
    "G3": "CCTA oracle",
  },
}
DECIDING_GATES = "after FP reduction"  # the set whose pass rules decide; the other is a reading


def benchmark_gates(
  per_scans: Sequence[dict], which: str = "after FP reduction", n_resamples: int = 2000
) -> list[gates_lib.Gate]:
  """G1-G3 (`cac_jax.evaluation.gates`, total coronary calcium) of `GATE_SETS[which]`'s columns.

  Only the set after FP reduction decides (the other is a reading).

  Args:
    per_scans: one or more seeds' per-scan results ({column: [scan dicts]}, `score_tests`).
      Each gate value is the mean over seeds of the per-seed mean over test scans (one seed:
      the mean over its scans), with its 95 % bootstrap interval over the test scans.
  """
  cols = GATE_SETS[which]

  def groups(gate: str) -> list[list] | None:
    if not all(cols[gate] in p for p in per_scans):
      return None
    return [[s["metrics"] for s in p[cols[gate]]] for p in per_scans]

  return gates_lib.evaluate_gates(
    groups("G1") or [],
    groups("G2") or [],
    groups("G3"),
    decides=which == DECIDING_GATES,
    n_resamples=n_resamples,
  )


def gap_shares(
  results: list[dict], structure: str = "total", n_resamples: int = 2000
) -> dict[str, gates_lib.GapShare]:
  """Share of the oracle gap closed by each adapted model (`GAP_SHARES`) for `structure`.

  `structure` is "total" or an artery; F1 is read as the gates read it (`gates.calcium_f1`:
  scans with reference calcium of it), mean over the seeds of `results` with a 95 % bootstrap
  interval over test scans grouped by seed. Only rows whose columns exist."""
  out = {}
  for label, adapted, src, oracle in GAP_SHARES:
    if not all(c in results[0]["per_scan"] for c in (adapted, src, oracle)):
      continue
    f1 = {
      c: [
        gates_lib.calcium_f1([s["metrics"] for s in r["per_scan"][c]], structure) for r in results
      ]
      for c in (adapted, src, oracle)
    }
    out[label] = gates_lib.bootstrap_gap_share(
      f1[adapted], f1[src], f1[oracle], n_resamples=n_resamples
    )
  return out


def artery_f1(
  results: list[dict], n_resamples: int = 2000
) -> dict[str, dict[str, gates_lib.Estimate]]:
  """{column: {structure: F1}} for the columns the gap shares read.

  F1 over the scans with its reference calcium, mean over seeds with a 95 % bootstrap
  interval."""
  cols = dict.fromkeys(c for row in GAP_SHARES for c in row[1:] if c in results[0]["per_scan"])
  out = {}
  for c in cols:
    out[c] = {
      r: gates_lib.bootstrap(
        gates_lib.seed_mean,
        [(gates_lib.calcium_f1([s["metrics"] for s in res["per_scan"][c]], r),) for res in results],
        n_resamples=n_resamples,
      )
      for r in ROWS
    }
  return out


def _cell(s: metrics.Summary) -> tuple[float, float, int]:
  return (float(s.mean), float(s.sd), int(s.n))


def seeds_of(config: ml_collections.ConfigDict, seeds: list[int] | None = None) -> list[int]:
  """The experiment seeds: `seeds` if given, else config.experiment.seeds, else [config.seed]."""
  if seeds:
    return [int(x) for x in seeds]
  return [int(x) for x in (config.experiment.get("seeds", None) or (config.seed,))]


def run_seeds(
  config: ml_collections.ConfigDict,
  workdir: str,
  seeds: list[int],
  log: Callable[[int, str], None] = lambda seed, s: None,
) -> list[dict]:
  """`run` for each seed: in `workdir` itself for one seed, else in workdir/seed<S>."""
  return [
    run(
      config,
      workdir if len(seeds) == 1 else os.path.join(workdir, f"seed{seed}"),
      seed,
      log=lambda s, seed=seed: log(seed, s),
    )
    for seed in seeds
  ]
