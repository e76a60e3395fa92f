"""Flags shared by the training launch scripts (thin absl apps)."""

import logging
import os

from absl import flags
import jax

MULTIHOST = flags.DEFINE_bool(
  "multihost",
  os.environ.get("CAC_JAX_MULTIHOST", "") not in ("", "0"),
  "Call jax.distributed.initialize() (multi-host data parallelism; env CAC_JAX_MULTIHOST=1).",
)
QUIET_ORBAX = flags.DEFINE_bool("quiet_orbax", True, "Hide Orbax's INFO messages (absl logger).")
SPLIT = flags.DEFINE_string("split", "train", "Manifest split to train on ('' for all rows).")


def init_runtime() -> None:
  if QUIET_ORBAX.value:
    # Orbax logs every save at INFO through the 'absl' logger; training progress comes from
    # the 'cac_jax' loggers, which still print at INFO.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("cac_jax").setLevel(logging.INFO)
  if MULTIHOST.value:
    jax.distributed.initialize()
  logging.getLogger("cac_jax").info(
    "process %d/%d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )


def split() -> str | None:
  return SPLIT.value or None
