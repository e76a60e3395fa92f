"""Adaptation does not depend on thread timing (issue 16, determinism).

The training loops read batch `i` of step-indexed streams; the prefetcher computes them in a
background thread. Whatever that thread's timing, the batches and so the parameters must be
the same bit for bit. (What does change results is the number of CPU cores XLA may use: see
docs/robustness.md.)
"""

import random
import time

import jax
import numpy as np
import pytest

from cac_jax import models
from cac_jax.data import synthetic
from cac_jax.train import data as data_lib
from cac_jax.train import loop
from configs import tiny


def _adapt(tmp_path, name, delay_s: float):
  config = tiny.get_config()
  config.adapt.critic_pretrain_steps = 2
  config.adapt.num_generator_steps = 3
  config.adapt.checkpoint_every = 3
  p = models.init_params(config, jax.random.key(0))
  streams = data_lib.as_streams(synthetic.SyntheticData(config, config.seed))
  rnd = random.Random(7)

  def delayed(stream):
    def f(step):
      time.sleep(rnd.uniform(0.0, delay_s))  # the background thread falls behind at random
      return stream(step)

    return f

  names = ("source", "source_critic", "target_critic", "target_generator")
  data = data_lib.prefetched(
    data_lib.Streams(*(delayed(getattr(streams, n)) for n in names)), depth=2
  )
  state = loop.adapt(
    config, str(tmp_path / name), {"generator": p["generator"], "classifier": p["classifier"]}, data
  )
  return jax.device_get({"generator": state.generator, "critic": state.critic})


@pytest.mark.slow
def test_adaptation_is_independent_of_prefetch_timing(tmp_path):
  fast = _adapt(tmp_path, "fast", 0.0)
  slow = _adapt(tmp_path, "slow", 0.05)
  fast_leaves = jax.tree_util.tree_leaves_with_path(fast)
  slow_leaves = dict(jax.tree_util.tree_leaves_with_path(slow))
  assert len(fast_leaves) == len(slow_leaves) > 0
  moved = 0
  for path, a in fast_leaves:
    b = slow_leaves[path]
    assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(path)
  # The comparison is not vacuous: adaptation changed the generator.
  p = models.init_params(tiny.get_config(), jax.random.key(0))
  for path, a in jax.tree_util.tree_leaves_with_path(fast["generator"]):
    ref = dict(jax.tree_util.tree_leaves_with_path(p["generator"]))[path]
    moved += int(not np.array_equal(a, np.asarray(ref)))
  assert moved > 0
