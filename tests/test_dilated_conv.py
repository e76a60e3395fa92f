"""cac_jax.dilated_conv: space-to-batch equals XLA's dilated convolution, forward and gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cac_jax import dilated_conv, models

_DIMS = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def _full_float32():
  """Full float32 products on every backend (a GPU's default TF32 differs at ~1e-3)."""
  with jax.default_matmul_precision("float32"):
    yield


@pytest.mark.parametrize(
  "h,w,d,cin,cout",
  [(41, 37, 2, 3, 5), (27, 27, 4, 8, 8), (91, 70, 32, 2, 4), (9, 10, 3, 1, 2), (20, 24, 8, 4, 3)],
)
def test_equals_lax_forward_and_gradients(h, w, d, cin, cout):
  """Sides that are and are not multiples of d, d up to the paper's 32, the smallest input."""
  kx, kk, kg = jax.random.split(jax.random.key(h * w + d), 3)
  x = jax.random.normal(kx, (2, h, w, cin))
  k = jax.random.normal(kk, (3, 3, cin, cout))

  def lax_conv(x, k):
    return jax.lax.conv_general_dilated(
      x, k, (1, 1), "VALID", rhs_dilation=(d, d), dimension_numbers=_DIMS
    )

  def s2b(x, k):
    return dilated_conv.space_to_batch_conv(
      x, k, (1, 1), "VALID", rhs_dilation=(d, d), dimension_numbers=_DIMS
    )

  ref, out = lax_conv(x, k), s2b(x, k)
  assert out.shape == ref.shape == (2, h - 2 * d, w - 2 * d, cout)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, ref.shape)  # a random cotangent: every output pixel weighted
  gref = jax.grad(lambda x, k: jnp.sum(lax_conv(x, k) * g), argnums=(0, 1))(x, k)
  gout = jax.grad(lambda x, k: jnp.sum(s2b(x, k) * g), argnums=(0, 1))(x, k)
  for a, b in zip(gout, gref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_other_convolutions_go_to_lax_unchanged():
  """Undilated, strided, padded or grouped calls are lax's own (the same bits)."""
  x = jax.random.normal(jax.random.key(0), (1, 12, 12, 4))
  k = jax.random.normal(jax.random.key(1), (3, 3, 4, 4))
  for kw in (
    {"window_strides": (1, 1), "padding": "VALID", "rhs_dilation": (1, 1)},
    {"window_strides": (2, 2), "padding": "VALID", "rhs_dilation": (2, 2)},
    {"window_strides": (1, 1), "padding": "SAME", "rhs_dilation": (2, 2)},
    {"window_strides": (1, 1), "padding": "VALID", "rhs_dilation": (2, 3)},
  ):
    ref = jax.lax.conv_general_dilated(x, k, dimension_numbers=_DIMS, **kw)
    out = dilated_conv.space_to_batch_conv(x, k, dimension_numbers=_DIMS, **kw)
    np.testing.assert_array_equal(out, ref)


def test_too_small_input_is_refused():
  x, k = jnp.zeros((1, 8, 8, 1)), jnp.zeros((3, 3, 1, 1))
  with pytest.raises(ValueError, match="too small"):
    dilated_conv.space_to_batch_conv(
      x, k, (1, 1), "VALID", rhs_dilation=(4, 4), dimension_numbers=_DIMS
    )


def test_flax_conv_passes_the_tower_case():
  """flax's Conv hands its own ConvDimensionNumbers and padding: still the tower case."""
  calls = []

  def spy(lhs, rhs, *args, **kwargs):
    calls.append(
      dilated_conv._is_tower_case(  # pylint: disable=protected-access
        lhs,
        rhs,
        args[0],
        args[1],
        kwargs.get("lhs_dilation"),
        kwargs.get("rhs_dilation"),
        kwargs.get("dimension_numbers"),
        kwargs.get("feature_group_count", 1),
      )
    )
    return dilated_conv.space_to_batch_conv(lhs, rhs, *args, **kwargs)

  conv = nn.Conv(4, (3, 3), kernel_dilation=4, padding="VALID", conv_general_dilated=spy)
  x = jnp.ones((1, 20, 20, 2))
  conv.init(jax.random.key(0), x)
  assert calls and all(calls)


def test_tower_is_the_same_function_with_the_same_params(tiny_config):
  """The paper-shaped tower (dilations up to 32) both ways: forward and parameter gradient."""
  dil = (1, 1, 2, 4, 8, 16, 32)
  x = jax.random.normal(jax.random.key(2), (2, 131 + 4, 131 + 3, 1))
  xla = models.ViewTower(8, 4, dil, "xla")
  s2b = models.ViewTower(8, 4, dil, "space_to_batch")
  params = xla.init(jax.random.key(3), x)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(s2b.init(jax.random.key(3), x)["params"])
  np.testing.assert_allclose(
    s2b.apply({"params": params}, x), xla.apply({"params": params}, x), rtol=1e-5, atol=1e-5
  )

  def loss(m):
    return lambda p: jnp.sum(jnp.sin(m.apply({"params": p}, x)))

  for a, b in zip(
    jax.tree.leaves(jax.grad(loss(s2b))(params)), jax.tree.leaves(jax.grad(loss(xla))(params))
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_resolve():
  assert dilated_conv.resolve("auto", "gpu") == "space_to_batch"
  assert dilated_conv.resolve("auto", "cpu") == "xla"
  assert dilated_conv.resolve("xla", "gpu") == "xla"
  assert dilated_conv.resolve("space_to_batch", "cpu") == "space_to_batch"
  with pytest.raises(ValueError, match="unknown tower conv"):
    dilated_conv.resolve("atrous")
