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
def tiny_export(tmp_path_factory) -> str:
  """An exported inference checkpoint of the tiny config with random weights (seed 0)."""
  import jax  # pylint: disable=import-outside-toplevel
  from cac_jax import checkpoints, models  # pylint: disable=import-outside-toplevel
  from configs import tiny  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  p = models.init_params(config, jax.random.key(0))
  return checkpoints.export_inference(tmp_path_factory.mktemp("tiny_ckpt") / "export",
                                      {"generator": p["generator"], "classifier": p["classifier"]}, config)
