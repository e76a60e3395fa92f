"""The paper's experiment on phantoms (Table 2), end to end.

Data roles mirror the paper:
  source_train  labelled chest NCCT      -> supervised source training
  adapt_source  labelled cardiac NCCT    -> source side of adaptation (critic + L_cls)
  adapt_target  unlabelled CCTA          -> target side of adaptation (labels never read)
  ccta_test     labelled CCTA            -> test only, never used in training
  ncct_test     labelled chest NCCT      -> held-out source-domain test

Models: "no adaptation" (source network), "Ladv" (adapted with alpha = 0), "Ladv+Lcls"
(adapted with the configured alpha). Each is scored with or without false-positive reduction.
All volumes in mm³, per scan.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional

import ml_collections
import numpy as np

from cac_jax import labels as labels_lib
from cac_jax import metrics, pipeline, postprocess

ROLES = {  # role: (phantom domain, split, config count field, seed offset)
    "source_train": ("chest_ncct", "train", "n_source_train", 0),
    "adapt_source": ("cardiac_ncct", "adapt", "n_adapt_source", 10_000),
    "adapt_target": ("ccta", "adapt", "n_adapt_target", 20_000),
    "ccta_test": ("ccta", "test", "n_ccta_test", 30_000),
    "ncct_test": ("chest_ncct", "test", "n_ncct_test", 40_000),
}

# Table 2 columns: (name, test set, model, FP reduction on?)
COLUMNS = (
    ("NCCT test", "ncct_test", "no_adaptation", True),
    ("CCTA Ladv+Lcls+FP red.", "ccta_test", "adv_cls", True),
    ("CCTA Ladv+Lcls", "ccta_test", "adv_cls", False),
    ("CCTA Ladv", "ccta_test", "adv_only", False),
    ("CCTA no adaptation", "ccta_test", "no_adaptation", False),
    ("CCTA no adaptation+FP red.", "ccta_test", "no_adaptation", True),
)
ROWS = ("total", "LAD", "LCX", "RCA")
MEASURES = (("sensitivity", "sensitivity"), ("fp_mm3", "FP volume (mm³)"), ("f1", "F1"))


def first_case_seed(role: str, seed: int) -> int:
  """Phantom seed of the first case of `role` (a key of ROLES) in the experiment with `seed`;
  case k has seed first + k."""
  return seed * 100_000 + ROLES[role][3]


def make_data(config: ml_collections.ConfigDict, data_dir: str, seed: int, log: Callable[[str], None] = lambda s: None) -> str:
  """Write every role's phantoms into data_dir (one manifest, split = role). Returns the manifest.

  Case seeds are disjoint across roles and experiment seeds. Existing complete data is reused.
  """
  from cac_jax import phantoms
  manifest_csv = os.path.join(data_dir, "manifest.csv")
  done_marker = os.path.join(data_dir, ".complete.json")
  wanted = {role: int(config.experiment[field]) for role, (_, _, field, _) in ROLES.items()}
  if os.path.exists(done_marker):
    with open(done_marker, encoding="utf-8") as f:
      if json.load(f) == {"seed": seed, "counts": wanted}:
        return manifest_csv
  for role, (domain, _, _, _) in ROLES.items():
    log(f"phantoms: {wanted[role]} {domain} cases for {role}")
    phantoms.write_dataset(data_dir, domain, wanted[role], first_case_seed(role, seed), config, split=role)
  with open(done_marker, "w", encoding="utf-8") as f:
    json.dump({"seed": seed, "counts": wanted}, f)
  return manifest_csv


def _load(manifest_csv: str, config, role: str):
  from cac_jax import manifest
  cases = manifest.load_cases(manifest_csv, config, split=role)
  if role == "adapt_target":  # unlabelled by design: drop labels so nothing can read them
    cases = [dataclasses.replace(c, labels=None) for c in cases]
  return cases


def _sampler_streams(source_cases, target_cases, config, seed: int):
  """Step-indexed streams over PatchSamplers (batch i is a pure function of (seed, i)); the
  generator's target batches come from a second target sampler (seed + 2)."""
  from cac_jax.train import data as data_lib
  src, targets = data_lib.adaptation_samplers(source_cases, target_cases, config, seed, n_target=2)
  streams = dict(source=lambda i: src.source_batch(index=i),
                 source_critic=lambda i: src.critic_batch(index=i))
  if targets:
    tgt, tgt2 = targets
    streams.update(target_critic=lambda i: tgt.critic_batch(index=i),
                   target_generator=lambda i: tgt2.critic_batch(index=i))
  return data_lib.Streams(**streams)


