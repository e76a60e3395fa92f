"""A target-supervised reference for the phantom experiment (a ceiling, not a method).

How good can a network of this size get on the CCTA test phantoms when it is trained WITH CCTA
labels? `run` reads a finished single-seed `launch.reproduce` workdir (its phantoms and its
source network's config), trains a fresh network with the source schedule (config.source) on
the labelled adapt_target phantoms, whose labels adaptation never reads (phantoms have them),
and scores the ccta_test phantoms with it and with the source network: total coronary calcium,
inference in the dilated heart, size limits + heart filter without region growing; mean over
scans. If the target-supervised network does not beat the source network, no adaptation of
this network can be expected to either.
"""

import os

import ml_collections

from cac_jax import atomic, checkpoints, experiment, manifest, metrics, postprocess


def score(config: ml_collections.ConfigDict, params: dict, cases) -> dict[str, float]:
  """Mean total-coronary sensitivity, FP volume (mm³/scan) and F1 over `cases` (labelled)."""
  raw = experiment.predict_raw({"m": params}, config, cases, heart_only=True)["m"]
  settings = postprocess.FPReductionSettings.from_config(config.scoring, region_growing=False)
  per_scan = [s["metrics"] for s in experiment.evaluate_predictions(config, cases, raw, True, settings)]
  agg = metrics.aggregate(per_scan)["total"].per_scan
  return {k: float(agg[k].mean) for k in ("sensitivity", "fp_mm3", "f1")}


def run(workdir: str, negatives_in_heart: bool, output_dir: str) -> str:
  """Train (or reuse) the target-supervised network in output_dir; return the markdown table."""
  from cac_jax.train import source  # pylint: disable=g-import-not-at-top
  source_export = os.path.join(workdir, "source", "export")
  manifest_csv = os.path.join(workdir, "data", "manifest.csv")
  if not os.path.exists(manifest_csv):
    raise FileNotFoundError(f"{manifest_csv} not found: --workdir must be a finished single-seed "
                            "launch.reproduce workdir")
  source_params, config = checkpoints.load_inference(source_export)
  config = ml_collections.ConfigDict(config.to_dict())
  config.sampling.bright_in_heart = bool(negatives_in_heart)
  labelled = manifest.load_cases(manifest_csv, config, split="adapt_target")
  if not labelled or any(c.labels is None for c in labelled):
    raise ValueError(f"{manifest_csv}: the adapt_target cases need label maps (phantoms have them)")
  export = os.path.join(output_dir, "export")
  if not checkpoints.is_exported(export):
    source.train_source(config, output_dir, experiment._sampler_streams(labelled, None, config, int(config.seed)))  # pylint: disable=protected-access
  params, _ = checkpoints.load_inference(export)
  tests = experiment._load(manifest_csv, config, "ccta_test")  # pylint: disable=protected-access
  rows = {"source (NCCT), no adaptation": score(config, source_params, tests),
          f"trained on {len(labelled)} labelled CCTA ({'negatives in the dilated heart' if negatives_in_heart else 'negatives over the whole volume'})":
              score(config, params, tests)}
  lines = [f"CCTA test ({len(tests)} scans; heart-region inference, size + heart filter, no region growing)", "",
           "| network | sensitivity | FP volume (mm³/scan) | F1 |", "|---|---|---|---|"]
  lines += [f"| {name} | {r['sensitivity']:.2f} | {r['fp_mm3']:.1f} | {r['f1']:.2f} |" for name, r in rows.items()]
  text = "\n".join(lines) + "\n"
  atomic.write_text(os.path.join(output_dir, "target_supervised.md"), text)
  return text
