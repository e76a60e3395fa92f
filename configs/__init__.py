"""Project configs (ml_collections), installed as `cac_jax.configs` (setup.cfg's package_dir).

`--config NAME` takes a file's name here (tiny, demo, benchmark, paper) from any folder, or a
path. A config loaded from its path has no package, so configs import each other absolutely
(`from cac_jax.configs import tiny`).
"""

if (
  __name__ == "configs"
):  # the checkout's folder: `cac_jax.configs` may need it (cac_jax._checkout)
  from cac_jax import _checkout

  _checkout.link(__file__)
