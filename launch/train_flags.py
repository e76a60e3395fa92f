"""Flags shared by the training launch scripts (thin absl apps).

Importing this module defines --multihost, --quiet_orbax and --split (also used by
`launch.reproduce`); `define_run_flags` defines the flags of one training run (`launch.train_source`,
`launch.adapt`).
"""

import dataclasses
import logging
import os

from absl import flags
import jax

from . import _cli

MULTIHOST = flags.DEFINE_bool(
  "multihost",
  os.environ.get("CAC_JAX_MULTIHOST", "") not in ("", "0"),
  "Call jax.distributed.initialize() (multi-host data parallelism; env CAC_JAX_MULTIHOST=1).",
)
QUIET_ORBAX = flags.DEFINE_bool("quiet_orbax", True, "Hide Orbax's INFO messages (absl logger).")
SPLIT = flags.DEFINE_string("split", "train", "Manifest split to train on ('' for all rows).")


@dataclasses.dataclass(frozen=True)
class RunFlags:
  """The flags of one training run: --config, --workdir, --resume, --source_manifest."""

  config: flags.FlagHolder
  workdir: flags.FlagHolder
  resume: flags.FlagHolder
  source_manifest: flags.FlagHolder


def define_run_flags() -> RunFlags:
  """Define --config (required), --workdir (required), --resume and --source_manifest."""
  run_flags = RunFlags(
    config=_cli.define_config(None, "Project config."),
    workdir=flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the export go here."),
    resume=flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir."),
    source_manifest=flags.DEFINE_string(
      "source_manifest", None, "Labelled source manifest CSV (default: synthetic)."
    ),
  )
  flags.mark_flags_as_required(["config", "workdir"])
  return run_flags


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
