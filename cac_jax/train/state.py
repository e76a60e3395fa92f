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
import flax.linen as nn
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
  """Params of `models.init_params`' structure, drawn with NumPy where Flax's laws are known.

  A fresh process compiles the PRNG graph of a Flax init with XLA, far slower than these draws
  (docs/performance.md has the figures). Same distributions, not the same numbers.
  """
  return host_init(lambda rng: models.init_params(config, rng), seed)


# (module type, param name) -> (the module's attribute holding the initialiser, or None where
# the module's code fixes it; the law drawn). Flax's defaults: LeCun normal kernels, zero
# biases, unit scales.
_HOST_LAWS = {
  (nn.Conv, "kernel"): ("kernel_init", "lecun_normal"),
  (nn.Dense, "kernel"): ("kernel_init", "lecun_normal"),
  (nn.Conv, "bias"): ("bias_init", "zeros"),
  (nn.Dense, "bias"): ("bias_init", "zeros"),
  (nn.LayerNorm, "scale"): ("scale_init", "ones"),
  (nn.LayerNorm, "bias"): ("bias_init", "zeros"),
  (models.BatchStatsNorm, "scale"): (None, "ones"),
  (models.BatchStatsNorm, "bias"): (None, "zeros"),
}


def host_laws(init_fn) -> dict[str, str | None]:
  """{leaf key string: law} of the params `init_fn(rng)` makes; None: left to Flax.

  `init_fn(rng)` returns {name: a Flax module's params}. A leaf gets a law when the module
  owning it is of a type in `_HOST_LAWS` with that initialiser left at the type's default
  (a custom `kernel_init` is Flax's to draw), and no other module sits at the same path.
  """
  owners: dict[tuple, set] = {}

  def record(next_fun, args, kwargs, context):
    m = context.module
    attrs = tuple(getattr(m, a, None) for a in ("kernel_init", "bias_init", "scale_init"))
    owners.setdefault(tuple(m.path), set()).add((type(m),) + attrs)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):  # a fresh function: jax caches the traces of one
    shapes = jax.eval_shape(lambda r: init_fn(r), jax.random.PRNGKey(0))

  def law(path) -> str | None:
    found = owners.get(tuple(k.key for k in path[1:-1]), set())
    if len(found) != 1:
      return None
    kind, *inits = next(iter(found))
    attr, drawn = _HOST_LAWS.get((kind, path[-1].key), (None, None))
    if attr is not None:
      value = dict(zip(("kernel_init", "bias_init", "scale_init"), inits))[attr]
      if value is not kind.__dataclass_fields__[attr].default:
        return None
    return drawn

  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {jax.tree_util.keystr(p): law(p) for p, _ in flat}


def host_init(init_fn, seed: int) -> dict:
  """`init_fn(PRNGKey(seed))`'s params, the leaves of `host_laws` drawn with NumPy.

  Kernels: LeCun normal (truncated at 2 std, variance 1/fan_in, fan_in = all axes but the
  last), each leaf seeded from (seed, its path); biases 0; scales 1. Any other leaf is the
  Flax init's own (`init_fn(PRNGKey(seed))`, run only when some leaf needs it).
  """
  laws = host_laws(init_fn)
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  flax_leaves = None

  def init(path, leaf):
    nonlocal flax_leaves
    name = jax.tree_util.keystr(path)
    law = laws[name]
    if law is None:
      if flax_leaves is None:
        flat = jax.tree_util.tree_flatten_with_path(init_fn(jax.random.PRNGKey(seed)))[0]
        flax_leaves = {jax.tree_util.keystr(p): v for p, v in flat}
      return flax_leaves[name]
    if law == "zeros":
      return jnp.zeros(leaf.shape, leaf.dtype)
    if law == "ones":
      return jnp.ones(leaf.shape, leaf.dtype)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
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
  """Fresh source state from `config.seed` (or `seed`).

  See `init_params` for `host_init`. `tx` (default `source_optimizer(config)`): the
  optimiser the step will run.
  """
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
