r"""A network's spread over initialisations and training steps, on a design seed.

  cac-oracle-spread --config demo --workdir runs/oracle_spread --experiment_seed 9
  cac-oracle-spread --config demo --workdir runs/oracle_spread --network source --init_seeds 0

(cac_jax.studies.oracle_spread: the oracle scored on the CCTA test scans, or the source network
on the NCCT test scans, at every kept checkpoint.)

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
_NETWORK = flags.DEFINE_enum(
  "network", "oracle", sorted(oracle_spread.NETWORKS), "Which network to train and score."
)


def main(argv):
  del argv
  train_flags.init_runtime()
  log = logging.getLogger("cac_jax.oracle_spread")
  result = oracle_spread.run(
    _CONFIG.value,
    _WORKDIR.value,
    _SEED.value,
    [int(k) for k in _INITS.value],
    log.info,
    network=_NETWORK.value,
  )
  print(oracle_spread.markdown(result, _SEED.value))


def run() -> None:  # console script cac-oracle-spread
  _cli.run(main)


if __name__ == "__main__":
  run()
