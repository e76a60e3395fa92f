"""Command-line programs (absl apps), one per module.

Installed as `cac_jax.launch` (setup.cfg's package_dir; console scripts cac-score, cac-train-source,
...) and run from a checkout as `python -m launch.score`. The modules import each other
relatively (`from . import _cli`): the folder is the package `launch` in one case and
`cac_jax.launch` in the other, and an absolute name would load `_cli` (and its flags) twice.
"""

if __name__ == "launch":  # the checkout's folder: `cac_jax.launch` may need it (cac_jax._checkout)
  from cac_jax import _checkout

  _checkout.link(__file__)
