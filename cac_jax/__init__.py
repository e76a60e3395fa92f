"""cac-jax: unsupervised domain adaptation for coronary artery calcium scoring in CCTA.

Arrays are (z, y, x); spacing in mm in (z, y, x) order; intensities in HU.
"""

__version__ = "0.1.0"
