"""Source training: pure step, traced once, loss falls, exact resume, metric files."""

import json
import os
import struct

import chex
import jax
import ml_collections
import numpy as np
import pytest

from cac_jax import synthetic
from cac_jax.train import loop
from cac_jax.train import sharding
from cac_jax.train import source
from cac_jax.train import state as state_lib
from cac_jax.train import writers
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
  step = loop.cached_step(source.make_source_step, source.STEP_READS, config, mesh)  # what train_source runs
  state = sharding.replicate(state_lib.init_source_state(config), mesh)
  batch = sharding.shard_batch(synthetic.source_batch(config, 0, 0), mesh)
  copy = lambda t: jax.tree.map(lambda x: x.copy(), t)  # the step donates its state
  a, ma = step(copy(state), batch)
  b, mb = step(copy(state), batch)  # same inputs -> same outputs (dropout rng is in the state)
  chex.assert_trees_all_equal((a, ma), (b, mb))
  assert int(a.step) == 1 and not np.array_equal(a.rng, state.rng)
  assert not np.array_equal(a.params["heads"]["axial_head"]["kernel"], state.params["heads"]["axial_head"]["kernel"])


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
  assert set(seen) == {"model", "source"} and set(seen.source) == {"deep_supervision_weight", "learning_rate",
                                                                   "weight_decay"}


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


# --- TensorBoard event files ----------------------------------------------------------


def _event_classes():
  """Event/Summary message classes built from a descriptor (protobuf, no TensorFlow)."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  f = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="t", syntax="proto3")
  value = f.message_type.add(name="Value")
  value.field.add(name="tag", number=1, type=9, label=1)
  value.field.add(name="simple_value", number=2, type=2, label=1)
  summary = f.message_type.add(name="Summary")
  summary.field.add(name="value", number=1, type=11, label=3, type_name=".t.Value")
  event = f.message_type.add(name="Event")
  event.field.add(name="wall_time", number=1, type=1, label=1)
  event.field.add(name="step", number=2, type=3, label=1)
  event.field.add(name="file_version", number=3, type=9, label=1)
  event.field.add(name="summary", number=5, type=11, label=1, type_name=".t.Summary")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


def test_event_file_parses(tmp_path):
  with writers.MetricWriter(str(tmp_path)) as w:
    w.write(1, {"loss": 0.5, "accuracy": 0.25})
    w.write(300, {"loss": -1.75})
  records = list(writers.read_tfrecords(w.events_path))  # checks both CRCs of every record
  assert len(records) == 3
  event = _event_classes()
  first = event.FromString(records[0])
  assert first.file_version == "brain.Event:2"
  e1, e2 = event.FromString(records[1]), event.FromString(records[2])
  assert e1.step == 1 and e2.step == 300 and e1.wall_time > 1e9
  assert {v.tag: v.simple_value for v in e1.summary.value} == {"loss": 0.5, "accuracy": 0.25}
  assert [(v.tag, v.simple_value) for v in e2.summary.value] == [("loss", -1.75)]
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert lines[1]["step"] == 300 and lines[1]["loss"] == -1.75


def test_crc32c_and_corruption_detected(tmp_path):
  assert writers.crc32c(b"123456789") == 0xE3069283  # standard CRC-32C check value
  path = tmp_path / "r"
  path.write_bytes(writers.tfrecord(b"hello"))
  assert list(writers.read_tfrecords(str(path))) == [b"hello"]
  raw = bytearray(path.read_bytes())
  raw[13] ^= 1
  path.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="CRC"):
    list(writers.read_tfrecords(str(path)))
  assert struct.calcsize("<Q") == 8
