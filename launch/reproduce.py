r"""The paper's Table 2 on phantoms: make data, train source, adapt, score, evaluate.

  python -m launch.reproduce --config configs/demo.py --workdir runs/demo
  python -m launch.reproduce --config configs/benchmark.py --workdir runs/benchmark   # seeds 0, 1, 2
  python -m launch.reproduce --config configs/paper.py --workdir runs/paper   # a GPU
"""

import dataclasses
import json
import logging
import os

from absl import flags
from ml_collections import config_flags

from cac_jax import atomic, experiment, html_report
from launch import _cli
from launch import train_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config.")
flags.DEFINE_string("workdir", "runs/demo", "Where data, checkpoints and results go (reused when complete).")
flags.DEFINE_list("seeds", None, "Experiment seeds (default: config.experiment.seeds, else config.seed); "
                  "several give mean (SD) over seeds and one gap share over them.")


def main(argv):
  del argv
  train_flags.init_runtime()
  log = logging.getLogger("cac_jax.reproduce")
  default = FLAGS.config.experiment.get("seeds", None) or (FLAGS.config.seed,)
  seeds = [int(s) for s in FLAGS.seeds] if FLAGS.seeds else [int(s) for s in default]
  results = []
  for seed in seeds:
    wd = FLAGS.workdir if len(seeds) == 1 else os.path.join(FLAGS.workdir, f"seed{seed}")
    results.append(experiment.run(FLAGS.config, wd, seed, log=lambda s, seed=seed: log.info("[seed %d] %s", seed, s)))
  out = os.path.join(FLAGS.workdir, "results")
  figures = experiment.write_figures(results[0], FLAGS.config, out)
  md = experiment.report_markdown(results)
  atomic.write_text(os.path.join(out, "table2.md"), md + "\n")
  atomic.write_text(os.path.join(out, "table2.json"), json.dumps(
      {"seeds": seeds, "tables": [r["table"] for r in results],
       "gates": [[dataclasses.asdict(g) for g in r["gates"]] for r in results],
       "selection": [r["selection"] for r in results]}, indent=1) + "\n")
  report = html_report.reproduce_report(os.path.join(out, "report.html"), md, figures, results[0]["per_scan"],
                                        results[0]["columns"])
  print()
  print(md)
  print("\nfigures:")
  for name, path in figures.items():
    print(f"  {name}: {path}")
  print(f"  report: {os.path.join(out, 'table2.md')}, {report}")


if __name__ == "__main__":
  _cli.run(main)
