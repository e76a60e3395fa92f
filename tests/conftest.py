"""Shared pytest fixtures."""

import pathlib

import pytest

_PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
_REALDATA = (_PROJECT_ROOT / ".." / "shared" / "realdata").resolve()


@pytest.fixture(scope="session")
def realdata() -> pathlib.Path:
  """Folder of small real CT files (../shared/realdata from the project root); skips if absent."""
  if not _REALDATA.is_dir():
    pytest.skip(f"real CT sample folder {_REALDATA} is absent (see its NOTICE.md); "
                "skipping real-data test")
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
  return checkpoints.export_inference(tmp_path_factory.mktemp("tiny_ckpt") / "export", tiny_params, tiny_config)
