"""The oracle-spread study: trainings that differ only in their initial parameters."""

import re

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


def _small(config, **roles):
  for k in ("n_source_train", "n_adapt_source", "n_adapt_target", "n_ncct_test", "n_ccta_test"):
    config.experiment[k] = roles.get(k, 0)
  config.experiment.n_ccta_val = 0
  config.source.num_steps = 3
  config.source.checkpoint_every = 1  # steps 1, 2, 3 kept
  return config


def test_two_initialisations_give_two_oracles_scored_at_every_kept_step(tmp_path):
  c = _small(tiny.get_config(), n_adapt_target=1, n_ccta_test=2)
  res = oracle_spread.run(c, str(tmp_path), seed=9, init_seeds=(0, 1))
  p0, p1 = (
    checkpoints.load_inference(str(tmp_path / f"oracle_init{k}" / "export"))[0] for k in (0, 1)
  )
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)))
  assert set(res["f1"]) == {0, 1} and res["steps"] == 3 and res["test_role"] == "ccta_test"
  assert all(sorted(per_step) == [1, 2, 3] for per_step in res["f1"].values())
  assert sorted(res["spread"]) == [1, 2, 3]
  for step, spread in res["spread"].items():
    values = [res["f1"][k][step].value for k in (0, 1)]
    if all(np.isfinite(values)):
      assert spread == max(values) - min(values)
    else:
      assert np.isnan(spread)
  assert res["stable"] == bool(res["spread"][3] <= oracle_spread.MAX_SPREAD_F1)
  md = oracle_spread.markdown(res, 9)
  assert re.findall(r"^\| (\d+) \|", md, re.M) == ["1", "2", "3"]
  assert "oracle network, experiment seed 9, 3 source steps" in md


def test_the_last_kept_checkpoint_is_the_export(tmp_path):
  c = _small(tiny.get_config(), n_adapt_target=1)
  d = str(tmp_path / "oracle")
  manifest_csv = oracle_spread.experiment.make_data(c, str(tmp_path / "data"), 9)
  export = oracle_spread.train_network(c, manifest_csv, d, init_seed=3)
  kept = oracle_spread.kept_params(c, d, init_seed=3)
  assert sorted(kept) == [1, 2, 3]
  final = checkpoints.load_inference(export)[0]
  leaves = zip(jax.tree.leaves(kept[3]), jax.tree.leaves(final), strict=True)
  assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in leaves)
  assert any(
    not np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(kept[1]), jax.tree.leaves(final))
  )


def test_the_source_network_is_scored_on_the_ncct_test_scans(tmp_path):
  c = _small(tiny.get_config(), n_source_train=1, n_ncct_test=2)
  res = oracle_spread.run(c, str(tmp_path), seed=9, init_seeds=(0,), network="source")
  assert (tmp_path / "source_init0" / "export").is_dir()
  assert res["test_role"] == "ncct_test" and set(res["f1"]) == {0}
  assert "source network" in oracle_spread.markdown(res, 9)