def train_models(config, manifest_csv: str, workdir: str, log: Callable[[str], None] = lambda s: None) -> dict[str, str]:
  """Train the source network and the two adapted variants. Returns {model: export dir}."""
  from cac_jax import checkpoints
  from cac_jax.train import adversarial, source
  exports = {}
  src_dir = os.path.join(workdir, "source")
  exports["no_adaptation"] = os.path.join(src_dir, "export")
  if not checkpoints.is_exported(exports["no_adaptation"]):
    log("training the source network on labelled chest NCCT")
    source.train_source(config, src_dir, _sampler_streams(_load(manifest_csv, config, "source_train"), None, config, config.seed))
  source_params, _ = checkpoints.load_inference(exports["no_adaptation"])
  adapt_data = _sampler_streams(_load(manifest_csv, config, "adapt_source"), _load(manifest_csv, config, "adapt_target"),
                                config, config.seed + 100)
  for name, alpha in (("adv_cls", float(config.adapt.alpha)), ("adv_only", 0.0)):
    d = os.path.join(workdir, name)
    exports[name] = os.path.join(d, "export")
    if checkpoints.is_exported(exports[name]):
      continue
    log(f"adapting to CCTA ({name}: alpha = {alpha})")
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.adapt.alpha = alpha
    adversarial.adapt(cfg, d, source_params, adapt_data)
  return exports


def predict_raw(params_by_model: dict[str, Any], config, cases, heart_only: bool = False) -> dict[str, list[tuple[np.ndarray, float]]]:
  """Network classes at candidates (no FP reduction) and the threshold (HU), per model and case.

  Every candidate voxel of the scan is classified (the paper's pipeline: the FP-reduction heart
  filter is what removes detections outside the heart). `heart_only=True` classifies only the
  candidates inside the heart dilated by `config.scoring.heart_dilation_mm`: a shortcut for results
  evaluated after FP reduction (the heart filter drops the rest; only a lesion that reaches into
  the region while all its detected voxels lie outside can differ). The threshold and region of a
  case are computed once for all models.

  Returns {model: [(int32 (z, y, x) classes, threshold HU) per case]}; a CCTA case without an
  aorta (no threshold) or with an empty heart mask gives all-zero classes and threshold inf.
  """
  from cac_jax import threshold
  out = {m: [] for m in params_by_model}
  for case in cases:
    try:
      _, thr, _, _ = pipeline.choose_threshold(case.scan, case.domain, case.aorta_mask, config)
    except threshold.NoAortaError:
      thr = None
    if thr is None or (case.heart_mask is not None and not case.heart_mask.any()):
      for m in params_by_model:
        out[m].append((np.zeros(case.scan.shape, np.int32), float("inf")))
      continue
    region = None
    if case.heart_mask is not None and heart_only:
      region = postprocess.heart_region(case.heart_mask, case.scan.spacing, float(config.scoring.heart_dilation_mm))
    for m, params in params_by_model.items():
      out[m].append((pipeline.detect(case.scan, params, config, thr, region), float(thr)))
  return out


def evaluate_predictions(config, cases, raw: list[tuple[np.ndarray, float]], fp_reduction: bool,
                         settings: Optional[postprocess.FPReductionSettings] = None) -> list[dict]:
  """Per-scan metrics of raw predictions, optionally after false-positive reduction
  (`settings`, default from config.scoring)."""
  settings = settings or postprocess.FPReductionSettings.from_config(config.scoring)
  out = []
  for case, (classes, thr) in zip(cases, raw):
    if fp_reduction and np.isfinite(thr):
      classes = postprocess.reduce_false_positives(classes, case.scan.hu, thr, case.scan.spacing, case.heart_mask, settings)
    vox = case.scan.voxel_volume_mm3
    out.append({"id": case.case_id, "metrics": metrics.scan_metrics(case.labels, classes, case.scan.spacing),
                "ref_mm3": float(np.isin(case.labels, labels_lib.CORONARY_CLASSES).sum() * vox),
                "pred_mm3": float(np.isin(classes, labels_lib.CORONARY_CLASSES).sum() * vox),
                "classes": classes})
  return out


