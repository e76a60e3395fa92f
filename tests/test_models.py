"""Shapes and receptive fields of the networks (paper shapes via eval_shape: nothing runs)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cac_jax import models
from cac_jax.train import state as state_lib
from configs import paper, tiny


@pytest.mark.parametrize(
  "get_config, rf, patch", [(paper.get_config, 131, 155), (tiny.get_config, 17, 41)]
)
def test_receptive_field_and_patch_size(get_config, rf, patch):
  c = get_config()
  assert models.receptive_field(c.model.dilations) == rf
  assert models.ViewTower(dilations=tuple(c.model.dilations)).receptive_field == rf
  assert models.patch_size(c) == patch


@pytest.mark.parametrize("get_config", [paper.get_config, tiny.get_config])
def test_shapes(get_config):
  c = get_config()
  nets = models.build(c)
  assert nets._fields == ("generator", "classifier", "heads", "critic")
  g, cl, h, d = nets
  assert isinstance(d, models.Critic) and isinstance(g, models.Generator)
  p, o, b = models.patch_size(c), c.data.output_size, 2
  params = jax.eval_shape(lambda: models.init_params(c, jax.random.PRNGKey(0)))
  assert set(params) == {"generator", "classifier", "heads", "critic"}
  views = jax.ShapeDtypeStruct((3, b, p, p, 1), jnp.float32)
  feats = jax.eval_shape(lambda pr, v: g.apply({"params": pr}, v), params["generator"], views)
  assert feats.shape == (b, o, o, 3 * c.model.tower_features)
  heads = jax.eval_shape(lambda pr, f: h.apply({"params": pr}, f), params["heads"], feats)
  assert heads.shape == (3, b, o, o, c.model.num_classes)
  logits = jax.eval_shape(
    lambda pr, f: models.centre_logits(cl, pr, f), params["classifier"], feats
  )
  assert logits.shape == (b, c.model.num_classes)
  scores = jax.eval_shape(lambda pr, f: d.apply({"params": pr}, f), params["critic"], feats)
  assert scores.shape == (b,)


def test_generator_rejects_bad_layout():
  c = tiny.get_config()
  g = models.build(c).generator
  params = state_lib.init_params(c, 0)["generator"]
  with pytest.raises(ValueError, match="view stacks"):
    g.apply({"params": params}, jnp.zeros((1, 31, 31, 1)))


def test_tiny_receptive_field_is_what_the_centre_output_sees():
  """The gradient of the centre feature covers exactly a 17x17 window in each view."""
  c = tiny.get_config()
  g = models.build(c).generator
  params = state_lib.init_params(c, 0)["generator"]
  p, rf = models.patch_size(c), 17

  def centre(views):
    f = g.apply({"params": params}, views)
    return f[0, f.shape[1] // 2, f.shape[2] // 2].sum()

  views = jax.random.normal(jax.random.PRNGKey(1), (3, 1, p, p, 1))
  grad = np.asarray(jax.grad(centre)(views))[:, 0, :, :, 0]
  for v in range(3):
    ys, xs = np.nonzero(grad[v])
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (rf, rf)
    assert (ys.min() + ys.max()) / 2 == (xs.min() + xs.max()) / 2 == p // 2


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_centre_window_gives_the_centre_of_the_full_map(name):
  """G on the receptive-field window equals the centre of G's map over the whole patch."""
  import importlib

  c = importlib.import_module(f"configs.{name}").get_config()
  g = models.build(c).generator
  params = state_lib.init_params(c, 0)["generator"]
  p, rf, o = models.patch_size(c), models.receptive_field(c.model.dilations), c.data.output_size
  views = jax.random.normal(jax.random.PRNGKey(2), (3, 2, p, p, 1))
  window = models.centre_window(views, rf)
  assert window.shape == (3, 2, rf, rf, 1)
  full = g.apply({"params": params}, views)[:, o // 2, o // 2]
  centre = g.apply({"params": params}, window)
  assert centre.shape == (2, 1, 1, 3 * c.model.tower_features)
  np.testing.assert_allclose(centre[:, 0, 0], full, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="smaller than the receptive field"):
    models.centre_window(views[:, :, : rf - 1, : rf - 1], rf)


def test_classifier_dropout_only_when_asked():
  c = tiny.get_config()
  cl = models.build(c).classifier
  params = state_lib.init_params(c, 0)["classifier"]
  feats = jnp.ones((4, 3, 3, 3 * c.model.tower_features))
  a = models.centre_logits(cl, params, feats)
  np.testing.assert_array_equal(a, models.centre_logits(cl, params, feats))
  b = models.centre_logits(cl, params, feats, deterministic=False, rng=jax.random.PRNGKey(2))
  assert not np.allclose(a, b)


def test_head_dropout_only_in_training_and_only_when_configured():
  c = tiny.get_config()
  c.model.head_dropout = 0.35
  heads = models.build(c).heads
  params = state_lib.init_params(c, 0)["heads"]
  feats = jnp.ones((4, 3, 3, 3 * c.model.tower_features))
  plain = models.DeepSupervisionHeads(c.model.num_classes)  # no dropout, same params
  a = heads.apply({"params": params}, feats)
  np.testing.assert_array_equal(a, plain.apply({"params": params}, feats))
  b = heads.apply(
    {"params": params}, feats, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)}
  )
  assert b.shape == a.shape and not np.allclose(a, b)
  assert paper.get_config().model.head_dropout == 0.35  # the reference's value


