"""Supervised training of G, C and the deep-supervision heads: the loss and the pure step.

The loop around them is `cac_jax.train.loop.train_source`.

loss = CE(C(G(x))[centre], y[centre]) + w * sum_views mean CE(head_v(G_v(x)), y_v)
with w = `config.source.deep_supervision_weight`, CE from logits, dropout in C (and before
the heads, `config.model.head_dropout`) active.
Optimiser: Adam with L2 weight decay added to the gradient (`state.source_optimizer`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cac_jax import models, xla_options
from cac_jax.train import sharding
from cac_jax.train import state as state_lib

SourceState = state_lib.SourceState
# The config fields the source step reads (loss and optimiser): `cac_jax.train.loop.cached_step` keys on them.
STEP_READS = (
  "model",
  "source.deep_supervision_weight",
  "source.learning_rate",
  "source.weight_decay",
)


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
  nets = models.build(config)
  g, c, h = nets.generator, nets.classifier, nets.heads
  feats = g.apply({"params": params["generator"]}, batch["views"])  # (B, o, o, 3F)
  logits = models.centre_logits(c, params["classifier"], feats, deterministic=False, rng=rng)
  y = centre_labels(batch["labels"])
  centre_ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  if h.dropout > 0:  # its own key; without head dropout C's dropout stream is unchanged
    head_logits = h.apply(
      {"params": params["heads"]},
      feats,
      deterministic=False,
      rngs={"dropout": jax.random.fold_in(rng, 1)},
    )
  else:
    head_logits = h.apply({"params": params["heads"]}, feats)  # (3, B, o, o, K)
  per_view = optax.softmax_cross_entropy_with_integer_labels(head_logits, batch["labels"]).mean(
    axis=(1, 2, 3)
  )
  ds_ce = per_view.sum()
  loss = centre_ce + config.source.deep_supervision_weight * ds_ce
  acc = (jnp.argmax(logits, -1) == y).mean()
  return loss, {"loss": loss, "centre_ce": centre_ce, "deep_supervision_ce": ds_ce, "accuracy": acc}


def make_source_step(
  config: ml_collections.ConfigDict, tx: optax.GradientTransformation | None = None
) -> Callable[[SourceState, dict], tuple[SourceState, dict]]:
  """Pure `train_step(state, batch) -> (state, metrics)` (not jitted).

  `tx` defaults to `state.source_optimizer(config)` (the loop passes the one it initialised
  the state with)."""
  tx = tx or state_lib.source_optimizer(config)

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
  return xla_options.jit(
    step_fn,
    mesh.devices.flat[0].platform,
    in_shardings=(rep, sharding.batch_sharding(mesh, batch_axis)),
    out_shardings=(rep, rep),
    donate_argnums=0,
  )
