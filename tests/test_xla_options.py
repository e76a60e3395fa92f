"""Compiler options and the persistent compilation cache (cac_jax.xla_options, cac_jax.jax_cache)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from cac_jax import jax_cache, models, xla_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_options_only_on_cpu(monkeypatch):
  monkeypatch.delenv(xla_options.DEFAULTS_ENV, raising=False)
  assert xla_options.compiler_options("gpu") is None
  assert xla_options.compiler_options("cpu") == xla_options.CPU_OPTIONS
  monkeypatch.setenv(xla_options.DEFAULTS_ENV, "1")
  assert xla_options.compiler_options("cpu") is None


def test_tower_with_options_equals_xla_defaults():
  """A paper-width tower (32 channels, dilations up to 8) and its gradient, compiled with and
  without the options, agree to float32 rounding: rtol 1e-5 of the largest value."""
  tower = models.ViewTower(32, 32, (1, 1, 2, 4, 8))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 45, 45, 1))
  params = tower.init(jax.random.PRNGKey(0), x)["params"]

  def loss(p, x):
    return jnp.sum(jnp.square(tower.apply({"params": p}, x)))

  def both(fn):
    ours = xla_options.jit(fn, "cpu")(params, x)
    default = jax.jit(fn)(params, x)
    return jax.tree.leaves(ours), jax.tree.leaves(default)

  for fn in (lambda p, x: tower.apply({"params": p}, x), jax.grad(loss)):
    ours, default = both(fn)
    assert len(ours) == len(default) > 0
    for a, b in zip(ours, default):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))


def test_cache_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(jax_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert jax_cache.cache_dir() == str(tmp_path / "cac-jax" / "jax")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path))
  assert jax_cache.cache_dir() == str(tmp_path / ".cache" / "cac-jax" / "jax")
  monkeypatch.setenv(jax_cache.ENV, str(tmp_path / "elsewhere"))
  assert jax_cache.cache_dir() == str(tmp_path / "elsewhere")
  for off in ("off", "0", "false", "no", ""):
    monkeypatch.setenv(jax_cache.ENV, off)
    assert jax_cache.cache_dir() is None


def _python(code: str, env: dict) -> str:
  env = dict(
    env, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu"
  )
  res = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  return res.stdout


# A program started as the console scripts start (`launch._cli.run`) that compiles one function.
_COMPILE = """
    import sys
    import jax, jax.numpy as jnp
    from launch import _cli

    def main(argv):
      print("MIN", jax.config.jax_persistent_cache_min_compile_time_secs)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
      f = jax.jit(lambda x: jnp.sin(x) @ x.T + 1.0)
      f(jnp.ones((64, 64))).block_until_ready()
      print("DIR", jax.config.jax_compilation_cache_dir)

    sys.argv = ["prog"]
    _cli.run(main, prog="prog")
"""


def test_console_scripts_turn_the_cache_on_in_the_user_folder(tmp_path):
  env = {
    k: v for k, v in os.environ.items() if k not in (jax_cache.ENV, "JAX_COMPILATION_CACHE_DIR")
  }
  env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
  env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
  out = _python(_COMPILE, env)
  folder = tmp_path / "xdg" / "cac-jax" / "jax"
  assert f"DIR {folder}" in out and f"MIN {jax_cache.MIN_COMPILE_S}" in out
  assert folder.is_dir() and any(folder.iterdir())  # an entry was written
  assert not (tmp_path / "home").exists()


def test_cache_off_and_jax_own_setting_respected(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), CAC_JAX_COMPILATION_CACHE="off")
  assert "DIR None" in _python(_COMPILE, env)
  assert not (tmp_path / "xdg").exists()
  env.update(
    CAC_JAX_COMPILATION_CACHE=str(tmp_path / "ours"),
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "theirs"),
  )
  assert f"DIR {tmp_path / 'theirs'}" in _python(_COMPILE, env)
  assert not (tmp_path / "ours").exists()


def test_tests_do_not_write_to_the_user_cache():
  assert jax.config.jax_compilation_cache_dir != jax_cache.default_dir()
  assert os.environ[jax_cache.ENV] != jax_cache.default_dir()
