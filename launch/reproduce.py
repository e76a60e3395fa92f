r"""The paper's Table 2 on phantoms: make data, train source, adapt, score, evaluate.

  cac-reproduce --config demo --workdir runs/demo
  cac-reproduce --config benchmark --workdir runs/benchmark   # seeds 0, 1, 2
  cac-reproduce --config paper --workdir runs/paper   # a GPU

(From a checkout also `python -m launch.reproduce ...`.)
"""

import logging
import os

from absl import flags

from cac_jax.studies import experiment, report

from . import _cli, train_flags

_CONFIG = _cli.define_config("demo", "Experiment config.")
_WORKDIR = flags.DEFINE_string(
  "workdir", "runs/demo", "Where data, checkpoints and results go (reused when complete)."
)
_SEEDS = flags.DEFINE_list(
  "seeds",
  None,
  "Experiment seeds (default: config.experiment.seeds, else config.seed); "
  "several give mean (SD) over seeds and one gap share over them.",
)


def main(argv):
  del argv
  train_flags.init_runtime()
  log = logging.getLogger("cac_jax.reproduce")
  seeds = experiment.seeds_of(_CONFIG.value, _SEEDS.value)
  results = experiment.run_seeds(
    _CONFIG.value, _WORKDIR.value, seeds, log=lambda seed, s: log.info("[seed %d] %s", seed, s)
  )
  md, paths = report.write_results(results, _CONFIG.value, os.path.join(_WORKDIR.value, "results"))
  print()
  print(md)
  print("\nfigures and reports:")
  for name, path in paths.items():
    print(f"  {name}: {path}")


def run() -> None:  # console script cac-reproduce
  _cli.run(main)


if __name__ == "__main__":
  run()
