r"""The paper's Table 2 on phantoms: make data, train source, adapt, score, evaluate.

  python -m launch.reproduce --config configs/demo.py --workdir runs/demo
  python -m launch.reproduce --config configs/demo.py --workdir runs/demo3 --seeds 0,1,2
  python -m launch.reproduce --config configs/paper.py --workdir runs/paper   # a GPU
"""

import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

from cac_jax import experiment
from launch import train_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config.")
flags.DEFINE_string("workdir", "runs/demo", "Where data, checkpoints and results go (reused when complete).")
flags.DEFINE_list("seeds", None, "Experiment seeds (default: config.seed); several give mean (SD) over seeds.")


def main(argv):
  del argv
  train_flags.init_runtime()
  log = logging.getLogger("cac_jax.reproduce")
  seeds = [int(s) for s in FLAGS.seeds] if FLAGS.seeds else [FLAGS.config.seed]
  results = []
  for seed in seeds:
    wd = FLAGS.workdir if len(seeds) == 1 else os.path.join(FLAGS.workdir, f"seed{seed}")
    results.append(experiment.run(FLAGS.config, wd, seed, log=lambda s, seed=seed: log.info("[seed %d] %s", seed, s)))
  out = os.path.join(FLAGS.workdir, "results")
  figures = experiment.write_figures(results[0], FLAGS.config, out)
  if len(seeds) == 1:
    md = experiment.table_markdown(results[0]["table"])
  else:
    md = experiment.table_markdown(experiment.combine_seeds(results), over=f"seeds {seeds} (per-seed means)")
  with open(os.path.join(out, "table2.md"), "w", encoding="utf-8") as f:
    f.write(md + "\n")
  with open(os.path.join(out, "table2.json"), "w", encoding="utf-8") as f:
    json.dump({"seeds": seeds, "tables": [r["table"] for r in results]}, f, indent=1)
  print("\nTable 2 on phantoms (CCTA test set never used in training):\n")
  print(md)
  print("\nfigures:")
  for name, path in figures.items():
    print(f"  {name}: {path}")
  print(f"  table: {os.path.join(out, 'table2.md')}")


if __name__ == "__main__":
  app.run(main)
