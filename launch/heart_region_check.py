r"""Measure the automatic heart region (`--heart_mask auto` of launch.score) against references.

On phantoms and real scans with a reference heart mask; prints the markdown table of
docs/scoring.md.

  cac-heart-region-check [--n 20] [--config demo] \
      [--real ../shared/realdata/contrast_chest_ct_1.nii.gz:../shared/realdata/contrast_chest_ct_1_heart.nii.gz]

(From a checkout also `python -m launch.heart_region_check ...`.)
"""

from absl import app, flags

from cac_jax.studies import heart_region_check

from . import _cli

_CONFIG = _cli.define_config("demo", "Config whose phantoms are measured.")
_N = flags.DEFINE_integer("n", 20, "Phantoms per domain (seeds first_seed .. first_seed + n - 1).")
_FIRST_SEED = flags.DEFINE_integer("first_seed", 1000, "First phantom seed.")
_REAL = flags.DEFINE_multi_string(
  "real", [], "IMAGE:HEART_MASK pairs of real scans (Dice against the mask)."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  pairs = [tuple(p.split(":", 1)) for p in _REAL.value]
  print(
    heart_region_check.markdown(
      heart_region_check.run(_CONFIG.value, _N.value, _FIRST_SEED.value, pairs)
    )
  )


def run() -> None:  # console script cac-heart-region-check
  _cli.run(main)


if __name__ == "__main__":
  run()
