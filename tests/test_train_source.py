"""Source training: pure step, traced once, loss falls, exact resume (metric files: test_writers)."""

import json
import os

import chex
import jax
import ml_collections
import numpy as np
import pytest

from cac_jax.data import synthetic
from cac_jax.train import loop, sharding, source
from cac_jax.train import state as state_lib
from configs import tiny


@pytest.fixture(scope="module")
def config():
  c = tiny.get_config()
  c.source.log_every = 2
  return c


@pytest.fixture(scope="module")
def mesh():
  return sharding.data_mesh(jax.devices()[:1])


def test_step_traces_once_and_loss_falls(config, mesh):
  fast = config.copy_and_resolve_references()
  fast.source.learning_rate = 3e-3  # a few dozen steps on 2 CPU cores
  # The 15-px output window this test was tuned on (the source step never runs the critic;
  # a batch-statistics critic would refuse that window's 1x1 final map).
  fast.data.output_size = 15
  fast.model.critic_norm = "layer"
  # The source step, jitted like train_source does, failing if traced more than once.
  traced_step = source.jit_step(chex.assert_max_traces(source.make_source_step(fast), n=1), mesh)
  data = synthetic.SyntheticData(fast, seed=3)
  state = sharding.replicate(state_lib.init_source_state(fast), mesh)
  losses, accs = [], []
  for step in range(60):
    state, m = traced_step(state, sharding.shard_batch(data.source(step), mesh))
    m = jax.device_get(m)
    losses.append(float(m["loss"]))
    accs.append(float(m["accuracy"]))
  assert set(m) == {"loss", "centre_ce", "deep_supervision_ce", "accuracy"}
  assert int(state.step) == 60
  assert np.isfinite(losses).all()
  assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), losses
  assert np.mean(accs[-10:]) > np.mean(accs[:10]) + 0.15, accs
  chex.clear_trace_counter()


def test_step_is_pure(config, mesh):
  step = loop.cached_step(
    source.make_source_step, source.STEP_READS, config, mesh
  )  # what train_source runs
  state = sharding.replicate(state_lib.init_source_state(config), mesh)
  batch = sharding.shard_batch(synthetic.source_batch(config, 0, 0), mesh)
  copy = lambda t: jax.tree.map(lambda x: x.copy(), t)  # the step donates its state
  a, ma = step(copy(state), batch)
  b, mb = step(copy(state), batch)  # same inputs -> same outputs (dropout rng is in the state)
  chex.assert_trees_all_equal((a, ma), (b, mb))
  assert int(a.step) == 1 and not np.array_equal(a.rng, state.rng)
  assert not np.array_equal(
    a.params["heads"]["axial_head"]["kernel"], state.params["heads"]["axial_head"]["kernel"]
  )


def test_step_cache_keys_on_what_the_step_reads(config, mesh):
  """A loop field never recompiles the step; a field the step reads does; the step sees nothing else."""
  step = loop.cached_step(source.make_source_step, source.STEP_READS, config, mesh)
  loop_only = ml_collections.ConfigDict(config.to_dict())
  loop_only.source.num_steps += 7
  loop_only.source.log_every += 1
  loop_only.sampling.prefetch += 1
  assert loop.cached_step(source.make_source_step, source.STEP_READS, loop_only, mesh) is step
  math = ml_collections.ConfigDict(config.to_dict())
  math.source.learning_rate *= 2
  assert loop.cached_step(source.make_source_step, source.STEP_READS, math, mesh) is not step
  seen = loop.step_config(config, source.STEP_READS)
  assert set(seen) == {"model", "source"} and set(seen.source) == {
    "deep_supervision_weight",
    "learning_rate",
    "weight_decay",
  }


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(la) == len(lb)
  return all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_resume_is_exact(config, tmp_path):
  k = 3
  c_k = config.copy_and_resolve_references()
  c_k.source.num_steps, c_k.source.checkpoint_every = k, k
  c_next = config.copy_and_resolve_references()
  c_next.source.num_steps = k + 1
  interrupted = str(tmp_path / "interrupted")
  loop.train_source(c_k, interrupted)
  with pytest.raises(ValueError, match="resume"):
    loop.train_source(c_next, interrupted)
  resumed = loop.train_source(c_next, interrupted, resume=True)
  straight = loop.train_source(c_next, str(tmp_path / "straight"))
  assert int(resumed.step) == int(straight.step) == k + 1
  assert _leaves_equal(resumed, straight)  # params, Adam moments, rng: bit for bit
  # The export holds the final generator and classifier.
  assert os.path.isfile(tmp_path / "straight" / "export" / "cac_jax_inference.json")
  lines = [json.loads(l) for l in open(tmp_path / "straight" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [2, 4]
  assert {"loss", "accuracy", "steps_per_second"} <= set(lines[0])
