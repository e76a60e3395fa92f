"""cac-jax: unsupervised domain adaptation for coronary artery calcium scoring in CCTA.

Arrays are (z, y, x); spacing in mm in (z, y, x) order; intensities in HU. Importing the
package changes nothing global: the console scripts turn JAX's compilation cache on
(`cac_jax.jax_cache`, from `launch._cli.run`).
"""

__version__ = "0.1.0"
