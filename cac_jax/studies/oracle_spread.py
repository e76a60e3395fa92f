"""How stable a trained network is: the same training run with different initial parameters.

The oracle (the source architecture and schedule trained on the labelled adapt_target CCTA) is
the benchmark's upper fixed point, so it must be a reference, not a draw. This study trains it
once per initialisation seed on the same phantoms and the same batches (config.source.init_seed;
the batch streams keep the experiment seed) and scores every kept checkpoint of each training
(`config.source.checkpoint_every`; the last three are kept) on the CCTA test scans after FP
reduction, F1 read as the gates read it (`gates.calcium_f1`). The per-step rows say both whether
the oracle is stable at its budget and whether fewer steps would do. `network="source"` asks the
same of the source network (trained on the labelled source_train NCCT, scored on the NCCT test
scans: G1's reading). Run it on a design seed, never on a benchmark seed: its result chooses the
step budget.
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
from cac_jax.train import state as state_lib

MAX_SPREAD_F1 = 0.10  # a network counts as stable when its trainings differ by at most this

# network: (labelled training role, test role scored)
NETWORKS = {"oracle": ("adapt_target", "ccta_test"), "source": ("source_train", "ncct_test")}


def train_network(
  config, manifest_csv: str, workdir: str, init_seed: int, network: str = "oracle"
) -> str:
  """`network` trained with parameter seed `init_seed` in `workdir`; returns its export dir.

  The export is reused when complete."""
  export = os.path.join(workdir, "export")
  if not checkpoints.is_exported(export):
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.source.init_seed = int(init_seed)
    role = NETWORKS[network][0]
    labelled = experiment._load(manifest_csv, cfg, role, labels=True)
    provenance = data_lib.manifest_provenance([manifest_csv], role)
    loop.train_source(
      cfg, workdir, data_lib.sampler_streams(labelled, None, cfg, cfg.seed, provenance), resume=True
    )
  return export


def kept_params(config, workdir: str, init_seed: int) -> dict[int, dict]:
  """{step: inference params} of every checkpoint kept in `workdir/checkpoints`.

  The training state of `loop.train_source` with parameter seed `init_seed`."""
  like = state_lib.init_source_state(config, int(init_seed))
  mgr = checkpoints.manager(os.path.join(workdir, "checkpoints"))
  try:
    out = {}
    for step in sorted(mgr.all_steps()):
      params = checkpoints.restore_step(mgr, step, like).params
      out[int(step)] = {k: params[k] for k in checkpoints.INFERENCE_KEYS}
    return out
  finally:
    mgr.close()


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  seed: int,
  init_seeds: Sequence[int] = (0, 1),
  log: Callable[[str], None] = lambda s: None,
  network: str = "oracle",
) -> dict:
  """`network`s of experiment `seed` for each of `init_seeds`, every kept checkpoint scored.

  Scored on the network's test scans after FP reduction.

  Returns {"f1": {init_seed: {step: gates.Estimate}}, "spread": {step: max - min F1 over
  initialisations}, "stable": spread at the last step <= MAX_SPREAD_F1, "steps":
  config.source.num_steps, "n_scans": test scans with calcium, "network", "test_role"}.
  """
  if network not in NETWORKS:
    raise ValueError(f"network {network!r}: expected one of {sorted(NETWORKS)}")
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = int(seed)
  manifest_csv = experiment.make_data(config, os.path.join(workdir, "data"), seed, log)
  params = {}
  for k in init_seeds:
    log(f"{network} with initialisation seed {k}")
    d = os.path.join(workdir, f"{network}_init{k}")
    train_network(config, manifest_csv, d, k, network)
    for step, p in kept_params(config, d, k).items():
      params[(int(k), step)] = p
  test_role = NETWORKS[network][1]
  tests = experiment._load(manifest_csv, config, test_role)
  names = {f"init{k}@{step}": (k, step) for k, step in params}
  progress = experiment.scoring_progress(log, f"{test_role}: ", len(names))
  per_scan = {name: [] for name in names}
  for i, case in enumerate(tests):  # one case's raw maps held at a time
    raw = experiment.predict_raw({n: params[names[n]] for n in names}, config, [case], True)
    for n in names:
      per_scan[n] += [
        s["metrics"] for s in experiment.evaluate_predictions(config, [case], raw[n], True)
      ]
    progress(i + 1, len(tests))
  f1: dict[int, dict[int, gates.Estimate]] = {}
  n_scans = 0
  for n, (k, step) in names.items():
    values = gates.calcium_f1(per_scan[n])
    f1.setdefault(k, {})[step] = gates.bootstrap(gates.seed_mean, [(values,)])
    n_scans = int(np.isfinite(values).sum())
  steps = sorted({step for _, step in params})
  spread = {s: _spread([f1[k][s].value for k in f1 if s in f1[k]]) for s in steps}
  return {
    "f1": f1,
    "spread": spread,
    "stable": bool(spread[steps[-1]] <= MAX_SPREAD_F1),
    "steps": int(config.source.num_steps),
    "n_scans": n_scans,
    "network": network,
    "test_role": test_role,
  }


def _spread(points: Sequence[float]) -> float:
  finite = [p for p in points if np.isfinite(p)]
  return float(max(finite) - min(finite)) if len(finite) == len(points) and finite else np.nan


def markdown(result: dict, seed: int) -> str:
  """The study's table (a row per kept step, a column per initialisation) and verdict."""
  inits = list(result["f1"])
  lines = [
    "| step | " + " | ".join(f"F1, initialisation {k} [95 % CI]" for k in inits) + " | spread |",
    "|---|" + "---|" * (len(inits) + 1),
  ]
  for step, spread in result["spread"].items():
    cells = [result["f1"][k][step].format() if step in result["f1"][k] else "—" for k in inits]
    lines.append(f"| {step} | " + " | ".join(cells) + f" | {spread:.2f} |")
  verdict = "stable" if result["stable"] else "not stable: give it more steps"
  lines.append(
    f"\n{result['network']} network, experiment seed {seed}, {result['steps']} source steps, "
    f"F1 after FP reduction over the {result['n_scans']} {result['test_role']} scans with "
    f"reference calcium; spread at the last step {result['spread'][max(result['spread'])]:.2f} "
    f"(stable if <= {MAX_SPREAD_F1:.2f}): {verdict}."
  )
  return "\n".join(lines)
