"""cac-jax: unsupervised domain adaptation for coronary artery calcium scoring in CCTA.

Arrays are (z, y, x); spacing in mm in (z, y, x) order; intensities in HU.
"""

import os as _os

__version__ = "0.1.0"

# `cac_jax.launch` and `cac_jax.configs` are installed from the checkout's top-level launch/
# and configs/ folders (setup.cfg's package_dir). When this package is imported from a
# checkout (`python -m launch.score` in the repository after a non-editable install), they
# are found beside this folder.
_CHECKOUT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "configs")) and all(
  _os.path.isfile(_os.path.join(_CHECKOUT, d, "__init__.py")) for d in ("launch", "configs")
):
  __path__.append(_CHECKOUT)

from cac_jax import jax_cache as _jax_cache  # noqa: E402  (after __path__ is complete)

_jax_cache.enable_default()  # before any compile: see cac_jax/jax_cache.py
