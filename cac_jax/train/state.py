"""Pure training states: every array a step needs, including its PRNG key, in one pytree.

`SourceState` (supervised source training) holds {generator, classifier, heads} params and
their Adam state. `AdaptState` (adversarial adaptation) holds both players, as in the
dm-haiku GAN example: generator G and critic D params with their RMSProp states, plus the
frozen classifier C. Step counters are int32 scalars so a state is a complete, checkpointable
description of a run: restoring it and the data step resumes the run exactly.
"""

from __future__ import annotations

import zlib

from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

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


def rmsprop(
  config: ml_collections.ConfigDict, learning_rate: float
) -> optax.GradientTransformation:
  """PyTorch's `RMSprop(lr, alpha=decay, eps, weight_decay)` without momentum.

  eps is added outside the square root (`eps_in_sqrt=False`), and weight decay adds
  `weight_decay * param` to the gradient before the squared average, as PyTorch does. The
  reference uses weight decay 5e-4 in both players' optimisers
  (`trainGAN_adv_cls_MMD.py:107-108`).
  """
  a = config.adapt
  rms = optax.rmsprop(learning_rate, decay=a.rmsprop_decay, eps=a.rmsprop_eps, eps_in_sqrt=False)
  wd = float(a.get("weight_decay", 0.0))
  return optax.chain(optax.add_decayed_weights(wd), rms) if wd else rms


def critic_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return rmsprop(config, config.adapt.critic_lr)


def generator_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return rmsprop(config, config.adapt.generator_lr)


def clip_critic(params, clip: float):
  """Project every critic leaf (kernels, biases, norm scales/biases) to [-clip, clip]."""
  return jax.tree.map(lambda p: jnp.clip(p, -clip, clip), params)


def host_init_params(config: ml_collections.ConfigDict, seed: int) -> dict:
  """Params of `models.init_params`' structure, drawn with numpy from Flax's default laws.

  Kernels: LeCun normal (truncated at 2 std, variance 1/fan_in, fan_in = all axes but the
  last); biases 0; LayerNorm scales 1. Same distributions as `models.init_params`, not the
  same numbers: XLA:CPU spends tens of seconds compiling the PRNG graph of a Flax init,
  this takes milliseconds. Each leaf is seeded from (seed, its path).
  """
  shapes = jax.eval_shape(lambda: models.init_params(config, jax.random.PRNGKey(0)))

  def init(path, leaf):
    name = jax.tree_util.keystr(path)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    kind = path[-1].key
    if kind == "bias":
      return jnp.zeros(leaf.shape, leaf.dtype)
    if kind == "scale":
      return jnp.ones(leaf.shape, leaf.dtype)
    if kind != "kernel":
      raise ValueError(f"no host initialiser for param {name}")
    fan_in = int(np.prod(leaf.shape[:-1]))
    std = np.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of N(0,1) truncated to [-2, 2]
    x = rng.standard_normal(leaf.shape)
    while (bad := np.abs(x) > 2).any():
      x[bad] = rng.standard_normal(int(bad.sum()))
    return jnp.asarray(x * std, leaf.dtype)

  return jax.tree_util.tree_map_with_path(init, shapes)


def init_params(config: ml_collections.ConfigDict, seed: int, host: bool = True) -> dict:
  """{'generator', 'classifier', 'heads', 'critic'} from `seed`: host draw or Flax init."""
  if host:
    return host_init_params(config, seed)
  return models.init_params(config, jax.random.PRNGKey(seed))


def init_source_state(
  config: ml_collections.ConfigDict,
  seed: int | None = None,
  host_init: bool = True,
  tx: optax.GradientTransformation | None = None,
) -> SourceState:
  """Fresh source state from `config.seed` (or `seed`); see `init_params` for `host_init`.
  `tx` (default `source_optimizer(config)`): the optimiser the step will run."""
  seed = config.seed if seed is None else seed
  k_run = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
  p = init_params(config, seed, host_init)
  params = {"generator": p["generator"], "classifier": p["classifier"], "heads": p["heads"]}
  return SourceState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=(tx or source_optimizer(config)).init(params),
    rng=k_run,
  )


def init_adapt_state(
  config: ml_collections.ConfigDict,
  source_params: dict,
  seed: int | None = None,
  host_init: bool = True,
  critic_tx: optax.GradientTransformation | None = None,
  generator_tx: optax.GradientTransformation | None = None,
) -> AdaptState:
  """Adaptation state: G and C from `source_params`, a fresh (clipped) critic D.

  Args:
    config: full config.
    source_params: {"generator", "classifier", ...} from the source checkpoint.
    seed: defaults to `config.seed`.
    critic_tx, generator_tx: the optimisers the steps will run (default: built from `config`).
  """
  seed = config.seed if seed is None else seed
  k_run = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  critic = clip_critic(init_params(config, seed + 1, host_init)["critic"], config.adapt.clip)
  # Copies: train steps donate the state, which must not free the caller's arrays.
  g = jax.tree.map(jnp.array, source_params["generator"])
  c = jax.tree.map(jnp.array, source_params["classifier"])
  return AdaptState(
    step=jnp.zeros((), jnp.int32),
    critic_step=jnp.zeros((), jnp.int32),
    generator=g,
    critic=critic,
    classifier=c,
    generator_opt=(generator_tx or generator_optimizer(config)).init(g),
    critic_opt=(critic_tx or critic_optimizer(config)).init(critic),
    rng=k_run,
  )
