r"""The oracle's spread over initialisations, on a design seed (cac_jax.studies.oracle_spread).

  cac-oracle-spread --config demo --workdir runs/oracle_spread --experiment_seed 9

(From a checkout also `python -m launch.oracle_spread ...`.)
"""

import logging

from absl import flags

from cac_jax.studies import oracle_spread

from . import _cli, train_flags

_CONFIG = _cli.define_config("demo", "Experiment config.")
_WORKDIR = flags.DEFINE_string(
  "workdir", "runs/oracle_spread", "Data, oracles (reused when complete)."
)
_SEED = flags.DEFINE_integer(
  "experiment_seed", 9, "Experiment seed of the phantoms: a design seed, not a benchmark seed."
)
_INITS = flags.DEFINE_list("init_seeds", ["0", "1"], "Parameter initialisation seeds.")


def main(argv):
  del argv
  train_flags.init_runtime()
  log = logging.getLogger("cac_jax.oracle_spread")
  result = oracle_spread.run(
    _CONFIG.value, _WORKDIR.value, _SEED.value, [int(k) for k in _INITS.value], log.info
  )
  print(oracle_spread.markdown(result, _SEED.value))


def run() -> None:  # console script cac-oracle-spread
  _cli.run(main)


if __name__ == "__main__":
  run()
