"""Pure training states: every array a step needs, including its PRNG key, in one pytree.

`SourceState` (supervised source training) holds {generator, classifier, heads} params and
their Adam state. `AdaptState` (adversarial adaptation) holds both players, as in the
dm-haiku GAN example: generator G and critic D params with their RMSProp states, plus the
frozen classifier C. Step counters are int32 scalars so a state is a complete, checkpointable
description of a run: restoring it and the data step resumes the run exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from cac_jax import models


@struct.dataclass
class SourceState:
  """Supervised source-training state.

  Attributes:
    step: int32 scalar, number of updates applied.
    params: {"generator", "classifier", "heads"} Flax params.
    opt_state: optax state of `source_optimizer`.
    rng: uint32 (2,) PRNG key; split every step for dropout.
  """

  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array


@struct.dataclass
class AdaptState:
  """Adversarial adaptation state (two players in one pure pytree).

  Attributes:
    step: int32 scalar, generator updates applied.
    critic_step: int32 scalar, critic updates applied (pre-training included).
    generator, critic, classifier: Flax params of G, D and the frozen C.
    generator_opt, critic_opt: RMSProp states of G and D.
    rng: uint32 (2,) PRNG key.
  """

  step: jax.Array
  critic_step: jax.Array
  generator: dict
  critic: dict
  classifier: dict
  generator_opt: optax.OptState
  critic_opt: optax.OptState
  rng: jax.Array


def source_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with L2 added to the gradient (PyTorch `Adam(weight_decay=...)`)."""
  s = config.source
  return optax.chain(optax.add_decayed_weights(s.weight_decay), optax.adam(s.learning_rate))


def rmsprop(config: ml_collections.ConfigDict, learning_rate: float) -> optax.GradientTransformation:
  """RMSProp as PyTorch's (alpha=decay, eps added outside the square root, no momentum)."""
  a = config.adapt
  return optax.rmsprop(learning_rate, decay=a.rmsprop_decay, eps=a.rmsprop_eps, eps_in_sqrt=False)


def critic_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return rmsprop(config, config.adapt.critic_lr)


def generator_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return rmsprop(config, config.adapt.generator_lr)


def clip_critic(params, clip: float):
  """Project every critic leaf (kernels, biases, LayerNorm scale/bias) to [-clip, clip]."""
  return jax.tree.map(lambda p: jnp.clip(p, -clip, clip), params)


def init_source_state(config: ml_collections.ConfigDict, seed: int | None = None) -> SourceState:
  """Fresh source state from `config.seed` (or `seed`)."""
  seed = config.seed if seed is None else seed
  k_init, k_run = jax.random.split(jax.random.PRNGKey(seed))
  p = models.init_params(config, k_init)
  params = {"generator": p["generator"], "classifier": p["classifier"], "heads": p["heads"]}
  return SourceState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=source_optimizer(config).init(params), rng=k_run)


def init_adapt_state(config: ml_collections.ConfigDict, source_params: dict, seed: int | None = None) -> AdaptState:
  """Adaptation state: G and C from `source_params`, a fresh (clipped) critic D.

  Args:
    config: full config.
    source_params: {"generator", "classifier", ...} from the source checkpoint.
    seed: defaults to `config.seed`.
  """
  seed = config.seed if seed is None else seed
  k_init, k_run = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1))
  critic = clip_critic(models.init_params(config, k_init)["critic"], config.adapt.clip)
  g = jax.tree.map(jnp.asarray, source_params["generator"])
  c = jax.tree.map(jnp.asarray, source_params["classifier"])
  return AdaptState(step=jnp.zeros((), jnp.int32), critic_step=jnp.zeros((), jnp.int32),
                    generator=g, critic=critic, classifier=c,
                    generator_opt=generator_optimizer(config).init(g),
                    critic_opt=critic_optimizer(config).init(critic), rng=k_run)
