"""A checkout used without an editable install: its launch/ and configs/ as cac_jax's.

setup.cfg installs the checkout's top-level launch/ and configs/ folders as `cac_jax.launch`
and `cac_jax.configs` (package_dir), and an editable install maps both names to those folders.
A checkout run as it is (`python -m launch.score` on the checkout's path, or in front of a
non-editable install) imports the checkout's cac_jax/, which holds neither: the checkout's
own `launch` and `configs` packages call `link` when they are imported, so that configs loaded
by path (`from cac_jax.configs import paper`) still resolve. Importing `cac_jax` alone never
calls it.
"""

import importlib.util
import os


def link(package_file: str) -> None:
  """Add the checkout to `cac_jax.__path__` when `cac_jax.configs` is not found otherwise.

  `package_file` is the __init__.py of the checkout's top-level launch/ or configs/ package;
  nothing changes when the imported cac_jax is not that checkout's.
  """
  import cac_jax  # pylint: disable=import-outside-toplevel

  checkout = os.path.dirname(os.path.dirname(os.path.abspath(package_file)))
  if checkout in cac_jax.__path__ or importlib.util.find_spec("cac_jax.configs") is not None:
    return
  if os.path.dirname(os.path.abspath(cac_jax.__path__[0])) == checkout:
    cac_jax.__path__.append(checkout)
