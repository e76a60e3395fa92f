#!/usr/bin/env python3
"""Seconds `state.init_params` takes in a fresh process: NumPy draw (host) or Flax init.

  CAC_JAX_COMPILATION_CACHE=off python tools/init_times.py --config demo

Prints one line per way: the first call (tracing and XLA compiles included, as a training
run's start pays them) and a second call with another seed. Run it with the compilation
cache off, or the Flax init's second process only loads its compiles.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

_ONE = """
import sys, time
import jax
from cac_jax.train import state
from cac_jax.configs import {config} as module
config, host = module.get_config(), sys.argv[1] == "host"
times = []
for seed in (0, 1):
  t = time.perf_counter()
  jax.block_until_ready(state.init_params(config, seed, host))
  times.append(time.perf_counter() - t)
print(f"{{sys.argv[1]}}: first {{times[0]:.2f}} s, second {{times[1]:.2f}} s")
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="demo", help="a config module of cac_jax.configs")
  args = parser.parse_args()
  for way in ("host", "flax"):
    code = _ONE.format(config=args.config)
    subprocess.run([sys.executable, "-c", code, way], check=True)


if __name__ == "__main__":
  main()
