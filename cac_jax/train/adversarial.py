"""Unsupervised adaptation of G to the target domain with a Wasserstein critic (WGAN, clipping).

Sign convention: the critic D scores SOURCE features high.
  critic loss      L_D = mean D(G(x_t)) - mean D(G(x_s));  Wasserstein estimate W = -L_D
  generator loss   L_G = -mean D(G(x_t)) + alpha * CE(C(G(x_s))[centre], y_s)
The critic is updated with RMSProp and its params are projected to [-clip, clip] after
every update; `n` critic updates run in one jitted `lax.scan` over stacked batches. The
generator step changes only G (C frozen, D fixed). Schedule: `critic_pretrain_steps`
critic updates, then per generator step `critic_steps` critic updates (or
`critic_steps_later` from generator step `change_at`, when that is > 0) and one G update.
"""

from __future__ import annotations

import logging as std_logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cac_jax import checkpoints
from cac_jax import models
from cac_jax.train import data as data_lib
from cac_jax.train import sharding
from cac_jax.train import source as source_lib
from cac_jax.train import state as state_lib
from cac_jax.train import writers

AdaptState = state_lib.AdaptState
# Below this median ratio |grad L_adv| / |alpha grad L_cls|, `adapt` warns that L_adv barely acted.
WEAK_ADVERSARIAL_RATIO = 0.01
logging = std_logging.getLogger(__name__)


def critic_loss(critic_params, source_feats: jax.Array, target_feats: jax.Array, config: ml_collections.ConfigDict):
  """L_D = mean D(target) - mean D(source) on (B, h, w, F) features -> (loss, metrics)."""
  d = models.build(config)[3]
  s = d.apply({"params": critic_params}, source_feats)
  t = d.apply({"params": critic_params}, target_feats)
  loss = t.mean() - s.mean()
  return loss, {"critic_loss": loss, "wasserstein": -loss, "critic_source_score": s.mean(),
                "critic_target_score": t.mean()}


def make_critic_steps(config: ml_collections.ConfigDict) -> Callable[[AdaptState, dict], tuple[AdaptState, dict]]:
  """Pure `critic_steps(state, batches) -> (state, metrics)` for n stacked batches.

  batches: {"source_views": (n, 3, B, P, P, 1), "target_views": (n, 3, B', P, P, 1)}.
  Metrics are means over the n updates. Only the critic, its optimiser state and
  `critic_step` change.
  """
  g = models.build(config)[0]
  tx = state_lib.critic_optimizer(config)
  clip = config.adapt.clip

  def critic_steps(state: AdaptState, batches: dict):
    def features(views):
      return jax.lax.stop_gradient(g.apply({"params": state.generator}, views))

    def body(carry, batch):
      params, opt_state = carry
      grads, metrics = jax.grad(critic_loss, has_aux=True)(
          params, features(batch["source_views"]), features(batch["target_views"]), config)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = state_lib.clip_critic(optax.apply_updates(params, updates), clip)
      return (params, opt_state), metrics

    n = batches["source_views"].shape[0]
    # Fully unrolled by default: on XLA:CPU the convolutions inside a rolled while loop ran
    # ~4x slower (0.245 vs 0.056 s per critic step, demo config, 2 cores).
    (params, opt_state), metrics = jax.lax.scan(body, (state.critic, state.critic_opt), batches,
                                                unroll=bool(config.adapt.get("unroll_critic_scan", True)))
    metrics = jax.tree.map(jnp.mean, metrics)
    return state.replace(critic=params, critic_opt=opt_state, critic_step=state.critic_step + n), metrics

  return critic_steps


def adversarial_term(generator_params, state: AdaptState, target_views: jax.Array, config) -> jax.Array:
  """L_adv = -mean D(G(x_t)) (the critic's params fixed)."""
  g, _, _, d = models.build(config)
  return -d.apply({"params": state.critic}, g.apply({"params": generator_params}, target_views)).mean()


