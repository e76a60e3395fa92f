"""JAX's persistent compilation cache, on by default in a per-user cache folder.

A fresh process otherwise recompiles every training step and inference tower shape (a few
seconds each on CPU); with the cache, the second process on the same machine loads them.
`enable_default` runs when a console script starts (`launch._cli.run`), before anything is
compiled (JAX decides once per process, at its first compile, whether it uses the cache);
importing `cac_jax` does not call it, and a notebook or library user may:

* folder: `$CAC_JAX_COMPILATION_CACHE` if set to a path, else
  `$XDG_CACHE_HOME/cac-jax/jax` (default `~/.cache/cac-jax/jax`);
* off: `CAC_JAX_COMPILATION_CACHE=off` (or `0`, `false`, `no`);
* left alone: when JAX's own `JAX_COMPILATION_CACHE_DIR` is set, or the process already
  configured `jax_compilation_cache_dir`.

JAX caches only compiles that took >= `jax_persistent_cache_min_compile_time_secs`; with the
cache set here that is `MIN_COMPILE_S` (JAX's default is 1 s, which leaves the small
configs' towers and the classifier out) unless `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`
is set; the many eager-op compiles, far shorter, stay out of the folder. The entries are
keyed by the program, the jaxlib version, the device and the compiler options, so a stale
entry is never used; the folder can be deleted at any time. It has no size limit: JAX's
(`jax_compilation_cache_max_size`) needs the `filelock` package, not a dependency here.
"""

from __future__ import annotations

import os
import sys

ENV = "CAC_JAX_COMPILATION_CACHE"
MIN_COMPILE_S = 0.1  # seconds
_MIN_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
_OFF = ("off", "0", "false", "no", "")


def default_dir() -> str:
  """`$XDG_CACHE_HOME/cac-jax/jax`, `~/.cache/cac-jax/jax` when XDG_CACHE_HOME is unset."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cac-jax", "jax")


def cache_dir() -> str | None:
  """The folder `enable_default` uses: from `CAC_JAX_COMPILATION_CACHE`, None when it is off."""
  value = os.environ.get(ENV)
  if value is None:
    return default_dir()
  if value.strip().lower() in _OFF:
    return None
  return os.path.expanduser(value)


def enable_default() -> str | None:
  """Point JAX's persistent compilation cache at `cache_dir()`; returns the folder in use.

  Nothing is set (None) when JAX is configured already or the cache is off.

  Before JAX is imported this only sets `JAX_COMPILATION_CACHE_DIR` (cheap, and subprocesses
  share the folder); afterwards it updates `jax.config`.
  """
  path = cache_dir()
  if path is None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return None
  jax = sys.modules.get("jax")
  if jax is None:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ.setdefault(_MIN_ENV, str(MIN_COMPILE_S))
    return path
  if jax.config.jax_compilation_cache_dir:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if _MIN_ENV not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
  return path
