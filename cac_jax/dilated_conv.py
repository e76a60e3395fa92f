"""Dilated VALID convolution as space-to-batch + dense convolution + batch-to-space.

The view towers' 3x3 convolutions with dilation d > 1 are, on a GPU, fast forward but slow
to differentiate through XLA's convolution; the same maths written as below differentiates
many times faster, the forward as fast (docs/performance.md, "GPU", has the figures and the
command). This is what
TensorFlow's atrous convolution does: the d x d interleaved sub-grids of the input are moved
into the batch, each gets an undilated VALID 3x3 convolution, and the outputs are
interleaved back.

Why it is the same function: output pixel o = q * d + p (phase p < d) reads inputs
o, o + d, o + 2d, which are positions q, q + 1, q + 2 of sub-grid p; so the undilated
convolution of sub-grid p gives output q of that phase. The input is padded at the end to a
multiple of d; the outputs that read the padding fall past H - 2d and are cropped.

On CPU XLA's own convolution (Eigen) is as fast both ways, and keeps scoring's
outputs bit-identical whatever the ROI plan (docs/performance.md), so "auto" keeps it there.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

TOWER_CONVS = ("auto", "xla", "space_to_batch")
_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve(impl: str = "auto", platform: str | None = None) -> str:
  """ "auto" -> "space_to_batch" on GPU, "xla" elsewhere; other names are checked and kept."""
  if impl not in TOWER_CONVS:
    raise ValueError(f"unknown tower conv {impl!r}; expected one of {TOWER_CONVS}")
  if impl == "auto":
    return "space_to_batch" if (platform or jax.default_backend()) == "gpu" else "xla"
  return impl


def _is_tower_case(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dims, groups):
  """Whether the call is one this module rewrites.

  Stride 1, VALID, NHWC/HWIO, one group, no input dilation, the same kernel dilation d > 1
  on both spatial axes.
  """
  if lhs.ndim != 4 or dims is None:
    return False
  valid = padding == "VALID" or (
    not isinstance(padding, str) and all(tuple(p) == (0, 0) for p in padding)
  )
  return (
    valid
    and tuple(window_strides) == (1, 1)
    and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
    and rhs_dilation is not None
    and len(set(rhs_dilation)) == 1
    and rhs_dilation[0] > 1
    and groups == 1
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dims)
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  )


def space_to_batch_conv(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  precision=None,
  **kwargs,
) -> jax.Array:
  """`lax.conv_general_dilated` with the same arguments, the tower's case by space-to-batch.

  The arguments are what `flax.linen.Conv` passes; the tower's case is `_is_tower_case`,
  anything else goes to lax.

  lhs (N, H, W, C), rhs (kh, kw, C, C') -> (N, H - (kh - 1) d, W - (kw - 1) d, C').
  """
  if not _is_tower_case(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
  ):
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
      **kwargs,
    )
  d = int(rhs_dilation[0])
  n, h, w, c = lhs.shape
  kh, kw = rhs.shape[:2]
  ho, wo = h - (kh - 1) * d, w - (kw - 1) * d
  if ho < 1 or wo < 1:
    raise ValueError(f"input {lhs.shape} too small for a {kh}x{kw} kernel at dilation {d}")
  hs, ws = -(-h // d), -(-w // d)  # sub-grid sides after padding to a multiple of d
  x = jnp.pad(lhs, ((0, 0), (0, hs * d - h), (0, ws * d - w), (0, 0)))
  # (N, hs, d, ws, d, C) -> (d, d, N, hs, ws, C): phase (p_row, p_col) leads, into the batch.
  x = x.reshape(n, hs, d, ws, d, c).transpose(2, 4, 0, 1, 3, 5).reshape(d * d * n, hs, ws, c)
  y = lax.conv_general_dilated(
    x, rhs, (1, 1), "VALID", dimension_numbers=_NHWC, precision=precision, **kwargs
  )
  hq, wq, co = y.shape[1], y.shape[2], y.shape[3]
  y = y.reshape(d, d, n, hq, wq, co).transpose(2, 3, 0, 4, 1, 5).reshape(n, hq * d, wq * d, co)
  return y[:, :ho, :wo]