def classification_term(generator_params, state: AdaptState, batch: dict, rng: jax.Array,
                        config) -> tuple[jax.Array, dict]:
  """L_cls = CE(C(G(x_s))[centre], y_s) on the labelled source batch -> (loss, metrics)."""
  g, c, _, _ = models.build(config)
  dropout = bool(config.adapt.get("classifier_dropout", False))
  source_feats = g.apply({"params": generator_params}, batch["source_views"])
  logits = models.centre_logits(c, state.classifier, source_feats, deterministic=not dropout,
                                rng=rng if dropout else None)
  y = source_lib.centre_labels(batch["source_labels"])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce, {"source_ce": ce, "source_accuracy": (jnp.argmax(logits, -1) == y).mean()}


def generator_loss(generator_params, state: AdaptState, batch: dict, rng: jax.Array,
                   config: ml_collections.ConfigDict):
  """L_G = L_adv + alpha * L_cls for one batch {"source_views", "source_labels", "target_views"}
  -> (loss, metrics)."""
  adversarial = adversarial_term(generator_params, state, batch["target_views"], config)
  ce, metrics = classification_term(generator_params, state, batch, rng, config)
  return _combine(adversarial, ce, metrics, config.adapt.alpha)


def _combine(adversarial: jax.Array, ce: jax.Array, cls_metrics: dict, alpha: float) -> tuple[jax.Array, dict]:
  loss = adversarial + alpha * ce
  return loss, {"generator_loss": loss, "generator_adversarial_loss": adversarial, **cls_metrics}


def make_generator_step(config: ml_collections.ConfigDict) -> Callable[[AdaptState, dict], tuple[AdaptState, dict]]:
  """Pure `generator_step(state, batch) -> (state, metrics)`: updates only G (and step, rng).

  The gradients of L_adv (target batch) and alpha * L_cls (source batch) are taken separately
  (their inputs are disjoint, so this costs nothing extra) and summed; their global norms are
  logged as `grad_norm_adversarial` and `grad_norm_classification`: with weight clipping the
  critic's output scale, and so the balance the paper's alpha = 2 strikes, depends on the
  critic's architecture, and these two numbers show which term actually moves G.
  The classifier C runs without dropout unless `config.adapt.classifier_dropout` is True.
  """
  tx = state_lib.generator_optimizer(config)
  dropout = bool(config.adapt.get("classifier_dropout", False))
  alpha = config.adapt.alpha

  def generator_step(state: AdaptState, batch: dict):
    # The key only advances when C uses dropout (no PRNG work otherwise).
    rng, step_rng = jax.random.split(state.rng) if dropout else (state.rng, state.rng)
    adversarial, g_adv = jax.value_and_grad(adversarial_term)(state.generator, state, batch["target_views"], config)
    (ce, metrics), g_cls = jax.value_and_grad(classification_term, has_aux=True)(
        state.generator, state, batch, step_rng, config)
    g_cls = jax.tree.map(lambda x: alpha * x, g_cls)
    grads = jax.tree.map(jnp.add, g_adv, g_cls)
    updates, opt_state = tx.update(grads, state.generator_opt, state.generator)
    _, metrics = _combine(adversarial, ce, metrics, alpha)
    metrics.update(grad_norm_adversarial=optax.tree.norm(g_adv), grad_norm_classification=optax.tree.norm(g_cls))
    return state.replace(step=state.step + 1, generator=optax.apply_updates(state.generator, updates),
                         generator_opt=opt_state, rng=rng), metrics

  return generator_step


def critic_steps_at(config: ml_collections.ConfigDict, generator_step: int) -> int:
  """Critic updates before generator update number `generator_step` (0-based)."""
  a = config.adapt
  if a.critic_steps_later > 0 and generator_step >= a.change_at:
    return a.critic_steps_later
  return a.critic_steps


