"""System programs some tests need (Chromium, dicom3tools): found, or the test skips; with
CAC_JAX_REQUIRE_SYSTEM_TOOLS=1 (CI, `.ci/run`) a missing program fails the test instead, so
CI never passes by skipping."""

import os
import shutil

import pytest

REQUIRE_ENV = "CAC_JAX_REQUIRE_SYSTEM_TOOLS"


def required() -> bool:
  """Whether a missing system program fails the test (env CAC_JAX_REQUIRE_SYSTEM_TOOLS=1)."""
  return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def find(names: tuple[str, ...], package: str) -> str:
  """The path of the first of `names` on PATH; else skip (or fail when `required()`)."""
  for name in names:
    path = shutil.which(name)
    if path:
      return path
  why = f"{' / '.join(names)} is not installed (apt-get install {package})"
  if required():
    pytest.fail(f"{why}, and {REQUIRE_ENV}=1 asks for it")
  pytest.skip(why)
