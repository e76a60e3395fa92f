"""Unsupervised adaptation of G to the target domain with a Wasserstein critic (WGAN, clipping).

Sign convention: the critic D scores SOURCE features high.
  critic loss      L_D = mean D(G(x_t)) - mean D(G(x_s));  Wasserstein estimate W = -L_D
  generator loss   L_G = -mean D(G(x_t)) + alpha * CE(C(G(x_s))[centre], y_s)
The critic is updated with RMSProp and its params are projected to [-clip, clip] after
every update; `n` critic updates run in one jitted `lax.scan` over stacked batches. The
generator step changes only G (C frozen, D fixed). Schedule: `critic_pretrain_steps`
critic updates, then per generator step `critic_steps` critic updates (or
`critic_steps_later` from generator step `change_at`, when that is > 0) and one G update; the loop
running that schedule is `cac_jax.train.loop.adapt`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cac_jax import models
from cac_jax.train import source as source_lib
from cac_jax.train import state as state_lib

AdaptState = state_lib.AdaptState
# The config fields each step reads (losses and optimisers): `cac_jax.train.loop.cached_step` keys on them.
_RMSPROP_READS = ("adapt.rmsprop_decay", "adapt.rmsprop_eps", "adapt.weight_decay")
CRITIC_STEP_READS = (
  "model",
  "adapt.clip",
  "adapt.unroll_critic_scan",
  "adapt.critic_feature_chunk",
  "adapt.critic_lr",
  *_RMSPROP_READS,
)
GENERATOR_STEP_READS = (
  "model",
  "adapt.alpha",
  "adapt.classifier_dropout",
  "adapt.generator_lr",
  *_RMSPROP_READS,
)


def critic_loss(
  critic_params, source_feats: jax.Array, target_feats: jax.Array, config: ml_collections.ConfigDict
):
  """L_D = mean D(target) - mean D(source) on (B, h, w, F) features -> (loss, metrics)."""
  d = models.build(config).critic
  s = d.apply({"params": critic_params}, source_feats)
  t = d.apply({"params": critic_params}, target_feats)
  loss = t.mean() - s.mean()
  return loss, {
    "critic_loss": loss,
    "wasserstein": -loss,
    "critic_source_score": s.mean(),
    "critic_target_score": t.mean(),
  }


def make_critic_steps(
  config: ml_collections.ConfigDict, tx: optax.GradientTransformation | None = None
) -> Callable[[AdaptState, dict], tuple[AdaptState, dict]]:
  """Pure `critic_steps(state, batches) -> (state, metrics)` for n stacked batches.

  batches: {"source_views": (n, 3, B, P, P, 1), "target_views": (n, 3, B', P, P, 1)}.
  Metrics are means over the n updates. Only the critic, its optimiser state and
  `critic_step` change. `tx` defaults to `state.critic_optimizer(config)`.
  """
  g = models.build(config).generator
  tx = tx or state_lib.critic_optimizer(config)
  clip = config.adapt.clip
  chunk = int(config.adapt.get("critic_feature_chunk", -1))

  def critic_steps(state: AdaptState, batches: dict):
    def features(views):
      return models.features_no_grad(g, state.generator, views, chunk)

    def body(carry, batch):
      params, opt_state = carry
      grads, metrics = jax.grad(critic_loss, has_aux=True)(
        params, features(batch["source_views"]), features(batch["target_views"]), config
      )
      updates, opt_state = tx.update(grads, opt_state, params)
      params = state_lib.clip_critic(optax.apply_updates(params, updates), clip)
      return (params, opt_state), metrics

    n = batches["source_views"].shape[0]
    # Fully unrolled by default: on XLA:CPU the convolutions inside a rolled while loop run
    # several times slower (docs/performance.md has the measurement).
    (params, opt_state), metrics = jax.lax.scan(
      body,
      (state.critic, state.critic_opt),
      batches,
      unroll=bool(config.adapt.get("unroll_critic_scan", True)),
    )
    metrics = jax.tree.map(jnp.mean, metrics)
    return state.replace(
      critic=params, critic_opt=opt_state, critic_step=state.critic_step + n
    ), metrics

  return critic_steps


def adversarial_term(
  generator_params, state: AdaptState, target_views: jax.Array, config
) -> jax.Array:
  """L_adv = -mean D(G(x_t)) (the critic's params fixed)."""
  nets = models.build(config)
  g, d = nets.generator, nets.critic
  return -d.apply(
    {"params": state.critic}, g.apply({"params": generator_params}, target_views)
  ).mean()


def classification_term(
  generator_params, state: AdaptState, batch: dict, rng: jax.Array, config
) -> tuple[jax.Array, dict]:
  """L_cls = CE(C(G(x_s))[centre], y_s) on the labelled source batch -> (loss, metrics).

  G runs on the centre window only (`models.centre_window`): C reads the centre of G's map.
  """
  nets = models.build(config)
  g, c = nets.generator, nets.classifier
  dropout = bool(config.adapt.get("classifier_dropout", False))
  window = models.centre_window(
    batch["source_views"], models.receptive_field(config.model.dilations)
  )
  source_feats = g.apply({"params": generator_params}, window)
  logits = models.centre_logits(
    c, state.classifier, source_feats, deterministic=not dropout, rng=rng if dropout else None
  )
  y = source_lib.centre_labels(batch["source_labels"])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce, {"source_ce": ce, "source_accuracy": (jnp.argmax(logits, -1) == y).mean()}


def generator_loss(
  generator_params,
  state: AdaptState,
  batch: dict,
  rng: jax.Array,
  config: ml_collections.ConfigDict,
):
  """L_G = L_adv + alpha * L_cls for one batch -> (loss, metrics).

  The batch: {"source_views", "source_labels", "target_views"}."""
  adversarial = adversarial_term(generator_params, state, batch["target_views"], config)
  ce, metrics = classification_term(generator_params, state, batch, rng, config)
  return _combine(adversarial, ce, metrics, config.adapt.alpha)


def _combine(
  adversarial: jax.Array, ce: jax.Array, cls_metrics: dict, alpha: float
) -> tuple[jax.Array, dict]:
  loss = adversarial + alpha * ce
  return loss, {"generator_loss": loss, "generator_adversarial_loss": adversarial, **cls_metrics}


def make_generator_step(
  config: ml_collections.ConfigDict, tx: optax.GradientTransformation | None = None
) -> Callable[[AdaptState, dict], tuple[AdaptState, dict]]:
  """Pure `generator_step(state, batch) -> (state, metrics)`: updates only G (and step, rng).

  The gradients of L_adv (target batch) and alpha * L_cls (source batch) are taken separately
  (their inputs are disjoint, so this costs nothing extra) and summed; their global norms are
  logged as `grad_norm_adversarial` and `grad_norm_classification`: with weight clipping the
  critic's output scale, and so the balance the paper's alpha = 2 strikes, depends on the
  critic's architecture, and these two numbers show which term actually moves G. At alpha = 0
  L_cls is computed for the log only (no gradient; its norm is logged as 0).
  The classifier C runs without dropout unless `config.adapt.classifier_dropout` is True.
  `tx` defaults to `state.generator_optimizer(config)`.
  """
  tx = tx or state_lib.generator_optimizer(config)
  dropout = bool(config.adapt.get("classifier_dropout", False))
  alpha = config.adapt.alpha

  def generator_step(state: AdaptState, batch: dict):
    # The key only advances when C uses dropout (no PRNG work otherwise).
    rng, step_rng = jax.random.split(state.rng) if dropout else (state.rng, state.rng)
    adversarial, g_adv = jax.value_and_grad(adversarial_term)(
      state.generator, state, batch["target_views"], config
    )
    if alpha:
      (ce, metrics), g_cls = jax.value_and_grad(classification_term, has_aux=True)(
        state.generator, state, batch, step_rng, config
      )
      g_cls = jax.tree.map(lambda x: alpha * x, g_cls)
    else:  # L_adv alone: L_cls is only logged, so no gradient for it
      ce, metrics = classification_term(state.generator, state, batch, step_rng, config)
      g_cls = jax.tree.map(jnp.zeros_like, g_adv)
    grads = jax.tree.map(jnp.add, g_adv, g_cls)
    updates, opt_state = tx.update(grads, state.generator_opt, state.generator)
    _, metrics = _combine(adversarial, ce, metrics, alpha)
    metrics.update(
      grad_norm_adversarial=optax.tree.norm(g_adv), grad_norm_classification=optax.tree.norm(g_cls)
    )
    return state.replace(
      step=state.step + 1,
      generator=optax.apply_updates(state.generator, updates),
      generator_opt=opt_state,
      rng=rng,
    ), metrics

  return generator_step
