"""cac-jax: unsupervised domain adaptation for coronary artery calcium scoring in CCTA.

Arrays are (z, y, x); spacing in mm in (z, y, x) order; intensities in HU.
"""

__version__ = "0.1.0"

from cac_jax import jax_cache as _jax_cache  # pylint: disable=g-import-not-at-top

_jax_cache.enable_default()  # before any compile: see cac_jax/jax_cache.py
