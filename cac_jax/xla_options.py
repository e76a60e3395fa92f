"""XLA compiler options for this project's jitted functions (`jit`).

On CPU, jaxlib hands convolutions and some dots to the YNNPACK library ("ynn fusions") by
default (docs/performance.md names the versions measured). For this network's convolutions (3x3, 16-32 channels, dilated
or not, NHWC) XLA's own Eigen convolution is several times faster, forward and in both
gradients, with the same results to float32 rounding (docs/performance.md has the
measurements). So on CPU every step and tower this project jits is compiled with the ynn
fusions turned off. Other platforms get no options.

Set the environment variable `CAC_JAX_XLA_DEFAULTS=1` to compile with XLA's defaults
instead (to measure the difference). A jaxlib whose XLA does not know the option (older or
newer than the one measured) silently gets its defaults.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import os
from typing import Any

import jax

# Comma-separated list of ynn fusion kinds; empty = none (Eigen convolutions and dots).
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
DEFAULTS_ENV = "CAC_JAX_XLA_DEFAULTS"


@functools.cache
def _supported() -> bool:
  """Whether this jaxlib's XLA accepts `CPU_OPTIONS` (a tiny compile, once per process)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jax.numpy.zeros(1)).compile()
  except Exception:  # pylint: disable=broad-except  # unknown option: XLA raises a plain error
    return False
  return True


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
  """Options for `jax.jit(..., compiler_options=...)` on `platform`.

  `platform` defaults to the default backend's; `CPU_OPTIONS` on CPU, else None (XLA's
  defaults)."""
  platform = platform or jax.default_backend()
  if platform != "cpu" or os.environ.get(DEFAULTS_ENV, "") not in ("", "0") or not _supported():
    return None
  return dict(CPU_OPTIONS)


def jit(fun: Callable, platform: str | None = None, **kwargs: Any) -> Callable:
  """`jax.jit(fun, **kwargs)` with this project's `compiler_options(platform)`."""
  return jax.jit(fun, compiler_options=compiler_options(platform), **kwargs)
