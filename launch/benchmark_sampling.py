"""Patch-sampler throughput on synthetic working-spacing cases (prints patches/s).

python -m launch.benchmark_sampling --num_cases=3 --shape=120,300,300 --batches=20
"""

import time

from absl import flags

from cac_jax import models
from cac_jax.configs import paper, tiny
from cac_jax.data import sampling, synthetic

from . import _cli

_NUM_CASES = flags.DEFINE_integer("num_cases", 3, "Synthetic cases.")
_SHAPE = flags.DEFINE_list("shape", ["120", "300", "300"], "Case shape (z, y, x) in voxels.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed per kind and size.")
_CONFIGS = flags.DEFINE_list("configs", ["tiny", "paper"], "Configs to time (tiny, paper).")
_PREFETCH = flags.DEFINE_bool("prefetch", True, "Also time the prefetching iterators.")


def _rate(fn, n: int, per_batch: int) -> float:
  fn()  # warm-up
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return n * per_batch / (time.perf_counter() - t)


def main(argv):
  del argv
  shape = tuple(int(s) for s in _SHAPE.value)
  t = time.perf_counter()
  cases = [synthetic.labelled_case(f"syn{i}", shape, i) for i in range(_NUM_CASES.value)]
  print(f"built {len(cases)} cases of {shape} in {time.perf_counter() - t:.1f} s")
  for name in _CONFIGS.value:
    config = {"tiny": tiny, "paper": paper}[name].get_config()
    t = time.perf_counter()
    sampler = sampling.PatchSampler(cases, config, seed=0)
    setup = time.perf_counter() - t
    s = config.sampling
    n_src = s.source_threshold + s.source_uniform + s.source_labelled
    p = models.patch_size(config)
    src = _rate(sampler.source_batch, _BATCHES.value, n_src)
    crit = _rate(sampler.critic_batch, _BATCHES.value, s.critic_batch)
    line = (
      f"{name}: P={p} o={config.data.output_size} setup {setup:.2f} s | "
      f"source B={n_src}: {src:.0f} patches/s ({src / n_src:.1f} batches/s) | "
      f"critic B={s.critic_batch}: {crit:.0f} patches/s ({crit / s.critic_batch:.1f} batches/s)"
    )
    if _PREFETCH.value:
      with sampler.source_batches() as it:
        pre = _rate(lambda: next(it), _BATCHES.value, n_src)
      line += f" | prefetched source: {pre:.0f} patches/s"
    print(line)
    sampler.close()


def run() -> None:  # console script cac-benchmark-sampling
  _cli.run(main)


if __name__ == "__main__":
  run()
