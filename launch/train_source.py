r"""Supervised source training of G, C and the deep-supervision heads.

  cac-train-source --config tiny --workdir /tmp/src \
      [--config.source.num_steps=100] [--source_manifest DIR/manifest.csv] [--resume]

Without --source_manifest it trains on `cac_jax.data.synthetic` patches. Writes checkpoints,
metrics.jsonl, TensorBoard events and the inference export (WORKDIR/export).

(From a checkout also `python -m launch.train_source ...`.)
"""

from absl import app, flags

from cac_jax import atomic, train
from cac_jax.train import data as data_lib

from . import _cli
from . import train_flags as common

_RUN = common.define_run_flags()
flags.adopt_module_key_flags(common)  # the run flags, --split, --multihost, --quiet_orbax in --help
_CONFIG, _WORKDIR, _RESUME, _SOURCE_MANIFEST = (
  _RUN.config,
  _RUN.workdir,
  _RUN.resume,
  _RUN.source_manifest,
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  common.init_runtime()
  config = _CONFIG.value
  with atomic.claim_dir(_WORKDIR.value, "--workdir"):  # checked and locked before any computation
    data = None
    if _SOURCE_MANIFEST.value:
      data = data_lib.manifest_streams(config, _SOURCE_MANIFEST.value, split=common.split())
    state = train.train_source(config, _WORKDIR.value, data, resume=_RESUME.value)
  print(f"source training done at step {int(state.step)}; export in {_WORKDIR.value}/export")


def flag_paths():
  return {"--source_manifest": _SOURCE_MANIFEST.value, "--workdir": _WORKDIR.value}


def run() -> None:  # console script cac-train-source
  _cli.run(main, flag_paths=flag_paths)


if __name__ == "__main__":
  run()