def test_host_init_matches_flax_structure_and_scale():
  c = tiny.get_config()
  host = state_lib.init_params(c, 0)
  flax_shapes = jax.eval_shape(lambda: models.init_params(c, jax.random.PRNGKey(0)))
  assert jax.tree.structure(host) == jax.tree.structure(flax_shapes)
  for h, f in zip(jax.tree.leaves(host), jax.tree.leaves(flax_shapes)):
    assert h.shape == f.shape and h.dtype == f.dtype
  k = np.asarray(host["critic"]["conv2"]["kernel"])  # (3, 3, 16, 16): fan_in 144
  assert abs(k.std() - 1 / 12) < 0.01 and np.abs(k).max() <= 2 / 12 / 0.8796 + 1e-6


class _Custom(nn.Module):
  """A default Dense, a Dense with a custom kernel_init and a param of another name."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(4, name="plain")(x)
    x = nn.Dense(4, kernel_init=nn.initializers.normal(3.0), name="custom")(x)
    return x * self.param("gain", nn.initializers.uniform(), (4,))


def test_host_init_leaves_unknown_and_custom_initialisers_to_flax():
  def init_fn(rng):
    return {"net": _Custom().init(rng, jnp.zeros((1, 8)))["params"]}

  laws = state_lib.host_laws(init_fn)
  assert laws["['net']['plain']['kernel']"] == "lecun_normal"
  assert laws["['net']['custom']['bias']"] == "zeros"
  assert laws["['net']['custom']['kernel']"] is None and laws["['net']['gain']"] is None
  host, flax_own = state_lib.host_init(init_fn, 5)["net"], init_fn(jax.random.PRNGKey(5))["net"]
  np.testing.assert_array_equal(host["custom"]["kernel"], flax_own["custom"]["kernel"])
  np.testing.assert_array_equal(host["gain"], flax_own["gain"])  # Flax's own draws
  assert not np.array_equal(host["plain"]["kernel"], flax_own["plain"]["kernel"])
  assert abs(float(np.std(host["custom"]["kernel"])) - 3.0) < 1.5  # not LeCun's 1/sqrt(4)
  # Every param of the project's networks is drawn on the host: no Flax init compiles.
  c = tiny.get_config()
  assert None not in state_lib.host_laws(lambda rng: models.init_params(c, rng)).values()


def _critic_and_feats(norm, seed=0):
  c = tiny.get_config()
  c.model.critic_norm = norm
  d = models.build(c).critic
  side = c.data.output_size
  f = 3 * c.model.tower_features
  feats = jax.random.normal(jax.random.PRNGKey(seed), (6, side, side, f))
  params = d.init(jax.random.PRNGKey(1), feats)["params"]
  # Non-trivial norm scales/biases (init is 1 / 0), within the clip range.
  params = jax.tree_util.tree_map_with_path(
    lambda p, x: (
      x * 0.07 + 0.03 if p[-1].key in ("scale", "bias") and p[0].key.startswith("norm") else x
    ),
    params,
  )
  return d, params, feats, f


def test_batch_critic_ignores_a_whole_domain_channel_shift_and_common_scale():
  """Per-call batch statistics: shifting every feature channel of a whole batch (by its own
  amount) and scaling all features by one factor leaves every score unchanged; the
  per-sample LayerNorm critic sees the channel shift."""
  shift = jnp.linspace(-2.0, 3.0, 3 * tiny.get_config().model.tower_features)
  d, params, feats, _ = _critic_and_feats("batch")
  score = lambda x: np.asarray(d.apply({"params": params}, x))
  np.testing.assert_allclose(score(1.7 * feats + shift), score(feats), rtol=2e-4, atol=2e-4)
  # Not invariant to a shift of one sample alone (it is not a constant map).
  moved = feats.at[0].add(shift)
  assert np.abs(score(moved) - score(feats)).max() > 1e-3
  d, params, feats, _ = _critic_and_feats("layer")
  score = lambda x: np.asarray(d.apply({"params": params}, x))
  assert np.abs(score(feats + shift) - score(feats)).max() > 1e-3


def test_batch_critic_normalises_after_all_seven_convs_without_conv_bias():
  c = tiny.get_config()
  params = jax.eval_shape(lambda: models.init_params(c, jax.random.PRNGKey(0)))["critic"]
  assert sorted(k for k in params if k.startswith("norm")) == [f"norm{i}" for i in range(7)]
  assert all(set(params[f"conv{i}"]) == {"kernel"} for i in range(7))
  c.model.critic_norm = "layer"
  params = jax.eval_shape(lambda: models.init_params(c, jax.random.PRNGKey(0)))["critic"]
  assert sorted(k for k in params if k.startswith("norm")) == [f"norm{i}" for i in range(6)]


def test_batch_critic_refuses_a_one_pixel_final_map():
  c = tiny.get_config()
  d = models.build(c).critic
  with pytest.raises(ValueError, match="larger than 1x1"):
    d.init(jax.random.PRNGKey(0), jnp.zeros((2, 15, 15, 24)))


def test_features_no_grad_chunks_give_the_whole_batch_features():
  """One patch (or two) at a time in a lax.map gives G's whole-batch features (to float32
  rounding: XLA:CPU may pick another conv kernel for another batch size on some CPUs), and
  no gradient flows through them; a chunk that does not divide the batch falls back to it."""
  c = tiny.get_config()
  g = models.build(c).generator
  gp = models.init_params(c, jax.random.PRNGKey(0))["generator"]
  p = models.patch_size(c)
  views = jax.random.normal(jax.random.PRNGKey(1), (3, 4, p, p, 1))
  whole = g.apply({"params": gp}, views)
  for chunk in (0, 1, 2, 3, -1):
    got = jax.jit(lambda v, k=chunk: models.features_no_grad(g, gp, v, k))(views)
    np.testing.assert_allclose(np.asarray(got), np.asarray(whole), rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda q: models.features_no_grad(g, q, views, 1).sum())(gp)
  assert all(not np.asarray(x).any() for x in jax.tree.leaves(grads))


def test_features_no_grad_auto_chunks_only_large_cpu_batches(monkeypatch):
  """Auto (-1) maps over patches on CPU only when the batch's activations exceed
  AUTO_CHUNK_BYTES: the traced function holds a loop then, and not for a small batch."""
  c = tiny.get_config()
  g = models.build(c).generator
  gp = models.init_params(c, jax.random.PRNGKey(0))["generator"]
  p = models.patch_size(c)
  views = jnp.zeros((3, 4, p, p, 1))
  small = str(jax.make_jaxpr(lambda v: models.features_no_grad(g, gp, v))(views))
  monkeypatch.setattr(models, "AUTO_CHUNK_BYTES", 1)
  large = str(jax.make_jaxpr(lambda v: models.features_no_grad(g, gp, v))(views))
  on_cpu = jax.default_backend() == "cpu"
  assert "scan" not in small and ("scan" in large) == on_cpu
