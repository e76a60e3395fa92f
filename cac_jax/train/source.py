"""Supervised training of G, C and the deep-supervision heads on labelled source patches.

loss = CE(C(G(x))[centre], y[centre]) + w * sum_views mean CE(head_v(G_v(x)), y_v)
with w = `config.source.deep_supervision_weight`, CE from logits, dropout in C active.
Optimiser: Adam with L2 weight decay added to the gradient (`state.source_optimizer`).
"""

from __future__ import annotations

import logging as std_logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cac_jax import checkpoints
from cac_jax import models
from cac_jax import xla_options
from cac_jax.train import data as data_lib
from cac_jax.train import sharding
from cac_jax.train import state as state_lib
from cac_jax.train import writers

SourceState = state_lib.SourceState
logging = std_logging.getLogger(__name__)


def centre_labels(labels: jax.Array) -> jax.Array:
  """(3, B, o, o) label maps -> (B,) class of the centre voxel (taken from the axial view)."""
  o = labels.shape[-1]
  return labels[0, :, o // 2, o // 2]


def source_loss(params: dict, batch: dict, rng: jax.Array, config: ml_collections.ConfigDict):
  """Total loss and metrics for one labelled batch.

  Args:
    params: {"generator", "classifier", "heads"}.
    batch: {"views": (3, B, P, P, 1), "labels": (3, B, o, o)}.
    rng: dropout key.
  Returns:
    (loss, {"loss", "centre_ce", "deep_supervision_ce", "accuracy"}).
  """
  g, c, h, _ = models.build(config)
  feats = g.apply({"params": params["generator"]}, batch["views"])  # (B, o, o, 3F)
  logits = models.centre_logits(c, params["classifier"], feats, deterministic=False, rng=rng)
  y = centre_labels(batch["labels"])
  centre_ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  head_logits = h.apply({"params": params["heads"]}, feats)  # (3, B, o, o, K)
  per_view = optax.softmax_cross_entropy_with_integer_labels(head_logits, batch["labels"]).mean(axis=(1, 2, 3))
  ds_ce = per_view.sum()
  loss = centre_ce + config.source.deep_supervision_weight * ds_ce
  acc = (jnp.argmax(logits, -1) == y).mean()
  return loss, {"loss": loss, "centre_ce": centre_ce, "deep_supervision_ce": ds_ce, "accuracy": acc}


def make_source_step(config: ml_collections.ConfigDict) -> Callable[[SourceState, dict], tuple[SourceState, dict]]:
  """Pure `train_step(state, batch) -> (state, metrics)` (not jitted)."""
  tx = state_lib.source_optimizer(config)

  def train_step(state: SourceState, batch: dict):
    rng, dropout_rng = jax.random.split(state.rng)
    grads, metrics = jax.grad(source_loss, has_aux=True)(state.params, batch, dropout_rng, config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

  return train_step


def jit_step(step_fn: Callable, mesh: jax.sharding.Mesh, batch_axis: int = 1) -> Callable:
  """jit a `(state, batch) -> (state, metrics)` step: state replicated and donated, batch split."""
  rep = sharding.replicated(mesh)
  return xla_options.jit(step_fn, mesh.devices.flat[0].platform,
                         in_shardings=(rep, sharding.batch_sharding(mesh, batch_axis)),
                         out_shardings=(rep, rep), donate_argnums=0)


_COMPILED: dict = {}
# Config fields that only steer the loops, never the math of a step.
_LOOP_FIELDS = ("num_steps", "log_every", "checkpoint_every", "num_generator_steps", "critic_pretrain_steps",
                "critic_steps", "critic_steps_later", "change_at", "snapshot_every", "critic_patches",
                "bright_in_heart")


def _step_key(config: ml_collections.ConfigDict) -> str:
  c = config.to_dict()
  for section in ("source", "adapt"):
    for f in _LOOP_FIELDS:
      c.get(section, {}).pop(f, None)
  return ml_collections.ConfigDict(c).to_json()


def cached_step(name: str, make: Callable, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                batch_axis: int = 1) -> Callable:
  """`jit_step(make(config), mesh, batch_axis)`, reused for equal (name, config, mesh, axis).

  Repeated `train_source`/`adapt` calls in one process (tests, resume) compile only once.
  """
  key = (name, _step_key(config), mesh, batch_axis)
  if key not in _COMPILED:
    _COMPILED[key] = jit_step(make(config), mesh, batch_axis)
  return _COMPILED[key]


class _Rate:
  """Steps per second between log lines."""

  def __init__(self, step: int):
    self.step, self.time = step, time.perf_counter()

  def __call__(self, step: int) -> float:
    now = time.perf_counter()
    rate = (step - self.step) / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    return rate


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  host = jax.device_get(history)
  return {k: float(sum(float(m[k]) for m in host) / len(host)) for k in host[0]}


def train_source(config: ml_collections.ConfigDict, workdir: str, data: Any = None, resume: bool = False,
                 mesh: jax.sharding.Mesh | None = None) -> SourceState:
  """Train G, C and heads for `config.source.num_steps` steps; export `workdir/export`.

  Args:
    config: full config (sections model, data, sampling, source).
    workdir: checkpoints in `workdir/checkpoints`, metrics in `workdir/metrics.jsonl` and
      TensorBoard events; the inference export in `workdir/export`.
    data: labelled batches: a `Streams`/object with `.source`, a `stream(step)` callable or
      an iterator; default `cac_jax.synthetic.SyntheticData(config, config.seed)`.
    resume: continue from the latest checkpoint in `workdir` (exact for step-indexed data).
      Without it, a workdir that already holds checkpoints is an error.
    mesh: device mesh (default: all devices).
  Returns:
    The final state.
  """
  mesh = mesh or sharding.data_mesh()
  training_data = data_lib.describe_training_data(data, config)
  if data is None:
    from cac_jax import synthetic  # pylint: disable=g-import-not-at-top
    data = data_lib.prefetched(data_lib.as_streams(synthetic.SyntheticData(config, config.seed)),
                               config.sampling.prefetch)
  stream = data_lib.as_streams(data).source if hasattr(data, "source") else data_lib.as_stream(data)
  if stream is None:
    raise ValueError("train_source needs a labelled source stream (data.source)")
  cfg = config.source
  mgr = checkpoints.manager(os.path.join(workdir, "checkpoints"))
  state = sharding.replicate(state_lib.init_source_state(config), mesh)
  if mgr.latest_step() is not None:
    if not resume:
      raise ValueError(f"{workdir} already holds source checkpoints (latest step {mgr.latest_step()}); "
                       "pass --resume (resume=True) to continue, or use a fresh --workdir")
    state = checkpoints.restore_latest(mgr, state, sharding.replicated(mesh))
    logging.info("resumed source training at step %d", int(state.step))
  step_fn = cached_step("source", make_source_step, config, mesh)
  start = int(state.step)
  writer = writers.MetricWriter(workdir, enabled=jax.process_index() == 0, keep=lambda r: r.get("step", 0) <= start)
  rate, history = _Rate(start), []
  logging.info("compiling the source training step (the first step waits for XLA)…")
  for step in writers.progress(range(start, cfg.num_steps), "source", cfg.num_steps, jax.process_index() == 0):
    state, metrics = step_fn(state, sharding.shard_batch(stream(step), mesh))
    history.append(metrics)
    done = step + 1
    if done % cfg.log_every == 0 or done == cfg.num_steps:
      m = _mean_metrics(history)
      m["steps_per_second"] = rate(done)
      writer.write(done, m)
      history = []
      logging.info("source step %d: loss %.4f acc %.3f (%.2f steps/s)", done, m["loss"], m["accuracy"],
                   m["steps_per_second"])
    if done % cfg.checkpoint_every == 0 or done == cfg.num_steps:
      checkpoints.save(mgr, done, state)
  writer.close()
  mgr.close()
  if hasattr(stream, "close"):
    stream.close()
  checkpoints.export_inference(os.path.join(workdir, "export"), jax.device_get(state.params), config,
                               {"stage": "source", "steps": int(state.step), "training_data": training_data})
  return state