def snapshot_due(config: ml_collections.ConfigDict, generator_steps_done: int) -> bool:
  """Whether G is exported as a snapshot after this many generator steps: every
  `adapt.snapshot_every` steps (0: never) and after the last one."""
  every = int(config.adapt.get("snapshot_every", 0))
  n = int(config.adapt.num_generator_steps)
  return every > 0 and (generator_steps_done % every == 0 or generator_steps_done == n)


def snapshot_dir(workdir: str, generator_steps_done: int) -> str:
  """`workdir/snapshots/step_NNNNNN`: an inference export of G (and the frozen C) after that step."""
  return os.path.join(workdir, "snapshots", f"step_{int(generator_steps_done):06d}")


def snapshots(workdir: str) -> dict[int, str]:
  """{generator steps done: export dir} of the complete snapshots in `workdir`, by step."""
  root = os.path.join(workdir, "snapshots")
  if not os.path.isdir(root):
    return {}
  out = {}
  for name in sorted(os.listdir(root)):
    if name.startswith("step_") and name[5:].isdigit() and checkpoints.is_exported(os.path.join(root, name)):
      out[int(name[5:])] = os.path.join(root, name)
  return out


def adapt(config: ml_collections.ConfigDict, workdir: str, source_params: dict, data: Any = None,
          resume: bool = False, mesh: jax.sharding.Mesh | None = None) -> AdaptState:
  """Adapt G to the target domain; export {"generator", "classifier"} to `workdir/export`.

  Args:
    config: full config (section adapt for the schedule).
    workdir: checkpoints, metrics.jsonl, TensorBoard events, the export and, with
      `adapt.snapshot_every`, inference snapshots of G (`snapshots`) for checkpoint selection.
    source_params: {"generator", "classifier"} of the source model (`load_inference`).
    data: `Streams` (or an object with source, source_critic, target_critic and
      target_generator streams); default `cac_jax.synthetic.SyntheticData(config, seed)`.
      Critic update i uses source_critic(i), target_critic(i); generator update j uses
      source(j) and target_generator(j).
    resume: continue from the latest checkpoint in `workdir/checkpoints`.
    mesh: device mesh (default: all devices).
  """
  a = config.adapt
  mesh = mesh or sharding.data_mesh()
  training_data = data_lib.describe_training_data(data, config)
  if data is None:
    from cac_jax import synthetic  # pylint: disable=g-import-not-at-top
    data = data_lib.prefetched(data_lib.as_streams(synthetic.SyntheticData(config, config.seed)),
                               config.sampling.prefetch)
  streams = data_lib.as_streams(data)
  missing = [k for k in data_lib.STREAM_NAMES if getattr(streams, k) is None]
  if missing:
    raise ValueError(f"adapt needs data streams {missing}")
  mgr = checkpoints.manager(os.path.join(workdir, "checkpoints"))
  state = sharding.replicate(state_lib.init_adapt_state(config, source_params), mesh)
  if mgr.latest_step() is not None:
    if not resume:
      raise ValueError(f"{workdir} already holds adaptation checkpoints (latest step {mgr.latest_step()}); "
                       "pass resume=True (--resume) or use a fresh workdir")
    state = checkpoints.restore_latest(mgr, state, sharding.replicated(mesh))
    logging.info("resumed adaptation at generator step %d (critic step %d)", int(state.step), int(state.critic_step))
  critic_fn = source_lib.cached_step("critic", make_critic_steps, config, mesh, batch_axis=2)
  generator_fn = source_lib.cached_step("generator", make_generator_step, config, mesh, batch_axis=1)
  writer = writers.MetricWriter(workdir, enabled=jax.process_index() == 0, keep=writers.resumed_adaptation(state))

  def critic_round(state, n):
    first = int(state.critic_step)
    src = [streams.source_critic(first + i)["views"] for i in range(n)]
    tgt = [streams.target_critic(first + i)["views"] for i in range(n)]
    batches = {"source_views": np.stack(src), "target_views": np.stack(tgt)}
    return critic_fn(state, sharding.shard_batch(batches, mesh, batch_axis=2))

  # Critic pre-training, in chunks of `critic_steps` so the compiled scan is reused.
  if int(state.step) == 0 and int(state.critic_step) < a.critic_pretrain_steps:
    logging.info("compiling the critic step, then %d critic pre-training steps…", a.critic_pretrain_steps)
    chunk = max(a.critic_steps, 1)
    while (done := int(state.critic_step)) < a.critic_pretrain_steps:
      state, m = critic_round(state, min(chunk, a.critic_pretrain_steps - done))
      m = {f"pretrain/{k}": v for k, v in jax.device_get(m).items()}
      writer.write(int(state.critic_step), m)
    logging.info("critic pre-training done: W %.4f", m["pretrain/wasserstein"])
    checkpoints.save(mgr, 0, state)

  rate, history = source_lib._Rate(int(state.step)), []  # pylint: disable=protected-access
  grad_ratio = []  # |grad L_adv| / |alpha grad L_cls| per log interval
  logging.info("compiling the generator step (the first step waits for XLA)…")
  for j in writers.progress(range(int(state.step), a.num_generator_steps), "adapt", a.num_generator_steps,
                            jax.process_index() == 0):
    n = critic_steps_at(config, j)
    metrics = {}
    if n > 0:
      state, metrics = critic_round(state, n)
    src, tgt = streams.source(j), streams.target_generator(j)
    batch = {"source_views": src["views"], "source_labels": src["labels"], "target_views": tgt["views"]}
    state, gm = generator_fn(state, sharding.shard_batch(batch, mesh))
    history.append({**metrics, **gm})
    done = j + 1
    if done % a.log_every == 0 or done == a.num_generator_steps:
      m = source_lib._mean_metrics(history)  # pylint: disable=protected-access
      m["generator_steps_per_second"] = rate(done)
      if m["grad_norm_classification"] > 0:
        grad_ratio.append(m["grad_norm_adversarial"] / m["grad_norm_classification"])
      writer.write(done, m)
      history = []
      logging.info("adapt step %d: W %.4f, L_G adv %.4f, source CE %.4f, |grad| adv %.2g / alpha*cls %.2g "
                   "(%.2f G steps/s)", done, m.get("wasserstein", float("nan")), m["generator_adversarial_loss"],
                   m["source_ce"], m["grad_norm_adversarial"], m["grad_norm_classification"],
                   m["generator_steps_per_second"])
    if done % a.checkpoint_every == 0 or done == a.num_generator_steps:
      checkpoints.save(mgr, done, state)
    if snapshot_due(config, done):
      checkpoints.export_inference(snapshot_dir(workdir, done),
                                   jax.device_get({"generator": state.generator, "classifier": state.classifier}),
                                   config, {"stage": "adapted", "steps": done, "training_data": training_data})
  writer.close()
  mgr.close()
  if grad_ratio and float(np.median(grad_ratio)) < WEAK_ADVERSARIAL_RATIO:
    logging.warning("L_adv barely moved G: its gradient norm was %.2g x that of alpha * L_cls (median over "
                    "the run, alpha = %g), so this adaptation was mostly fine-tuning on the labelled source. "
                    "The balance depends on the critic's output scale (clip, architecture); a smaller alpha "
                    "gives L_adv more weight.", float(np.median(grad_ratio)), float(a.alpha))
  for stream in (getattr(streams, k) for k in data_lib.STREAM_NAMES):
    if hasattr(stream, "close"):
      stream.close()
  checkpoints.export_inference(os.path.join(workdir, "export"),
                               jax.device_get({"generator": state.generator, "classifier": state.classifier}),
                               config, {"stage": "adapted", "steps": int(state.step), "training_data": training_data})
  return state
