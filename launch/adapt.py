r"""Unsupervised adaptation of the source model to the target domain (WGAN critic).

  cac-adapt --config tiny --workdir /tmp/adapt \
      --source_checkpoint /tmp/src/export [--source_manifest A.csv --target_manifest B.csv] [--resume]

Without manifests it adapts on `cac_jax.data.synthetic` patches. The network sizes of --config
must match the source checkpoint's. Writes checkpoints, metrics.jsonl, TensorBoard events
and the adapted inference export (WORKDIR/export); with manifests the export also carries the
per-scan domain check (WORKDIR/export/domain_check, `cac_jax.scoring.domain_check`).

(From a checkout also `python -m launch.adapt ...`.)
"""

import os

from absl import app, flags

from cac_jax import atomic, checkpoints, train
from cac_jax.scoring import domain_check
from cac_jax.train import data as data_lib

from . import _cli
from . import train_flags as common

_RUN = common.define_run_flags()
flags.adopt_module_key_flags(common)  # the run flags, --split, --multihost, --quiet_orbax in --help
_SOURCE_CHECKPOINT = flags.DEFINE_string(
  "source_checkpoint", None, "Exported source model (train_source's WORKDIR/export)."
)
_TARGET_MANIFEST = flags.DEFINE_string(
  "target_manifest", None, "Target-domain manifest CSV (default: synthetic)."
)
flags.mark_flag_as_required("source_checkpoint")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  common.init_runtime()
  config = _RUN.config.value
  with atomic.claim_dir(
    _RUN.workdir.value, "--workdir"
  ):  # checked and locked before any computation
    params, source_config = checkpoints.load_inference(_SOURCE_CHECKPOINT.value)
    if source_config.model.to_json() != config.model.to_json():
      raise app.UsageError(
        f"--config model section differs from the source checkpoint's "
        f"({_SOURCE_CHECKPOINT.value}/config.json)"
      )
    if bool(_RUN.source_manifest.value) != bool(_TARGET_MANIFEST.value):
      raise app.UsageError(
        "give both --source_manifest and --target_manifest, or neither (synthetic data)"
      )
    data = None
    if _RUN.source_manifest.value:
      data = data_lib.manifest_streams(
        config, _RUN.source_manifest.value, _TARGET_MANIFEST.value, split=common.split()
      )
    state = train.adapt(config, _RUN.workdir.value, params, data, resume=_RUN.resume.value)
    if data is not None:  # the per-scan domain check of every scores.json from this export
      domain_check.write_for_manifests(
        os.path.join(_RUN.workdir.value, "export"),
        {"generator": state.generator, "critic": state.critic},
        config,
        _RUN.source_manifest.value,
        _TARGET_MANIFEST.value,
        split=common.split(),
      )
  print(
    f"adaptation done at generator step {int(state.step)}; export in {_RUN.workdir.value}/export"
  )


def flag_paths():
  return {
    "--source_checkpoint": _SOURCE_CHECKPOINT.value,
    "--source_manifest": _RUN.source_manifest.value,
    "--target_manifest": _TARGET_MANIFEST.value,
    "--workdir": _RUN.workdir.value,
  }


def run() -> None:  # console script cac-adapt
  _cli.run(main, flag_paths=flag_paths)


if __name__ == "__main__":
  run()
