"""Flags shared by the training launch scripts (thin absl apps)."""

import os

import jax
from absl import flags
from absl import logging

MULTIHOST = flags.DEFINE_bool(
    "multihost", os.environ.get("CAC_JAX_MULTIHOST", "") not in ("", "0"),
    "Call jax.distributed.initialize() (multi-host data parallelism; env CAC_JAX_MULTIHOST=1).")
SPLIT = flags.DEFINE_string("split", "train", "Manifest split to train on ('' for all rows).")


def init_runtime() -> None:
  if MULTIHOST.value:
    jax.distributed.initialize()
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)


def split() -> str | None:
  return SPLIT.value or None
