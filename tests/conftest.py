"""Shared pytest fixtures."""

import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

from cac_jax import jax_cache

# JAX's persistent compilation cache (cac_jax.jax_cache) goes to a folder of this test
# session, never to the user's ~/.cache; set before JAX is imported, inherited by the
# CLI subprocesses. JAX_COMPILATION_CACHE_DIR would bypass it, so it is dropped.
_JAX_CACHE = tempfile.mkdtemp(prefix="cac-jax-test-jax-cache-")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
os.environ["CAC_JAX_COMPILATION_CACHE"] = _JAX_CACHE
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
jax_cache.enable_default()  # as the console scripts do (importing cac_jax does not)


# On an accelerator JAX multiplies float32 in TF32 by default (about 1e-3 relative error):
# the tests check the maths at float32 tolerances, so they ask for full float32 products
# there (a no-op on CPU, where CI runs). Bit-identity tests that only the CPU gives are
# marked `cpu_bits` and skipped elsewhere (docs/performance.md, "GPU").
def pytest_configure(config):
  import jax  # pylint: disable=g-import-not-at-top

  if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "float32")


def pytest_collection_modifyitems(config, items):
  import jax  # pylint: disable=g-import-not-at-top

  if jax.default_backend() == "cpu":
    return
  skip = pytest.mark.skip(reason="bit-identity that XLA's CPU backend gives, not an accelerator")
  for item in items:
    if "cpu_bits" in item.keywords:
      item.add_marker(skip)


_PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
_REALDATA = (_PROJECT_ROOT / ".." / "shared" / "realdata").resolve()


@pytest.fixture(scope="session")
def realdata() -> pathlib.Path:
  """Folder of small real CT files (../shared/realdata from the project root); skips if absent."""
  if not _REALDATA.is_dir():
    pytest.skip(
      f"real CT sample folder {_REALDATA} is absent (see its NOTICE.md); skipping real-data test"
    )
  return _REALDATA


@pytest.fixture(scope="session")
def tiny_config():
  """configs/tiny.py (small networks, phantoms at working spacing with a reduced field of view)."""
  from configs import tiny  # pylint: disable=g-import-not-at-top

  return tiny.get_config()


@pytest.fixture(scope="session")
def tiny_params(tiny_config):
  """Random {"generator", "classifier"} inference params of `tiny_config` (key 0)."""
  import jax  # pylint: disable=g-import-not-at-top

  from cac_jax import checkpoints, models  # pylint: disable=g-import-not-at-top

  p = models.init_params(tiny_config, jax.random.key(0))
  return {k: p[k] for k in checkpoints.INFERENCE_KEYS}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_config, tiny_params) -> str:
  """An exported inference checkpoint of the tiny config with random weights (seed 0)."""
  from cac_jax import checkpoints  # pylint: disable=import-outside-toplevel

  return checkpoints.export_inference(
    tmp_path_factory.mktemp("tiny_ckpt") / "export", tiny_params, tiny_config
  )