def run(config: ml_collections.ConfigDict, workdir: str, seed: Optional[int] = None,
        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
  """Data, training, adaptation and evaluation for one experiment seed.

  Returns {"table": {column: {row: {measure: (mean, sd, n)}}}, "per_scan": ..., "exports": ...}.
  """
  from cac_jax import checkpoints
  seed = int(config.seed if seed is None else seed)
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = seed
  os.makedirs(workdir, exist_ok=True)
  manifest_csv = make_data(config, os.path.join(workdir, "data"), seed, log)
  exports = train_models(config, manifest_csv, workdir, log)
  tests = {role: _load(manifest_csv, config, role) for role in ("ccta_test", "ncct_test")}
  params = {m: checkpoints.load_inference(d)[0] for m, d in exports.items()}
  table, per_scan, raw = {}, {}, {}
  log("scoring the test sets")
  # Whole-scan inference only for (model, test set) pairs with a raw (no FP reduction) column.
  heart_only = {(m, r): all(f for _, r2, m2, f in COLUMNS if (m2, r2) == (m, r)) for _, r, m, _ in COLUMNS}
  for role in tests:
    for ho in (False, True):
      names = sorted(m for (m, r), h in heart_only.items() if r == role and h == ho)
      if names:
        got = predict_raw({m: params[m] for m in names}, config, tests[role], heart_only=ho)
        raw.update({(m, role): v for m, v in got.items()})
  for name, role, model, fp in COLUMNS:
    scans = evaluate_predictions(config, tests[role], raw[(model, role)], fp)
    agg = metrics.aggregate([s["metrics"] for s in scans])
    table[name] = {r: {m: _cell(agg[r].per_scan[m]) for m, _ in MEASURES} for r in ROWS}
    per_scan[name] = scans
  return {"seed": seed, "table": table, "per_scan": per_scan, "exports": exports, "manifest": manifest_csv}


def _cell(s: metrics.Summary) -> tuple[float, float, int]:
  return (float(s.mean), float(s.sd), int(s.n))


def combine_seeds(results: list[dict]) -> dict:
  """Mean and SD over seeds of each cell's per-seed mean: {column: {row: {measure: (mean, sd, n_seeds)}}}."""
  out = {}
  for name, *_ in COLUMNS:
    out[name] = {}
    for r in ROWS:
      out[name][r] = {}
      for m, _ in MEASURES:
        vals = np.array([res["table"][name][r][m][0] for res in results], dtype=float)
        vals = vals[np.isfinite(vals)]
        sd = float(np.std(vals, ddof=1)) if vals.size > 1 else float("nan")
        out[name][r][m] = (float(vals.mean()) if vals.size else float("nan"), sd, int(vals.size))
  return out


def table_markdown(table: dict, over: str = "scans") -> str:
  """The paper's Table 2 layout: rows artery x measure, columns test set / method; mean (SD)."""
  names = [c[0] for c in COLUMNS]
  lines = ["| artery | measure | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
  for r in ROWS:
    for m, label in MEASURES:
      cells = []
      for n in names:
        mean, sd, k = table[n][r][m]
        digits = 1 if m == "fp_mm3" else 2
        cells.append("n/a" if not np.isfinite(mean) else
                     f"{mean:.{digits}f} ({sd:.{digits}f})" if np.isfinite(sd) else f"{mean:.{digits}f}")
      lines.append(f"| {r} | {label} | " + " | ".join(cells) + " |")
  lines.append(f"\nmean (SD) over {over}; sensitivity and F1 over scans with reference calcium of that artery.")
  return "\n".join(lines)


def write_figures(result: dict, config, out_dir: str) -> dict[str, str]:
  """Bland-Altman of total coronary volume (CCTA, adapted + FP reduction, and no adaptation)
  and an overlay of the first CCTA test case. Returns {name: path}."""
  from cac_jax import plots
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for col, tag in (("CCTA Ladv+Lcls+FP red.", "adapted"), ("CCTA no adaptation+FP red.", "no_adaptation")):
    scans = result["per_scan"][col]
    p = os.path.join(out_dir, f"bland_altman_ccta_{tag}.png")
    plots.bland_altman_plot([s["ref_mm3"] for s in scans], [s["pred_mm3"] for s in scans], p,
                            title=f"CCTA total coronary calcium volume: {col}")
    paths[f"bland_altman_{tag}"] = p
  from cac_jax import manifest
  case = manifest.load_cases(result["manifest"], config, split="ccta_test")[0]
  for col, tag in (("CCTA Ladv+Lcls+FP red.", "adapted"), ("CCTA no adaptation+FP red.", "no_adaptation")):
    p = os.path.join(out_dir, f"overlay_ccta_{tag}.png")
    plots.overlay_png(case.scan.hu, result["per_scan"][col][0]["classes"], p, case.scan.spacing, title=f"{case.case_id}: {col}")
    paths[f"overlay_{tag}"] = p
  p = os.path.join(out_dir, "overlay_ccta_reference.png")
  plots.overlay_png(case.scan.hu, case.labels, p, case.scan.spacing, title=f"{case.case_id}: reference")
  paths["overlay_reference"] = p
  return paths


def table_json(table: dict) -> str:
  return json.dumps(table, indent=1)
