"""The oracle-spread study: trainings that differ only in their initial parameters."""

import jax
import numpy as np

from cac_jax import checkpoints
from cac_jax.studies import oracle_spread
from cac_jax.train import loop, state
from configs import tiny


def test_init_seed_sets_the_initial_parameters_only():
  c = tiny.get_config()
  assert loop.init_seed(c) == c.seed  # -1: the config's seed
  c.source.init_seed = 7
  assert loop.init_seed(c) == 7
  a = state.init_source_state(c, loop.init_seed(c)).params
  c.seed, c.source.init_seed = 7, -1
  b = state.init_source_state(c, loop.init_seed(c)).params
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_two_initialisations_give_two_oracles_scored_on_the_same_scans(tmp_path):
  c = tiny.get_config()
  c.experiment.n_adapt_target = 1
  c.experiment.n_ccta_test = 2
  for k in ("n_source_train", "n_adapt_source", "n_ncct_test", "n_ccta_val"):
    c.experiment[k] = 0
  c.source.num_steps = 3
  res = oracle_spread.run(c, str(tmp_path), seed=9, init_seeds=(0, 1))
  p0, p1 = (
    checkpoints.load_inference(str(tmp_path / f"oracle_init{k}" / "export"))[0] for k in (0, 1)
  )
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))
  values = [e.value for e in res["f1"].values()]
  assert set(res["f1"]) == {0, 1} and res["steps"] == 3
  finite = [v for v in values if np.isfinite(v)]
  if len(finite) == 2:
    assert res["spread"] == max(finite) - min(finite)
    assert res["stable"] == (res["spread"] <= oracle_spread.MAX_SPREAD_F1)
  md = oracle_spread.markdown(res, 9)
  assert "| 0 |" in md and "| 1 |" in md and "experiment seed 9, 3 source steps" in md
