"""How stable the oracle is: the same oracle training run with different initial parameters.

The oracle (the source architecture and schedule trained on the labelled adapt_target CCTA) is
the benchmark's upper fixed point, so it must be a reference, not a draw. This study trains it
once per initialisation seed on the same phantoms and the same batches (config.source.init_seed;
the batch streams keep the experiment seed) and scores each on the CCTA test scans after FP
reduction, F1 read as the gates read it (`gates.calcium_f1`). Run it on a design seed, never on
a benchmark seed: its result chooses the oracle's step budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import os

import ml_collections
import numpy as np

from cac_jax import checkpoints
from cac_jax.evaluation import gates
from cac_jax.studies import experiment
from cac_jax.train import data as data_lib
from cac_jax.train import loop

MAX_SPREAD_F1 = 0.10  # the oracle counts as stable when its trainings differ by at most this


def train_oracle(config, manifest_csv: str, workdir: str, init_seed: int) -> str:
  """The experiment's oracle trained with parameter seed `init_seed`; returns its export dir
  (reused when complete)."""
  export = os.path.join(workdir, "export")
  if not checkpoints.is_exported(export):
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.source.init_seed = int(init_seed)
    labelled = experiment._load(manifest_csv, cfg, "adapt_target", labels=True)
    provenance = data_lib.manifest_provenance([manifest_csv], "adapt_target")
    loop.train_source(
      cfg,
      workdir,
      data_lib.sampler_streams(labelled, None, cfg, cfg.seed, provenance),
      resume=True,
    )
  return export


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  seed: int,
  init_seeds: Sequence[int] = (0, 1),
  log: Callable[[str], None] = lambda s: None,
) -> dict:
  """Oracles of experiment `seed` for each of `init_seeds`, scored on its CCTA test scans.

  Returns {"f1": {init_seed: gates.Estimate}, "spread": max - min F1, "stable": spread <=
  MAX_SPREAD_F1, "steps": config.source.num_steps, "n_scans": scans with calcium}.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = int(seed)
  manifest_csv = experiment.make_data(config, os.path.join(workdir, "data"), seed, log)
  params = {}
  for k in init_seeds:
    log(f"oracle with initialisation seed {k}")
    export = train_oracle(config, manifest_csv, os.path.join(workdir, f"oracle_init{k}"), k)
    params[str(k)] = checkpoints.load_inference(export)[0]
  log("scoring the CCTA test scans")
  tests = experiment._load(manifest_csv, config, "ccta_test")
  raw = experiment.predict_raw(params, config, tests, True)
  f1 = {}
  for k in init_seeds:
    scans = experiment.evaluate_predictions(config, tests, raw[str(k)], True)
    values = gates.calcium_f1([s["metrics"] for s in scans])
    f1[int(k)] = gates.bootstrap(gates.seed_mean, [(values,)])
    n_scans = int(np.isfinite(values).sum())
  points = [e.value for e in f1.values()]
  spread = float(max(points) - min(points))
  return {
    "f1": f1,
    "spread": spread,
    "stable": bool(spread <= MAX_SPREAD_F1),
    "steps": int(config.source.num_steps),
    "n_scans": n_scans,
  }


def markdown(result: dict, seed: int) -> str:
  """The study's table and verdict."""
  lines = [
    "| oracle initialisation seed | CCTA test F1 after FP reduction [95 % CI] |",
    "|---|---|",
  ]
  lines += [f"| {k} | {e.format()} |" for k, e in result["f1"].items()]
  verdict = "stable" if result["stable"] else "not stable: give the oracle more steps"
  lines.append(
    f"\nexperiment seed {seed}, {result['steps']} source steps, F1 over the {result['n_scans']} "
    f"CCTA test scans with reference calcium; spread {result['spread']:.2f} "
    f"(stable if <= {MAX_SPREAD_F1:.2f}): {verdict}."
  )
  return "\n".join(lines)
