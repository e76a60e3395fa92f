r"""A target-supervised reference for the phantom experiment (a ceiling, not a method).

  python -m launch.target_supervised --workdir runs/demo [--negatives_in_heart] [--output_dir DIR]

What it measures: `cac_jax.target_supervised`. Writes target_supervised.md (atomically) to
--output_dir (default: WORKDIR/target_supervised or target_supervised_heart).
"""

import os

from absl import app
from absl import flags
from absl import logging

from cac_jax import checkpoints
from cac_jax import target_supervised

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished single-seed launch.reproduce workdir.")
_HEART = flags.DEFINE_bool("negatives_in_heart", False, "Draw the >= threshold negatives inside the dilated "
                           "heart (config.sampling.bright_in_heart) instead of over the whole volume.")
_OUT = flags.DEFINE_string("output_dir", None, "Where the network and target_supervised.md go.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  out = _OUT.value or os.path.join(_WORKDIR.value, "target_supervised" + ("_heart" if _HEART.value else ""))
  try:
    print(target_supervised.run(_WORKDIR.value, _HEART.value, out))
  except (FileNotFoundError, ValueError, checkpoints.CheckpointError) as e:
    raise SystemExit(f"target_supervised: error: {e}") from None


if __name__ == "__main__":
  app.run(main)
