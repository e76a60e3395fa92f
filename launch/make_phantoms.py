r"""Writes a phantom data set (or benchmarks the generator).

  cac-phantoms --output_dir DIR --domain ccta --num_cases 8 --seed 100 \
      [--split test] [--config tiny] [--config.phantoms.fov_scale=1.0] [--preview P.png]
  cac-phantoms --paired --output_dir DIR --num_cases 16 --seed 700000 [--config tiny]
  cac-phantoms --benchmark [--config tiny]

(From a checkout also `python -m launch.make_phantoms ...`.)
"""

import time

from absl import app, flags, logging

from cac_jax import phantoms
from cac_jax.phantoms import variants

from . import _cli

_CONFIG = _cli.define_config("tiny", "Project config.")
_OUT = flags.DEFINE_string("output_dir", None, "Data-set folder (manifest merged if present).")
_DOMAIN = flags.DEFINE_enum("domain", "ccta", list(phantoms.DOMAINS), "Phantom domain.")
_NUM = flags.DEFINE_integer("num_cases", 4, "Number of cases.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first case (cases use seed..seed+N-1).")
_SPLIT = flags.DEFINE_string("split", "train", "Manifest split column.")
_PAIRED = flags.DEFINE_bool(
  "paired",
  False,
  "Write --num_cases patients each as cardiac NCCT and CCTA (same anatomy and calcium), with a "
  "`patient` manifest column (cac-evaluate --paired); --domain is ignored.",
)
_PREVIEW = flags.DEFINE_string("preview", None, "PNG: axial/coronal slices of one case per domain.")
_BENCH = flags.DEFINE_boolean("benchmark", False, "Print seconds per case per domain and exit.")
_BENCH_FULL = flags.DEFINE_boolean("benchmark_full", True, "Benchmark also at full resolution.")


def _benchmark(config):
  settings = [("working spacing", True, float(config.phantoms.fov_scale))]
  if _BENCH_FULL.value:
    settings.append(("full resolution", False, 1.0))
  for name, at_ws, fov in settings:
    config.phantoms.at_working_spacing = at_ws
    config.phantoms.fov_scale = fov
    for domain in phantoms.DOMAINS:
      times = []
      for seed in range(2):
        t0 = time.perf_counter()
        case = phantoms.generate_case(domain, seed, config)
        times.append(time.perf_counter() - t0)
      print(
        f"{name:16s} {domain:13s} shape {case.scan.shape} spacing "
        f"{tuple(round(s, 2) for s in case.scan.spacing)}: {min(times):.2f} s/case "
        f"(best of {len(times)})",
        flush=True,
      )


def main(argv):
  del argv
  config = _CONFIG.value
  if _BENCH.value:
    _benchmark(config)
    return
  if _OUT.value and _PAIRED.value:
    path = variants.write_paired_dataset(
      _OUT.value,
      _NUM.value,
      _SEED.value,
      config,
      split=_SPLIT.value,
      progress=lambda cid: logging.info("wrote %s", cid),
    )
    logging.info("paired manifest: %s", path)
  elif _OUT.value:
    path = phantoms.write_dataset(
      _OUT.value,
      _DOMAIN.value,
      _NUM.value,
      _SEED.value,
      config,
      split=_SPLIT.value,
      progress=lambda cid: logging.info("wrote %s", cid),
    )
    logging.info("manifest: %s", path)
  if _PREVIEW.value:
    cases = [phantoms.generate_case(d, _SEED.value, config) for d in phantoms.DOMAINS]
    phantoms.plots_preview(cases, _PREVIEW.value)
    logging.info("preview: %s", _PREVIEW.value)
  if not _OUT.value and not _PREVIEW.value:
    raise app.UsageError("give --output_dir, --preview or --benchmark")


def run() -> None:  # console script cac-phantoms
  _cli.run(main)


if __name__ == "__main__":
  run()
