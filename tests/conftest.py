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
