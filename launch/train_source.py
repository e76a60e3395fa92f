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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  common.init_runtime()
  config = _RUN.config.value
  with atomic.claim_dir(
    _RUN.workdir.value, "--workdir"
  ):  # checked and locked before any computation
    data = None
    if _RUN.source_manifest.value:
      data = data_lib.manifest_streams(config, _RUN.source_manifest.value, split=common.split())
    state = train.train_source(config, _RUN.workdir.value, data, resume=_RUN.resume.value)
  print(f"source training done at step {int(state.step)}; export in {_RUN.workdir.value}/export")


def flag_paths():
  return {"--source_manifest": _RUN.source_manifest.value, "--workdir": _RUN.workdir.value}


def run() -> None:  # console script cac-train-source
  _cli.run(main, flag_paths=flag_paths)


if __name__ == "__main__":
  run()
