"""The 3-seed benchmark behind the README's numbers: the demo's settings on seeds 0, 1, 2.

python -m launch.reproduce --config configs/benchmark.py --workdir runs/benchmark
"""

import ml_collections

from cac_jax.configs import demo


def get_config() -> ml_collections.ConfigDict:
  c = demo.get_config()
  c.name = "benchmark"
  c.experiment.seeds = (0, 1, 2)  # launch.reproduce's default when --seeds is not given
  # Per seed, 16 patients as cardiac NCCT and as CCTA: the report's risk-category agreement of
  # the NCCT and the adapted network with the same patient's NCCT score (48 patients pooled).
  c.experiment.n_paired_test = 16
  return c
